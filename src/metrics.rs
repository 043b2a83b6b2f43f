//! Prometheus metrics: one registry per process, rendered by `GET /metrics`. Later modules add their metrics here.

use std::sync::LazyLock;

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

/// Provider calls made by this process, by provider and outcome (sent, transient, rate_limited, permanent,
/// suppressed, config). Process-wide because the chains that count them are built before (and apart from) the
/// API that serves them; `herald up` serves its own worker's counts.
pub static PROVIDER_CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "provider_calls_total",
            "Provider calls by provider and outcome",
        ),
        &["provider", "outcome"],
    )
    .unwrap_or_else(|_| unreachable!("the metric's name and labels are valid"))
});

/// Provider call latency by provider.
pub static PROVIDER_CALL_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        HistogramOpts::new("provider_call_seconds", "Provider call latency")
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        &["provider"],
    )
    .unwrap_or_else(|_| unreachable!("the metric's name and labels are valid"))
});

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
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
        registry.register(Box::new(PROVIDER_CALLS.clone()))?;
        registry.register(Box::new(PROVIDER_CALL_SECONDS.clone()))?;
        for collector in crate::bridge::metrics::all() {
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
