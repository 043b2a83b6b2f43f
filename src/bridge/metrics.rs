//! The bridge's Prometheus metrics. Process-wide, like the provider metrics: `herald bridge` serves them on
//! `metrics.listen`, and `herald up` on the API's `/metrics`.

use std::sync::LazyLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|_| unreachable!("the metric's name and labels are valid"))
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|_| unreachable!("the metric's name and labels are valid"))
}

/// Messages read from Kafka, by topic.
pub static CONSUMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "bridge_consumed_total",
        "Messages read from Kafka",
        &["topic"],
    )
});

/// What stored batches produced, by target: job, run, event, duplicate.
pub static INSERTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "bridge_inserted_total",
        "Jobs, runs and events stored by the bridge (duplicate: seen before)",
        &["target"],
    )
});

pub static DEAD_LETTERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "bridge_dead_lettered_total",
        "Messages the bridge could not decode or route",
        &["topic"],
    )
});

pub static REBALANCES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "bridge_rebalances_total",
        "Partition assignments and revocations",
        &["kind"],
    )
});

pub static BATCH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        HistogramOpts::new(
            "bridge_batch_seconds",
            "Time to store one batch in Postgres",
        )
        .buckets(vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]),
        &[],
    )
    .unwrap_or_else(|_| unreachable!("the metric's name and labels are valid"))
});

/// Messages not yet stored, per partition: the highest offset the bridge knows exists (the broker's watermark as
/// last seen, or one past the last message read, whichever is higher) minus the next offset stored in Postgres.
pub static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "bridge_lag_messages",
        "Messages behind, per partition, against the offsets stored in Postgres",
        &["topic", "partition"],
    )
});

/// 1 while a topic's partitions are paused because a queue they feed is too deep.
pub static PAUSED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "bridge_paused",
        "Topics paused for backpressure",
        &["topic"],
    )
});

/// Every bridge metric, for registration.
pub fn all() -> Vec<Box<dyn prometheus::core::Collector>> {
    vec![
        Box::new(CONSUMED.clone()),
        Box::new(INSERTED.clone()),
        Box::new(DEAD_LETTERED.clone()),
        Box::new(REBALANCES.clone()),
        Box::new(BATCH_SECONDS.clone()),
        Box::new(LAG.clone()),
        Box::new(PAUSED.clone()),
    ]
}
