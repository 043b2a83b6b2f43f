//! Prometheus metrics: one registry per process, rendered by `GET /metrics`.
//!
//! The HTTP metrics are defined here; a module whose metrics are process-wide (the channels' provider calls, the
//! bridge's consumer) defines them in its own `metrics.rs` with an `all()`, and `app` hands them to
//! [`Metrics::new`], so this file imports no other module.

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub jobs_enqueued: IntCounterVec,
    /// Worker processes whose circuit for a provider is open now (read from the database at each scrape).
    pub provider_circuits_open: IntGaugeVec,
}

impl Metrics {
    /// The registry with the HTTP metrics and `collectors` (other modules' process-wide metrics).
    pub fn new(
        collectors: impl IntoIterator<Item = Box<dyn Collector>>,
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
            provider_circuits_open,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// Serves `GET /metrics` alone, for processes without the API (`herald bridge`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { metrics.render() }
        }),
    );
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "metrics listening");
    }
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = result {
        tracing::warn!(%error, "metrics server stopped");
    }
}
