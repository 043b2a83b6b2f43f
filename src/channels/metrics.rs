//! The channel layer's Prometheus metrics. Process-wide because the chains that count them are built before (and
//! apart from) the API that serves them; `herald up` serves its own worker's counts.

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

/// Provider calls made by this process, by provider and outcome (sent, transient, rate_limited, permanent,
/// suppressed, config).
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

/// Time spent waiting for a fleet-wide rate permit before a provider call, by provider: every request for a permit
/// observes it, zero included, and one refused (no permit before the send's deadline) observes the time until it
/// was refused. The count is permits asked for, the sum the total wait.
pub static RATE_LIMIT_WAIT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    crate::metrics::histogram_vec(
        "provider_rate_limit_wait_seconds",
        "Wait for a rate permit before a provider call (granted or refused)",
        &["provider"],
        crate::metrics::LATENCY_BUCKETS,
    )
});

/// A provider passed a message on to the next one of its chain (or the chain ended): circuit open, no rate
/// permit in time, a configuration error, or transient failures past its attempts. By channel and provider.
pub static FALLBACKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "provider_fallbacks_total",
        "Messages a provider passed on to the next in its chain, by channel and provider",
        &["channel", "provider"],
    )
});

/// Every metric above, for the process's registry.
pub fn all() -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(PROVIDER_CALLS.clone()),
        Box::new(PROVIDER_CALL_SECONDS.clone()),
        Box::new(RATE_LIMIT_WAIT_SECONDS.clone()),
        Box::new(FALLBACKS.clone()),
    ]
}
