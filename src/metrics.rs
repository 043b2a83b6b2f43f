//! Prometheus metrics: one registry per process, rendered by `GET /metrics`; and the small listener that the
//! roles without the API (worker, bridge, clock) serve it on, with `/healthz` and `/readyz` for probes.
//!
//! The HTTP metrics are defined here; a module whose metrics are process-wide (the queue's, the channels'
//! provider calls, the bridge's consumer) defines them in its own `metrics.rs` with an `all()`, and `app` hands
//! them to [`Metrics::new`], so this file imports no other module but `db` (for readiness).

use serde::Deserialize;
use sqlx::PgPool;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Most queue label values `herald_jobs_enqueued_total` takes, configured queues included.
pub const MAX_QUEUE_LABELS: usize = 100;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    jobs_enqueued: IntCounterVec,
    /// The queue label values `jobs_enqueued` uses (see [`Metrics::job_enqueued`]).
    queue_labels: std::sync::Arc<BoundedLabels>,
    /// Worker processes whose circuit for a provider is open now (read from the database at each scrape).
    pub provider_circuits_open: IntGaugeVec,
}

impl Metrics {
    /// The registry with the HTTP metrics and `collectors` (other modules' process-wide metrics); `known_queues`
    /// are the queue label values it may use (the configured queues).
    pub fn new(
        collectors: impl IntoIterator<Item = Box<dyn Collector>>,
        known_queues: impl IntoIterator<Item = String>,
    ) -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("herald".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["route"],
        )?;
        let jobs_enqueued = IntCounterVec::new(
            Opts::new(
                "jobs_enqueued_total",
                "Jobs inserted through the API, by queue",
            ),
            &["queue"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        let provider_circuits_open = IntGaugeVec::new(
            Opts::new(
                "provider_circuits_open",
                "Worker processes whose circuit for the provider is open",
            ),
            &["provider"],
        )?;
        registry.register(Box::new(jobs_enqueued.clone()))?;
        registry.register(Box::new(provider_circuits_open.clone()))?;
        for collector in collectors {
            registry.register(collector)?;
        }
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            jobs_enqueued,
            queue_labels: std::sync::Arc::new(BoundedLabels::with_known(
                MAX_QUEUE_LABELS,
                known_queues,
            )),
            provider_circuits_open,
        })
    }

    /// Counts a job inserted through the API into `queue`: under its own name if it is configured, or one of the
    /// first [`MAX_QUEUE_LABELS`] names seen; else under `other`, so that clients cannot grow the registry without
    /// bound by inventing queue names.
    pub fn job_enqueued(&self, queue: &str) {
        let label = self.queue_labels.label(queue);
        self.jobs_enqueued.with_label_values(&[label]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// A counter family for a module's `LazyLock` static. Names and labels are literals checked by the tests that
/// render the registry, so a bad one is a programming error.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"))
}

/// A gauge family, as [`counter_vec`].
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    prometheus::GaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"))
}

/// A histogram family with `buckets`, as [`counter_vec`].
pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| unreachable!("metric {name}: {e}"))
}

/// A histogram without labels, as [`counter_vec`].
pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> prometheus::Histogram {
    prometheus::Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"))
}

/// Latency buckets in seconds, from half a millisecond to a minute: the queue's, the providers', the alerts'.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// An integer gauge family, as [`counter_vec`].
pub fn int_gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"))
}

/// The label values one metric may take from outside data (a queue name, a workflow name): the known ones, then
/// the first values seen up to a maximum, then `other`. A client inventing names cannot grow the registry (and
/// every scrape) without bound.
pub struct BoundedLabels {
    max: usize,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl BoundedLabels {
    pub fn new(max: usize) -> Self {
        Self::with_known(max, std::iter::empty())
    }

    /// `known` values count toward `max` and are always used as they are.
    pub fn with_known(max: usize, known: impl IntoIterator<Item = String>) -> Self {
        Self {
            max,
            seen: std::sync::Mutex::new(known.into_iter().collect()),
        }
    }

    /// `value` itself if it is known or there is room for it, else `other`.
    pub fn label<'a>(&self, value: &'a str) -> &'a str {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(value) || (seen.len() < self.max && seen.insert(value.to_string())) {
            value
        } else {
            "other"
        }
    }
}

/// The process's own gauges, read when scraped (no query, no background task): `herald_build_info{version}` (1),
/// and the database pool's connections by state and its maximum.
pub struct ProcessCollector {
    pool: PgPool,
    max_connections: u32,
    build_info: prometheus::IntGaugeVec,
    connections: prometheus::IntGaugeVec,
    max: prometheus::IntGauge,
}

impl ProcessCollector {
    pub fn new(pool: PgPool, max_connections: u32) -> Result<Self, prometheus::Error> {
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new("build_info", "The running herald's version (always 1)"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(Self {
            pool,
            max_connections,
            build_info,
            connections: prometheus::IntGaugeVec::new(
                Opts::new(
                    "db_pool_connections",
                    "Connections of the process's main database pool, by state (in_use, idle)",
                ),
                &["state"],
            )?,
            max: prometheus::IntGauge::new(
                "db_pool_max_connections",
                "The main database pool's maximum (database.max_connections)",
            )?,
        })
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut descs = self.build_info.desc();
        descs.extend(self.connections.desc());
        descs.extend(self.max.desc());
        descs
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let size = i64::from(self.pool.size());
        let idle = i64::try_from(self.pool.num_idle()).unwrap_or(i64::MAX);
        self.connections
            .with_label_values(&["in_use"])
            .set((size - idle).max(0));
        self.connections.with_label_values(&["idle"]).set(idle);
        self.max.set(i64::from(self.max_connections));
        let mut families = self.build_info.collect();
        families.extend(self.connections.collect());
        families.extend(self.max.collect());
        families
    }
}

/// `[metrics]`: where `herald worker`, `bridge` and `clock` serve `/metrics`, `/healthz` and `/readyz` (the API
/// serves its own, and `herald up` serves everything on the API's).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// The address to bind, such as `0.0.0.0:9464`; empty: not served. When empty, `PORT` (set per process by
    /// Procfile runners) fills it with `0.0.0.0:$PORT`.
    pub listen: String,
    /// How often queue depths are counted (by one process of the fleet, see `queue::stats`) and read into this
    /// process's gauges; 0: this process takes no part.
    #[serde(rename = "queue_stats_secs", deserialize_with = "crate::setting::secs")]
    pub queue_stats: std::time::Duration,
}

/// Serves `GET /metrics` (unauthenticated: bind it where only the scraper reaches), `GET /healthz` (the process
/// answers) and `GET /readyz` (the database answers and is migrated: 503 otherwise), for the roles without the
/// API, until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    pool: PgPool,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use axum::http::StatusCode;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let pool = pool.clone();
                async move {
                    match crate::db::readiness(&pool).await {
                        Ok(()) => (StatusCode::OK, "ready".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                }
            }),
        );
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "metrics and probes listening");
    }
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = result {
        tracing::warn!(%error, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_cannot_mint_more_queue_labels_than_the_bound() {
        let metrics = Metrics::new(Vec::new(), ["configured".to_string()]).unwrap();
        for i in 0..MAX_QUEUE_LABELS + 50 {
            metrics.job_enqueued(&format!("invented-{i}"));
        }
        metrics.job_enqueued("configured");
        let text = metrics.render();
        let series = text
            .lines()
            .filter(|line| line.starts_with("herald_jobs_enqueued_total{"))
            .count();
        assert_eq!(series, MAX_QUEUE_LABELS + 1, "the named ones and `other`");
        assert!(text.contains("herald_jobs_enqueued_total{queue=\"configured\"} 1"));
        assert!(text.contains("herald_jobs_enqueued_total{queue=\"other\"} 51"));
    }
}

#[cfg(test)]
mod dashboard {
    /// Every metric the Grafana dashboard (`deploy/grafana/herald.json`) queries is one herald defines: a renamed
    /// metric must not leave an empty panel behind.
    #[test]
    fn the_dashboard_queries_only_metrics_herald_defines() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dashboard = std::fs::read_to_string(root.join("deploy/grafana/herald.json")).unwrap();
        let mut sources = String::new();
        let mut stack = vec![root.join("src")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    sources.push_str(&std::fs::read_to_string(path).unwrap());
                }
            }
        }
        let mut checked = 0;
        for (at, _) in dashboard.match_indices("herald_") {
            let name: String = dashboard[at + "herald_".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            if base.is_empty() {
                continue;
            }
            assert!(
                sources.contains(&format!("\"{base}\"")),
                "the dashboard queries herald_{name}, which no module defines"
            );
            checked += 1;
        }
        assert!(
            checked > 10,
            "only {checked} metrics found in the dashboard"
        );
    }
}
