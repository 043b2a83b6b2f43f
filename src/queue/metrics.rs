//! The queue engine's Prometheus metrics. Process-wide (as the channels' are), so every process that runs a
//! worker counts them, and `app` hands them to that process's registry.
//!
//! Labels stay bounded: `queue` is a queue this worker serves (it is configured), `kind` is a kind with a
//! registered handler or `other`; never a job id or a payload. A worker resolves its label sets once, when it
//! starts ([`QueueMetrics`]), so counting a job costs an atomic add, not a label lookup under a lock.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use crate::metrics::{LATENCY_BUCKETS, counter_vec, histogram, histogram_vec, int_gauge_vec};

use crate::queue::lease::{Settled, Settlement};

/// The `kind` label of a job whose kind has no handler here.
const OTHER: &str = "other";

/// Jobs per claim or per ack batch.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

pub static JOBS_STARTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "jobs_started_total",
        "Attempts started by this process, by queue and kind",
        &["queue", "kind"],
    )
});

pub static JOBS_FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "jobs_finished_total",
        "Attempts settled by this process, by queue, kind and outcome (completed, retried, snoozed, \
         dead_lettered, interrupted, released)",
        &["queue", "kind", "outcome"],
    )
});

pub static JOB_PICKUP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "job_pickup_seconds",
        "From when an attempt was due (enqueued, scheduled or retried) to its start, by queue",
        &["queue"],
        LATENCY_BUCKETS,
    )
});

pub static JOB_RUN_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "job_run_seconds",
        "How long handlers ran, by queue and kind",
        &["queue", "kind"],
        LATENCY_BUCKETS,
    )
});

pub static JOBS_IN_FLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        "jobs_in_flight",
        "Handlers running in this process, by queue",
        &["queue"],
    )
});

pub static CLAIM_JOBS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "claim_jobs",
        "Jobs per claim, by queue",
        &["queue"],
        BATCH_BUCKETS,
    )
});

pub static CLAIM_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "claim_seconds",
        "Claim statement latency, by queue",
        &["queue"],
        LATENCY_BUCKETS,
    )
});

pub static ACK_JOBS: LazyLock<Histogram> =
    LazyLock::new(|| histogram("ack_jobs", "Acks per ack batch", BATCH_BUCKETS));

pub static ACK_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "ack_seconds",
        "Ack batch statement latency",
        LATENCY_BUCKETS,
    )
});

pub static LEASE_RESCUES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "lease_rescues_total",
        "Jobs whose expired leases this process rescued, by what became of them (returned, dead_lettered)",
        &["outcome"],
    )
});

pub static STALE_ACKS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "stale_acks_total",
        "Acks rejected because the job's lease had been rescued or already settled",
    )
    .unwrap_or_else(|_| unreachable!("the metric's name is valid"))
});

/// Every metric above, for the process's registry.
pub fn all() -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(JOBS_STARTED.clone()),
        Box::new(JOBS_FINISHED.clone()),
        Box::new(JOB_PICKUP_SECONDS.clone()),
        Box::new(JOB_RUN_SECONDS.clone()),
        Box::new(JOBS_IN_FLIGHT.clone()),
        Box::new(CLAIM_JOBS.clone()),
        Box::new(CLAIM_SECONDS.clone()),
        Box::new(ACK_JOBS.clone()),
        Box::new(ACK_SECONDS.clone()),
        Box::new(LEASE_RESCUES.clone()),
        Box::new(STALE_ACKS.clone()),
    ]
}

/// The outcomes of [`JOBS_FINISHED`], in the order [`KindMetrics::finished`] holds them.
const OUTCOMES: [&str; 6] = [
    "completed",
    "retried",
    "snoozed",
    "dead_lettered",
    "interrupted",
    "released",
];

/// One queue's and kind's counters, resolved once.
pub struct KindMetrics {
    started: IntCounter,
    run_seconds: Histogram,
    finished: [IntCounter; 6],
}

impl KindMetrics {
    fn new(queue: &str, kind: &str) -> Self {
        Self {
            started: JOBS_STARTED.with_label_values(&[queue, kind]),
            run_seconds: JOB_RUN_SECONDS.with_label_values(&[queue, kind]),
            finished: OUTCOMES
                .map(|outcome| JOBS_FINISHED.with_label_values(&[queue, kind, outcome])),
        }
    }

    pub fn started(&self) {
        self.started.inc();
    }

    pub fn ran(&self, took: Duration) {
        self.run_seconds.observe(took.as_secs_f64());
    }

    /// Counts what the database did with an attempt's settlement.
    pub fn settled(&self, settlement: &Settlement, settled: Settled) {
        let outcome = match (settled, settlement) {
            (Settled::Completed, _) => 0,
            (Settled::Retrying, Settlement::Snoozed { .. }) => 2,
            (Settled::Retrying, Settlement::Interrupted { .. }) => 4,
            (Settled::Retrying, _) => 1,
            (Settled::Dead, _) => 3,
            (Settled::Released, _) => 5,
        };
        self.finished[outcome].inc();
    }
}

impl std::fmt::Debug for KindMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KindMetrics")
    }
}

/// A worker's label sets for one queue: its own gauges and histograms, and a [`KindMetrics`] per registered kind
/// (plus `other`).
pub struct QueueMetrics {
    pub pickup_seconds: Histogram,
    pub in_flight: IntGauge,
    pub claim_jobs: Histogram,
    pub claim_seconds: Histogram,
    kinds: HashMap<String, Arc<KindMetrics>>,
    other: Arc<KindMetrics>,
}

impl QueueMetrics {
    pub fn new<'a>(queue: &str, kinds: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            pickup_seconds: JOB_PICKUP_SECONDS.with_label_values(&[queue]),
            in_flight: JOBS_IN_FLIGHT.with_label_values(&[queue]),
            claim_jobs: CLAIM_JOBS.with_label_values(&[queue]),
            claim_seconds: CLAIM_SECONDS.with_label_values(&[queue]),
            kinds: kinds
                .into_iter()
                .map(|kind| (kind.to_string(), Arc::new(KindMetrics::new(queue, kind))))
                .collect(),
            other: Arc::new(KindMetrics::new(queue, OTHER)),
        }
    }

    /// The counters of jobs of `kind` (a kind without a handler here counts as `other`).
    pub fn kind(&self, kind: &str) -> Arc<KindMetrics> {
        Arc::clone(self.kinds.get(kind).unwrap_or(&self.other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::lease::AttemptError;

    #[test]
    fn a_kind_without_a_handler_is_counted_as_other() {
        let metrics = QueueMetrics::new("metrics_unit", ["known"]);
        metrics.kind("known").started();
        metrics.kind("someone-elses").started();
        metrics.kind("yet-another").started();
        let started = |kind: &str| {
            JOBS_STARTED
                .with_label_values(&["metrics_unit", kind])
                .get()
        };
        assert_eq!((started("known"), started("other")), (1, 2));
    }

    #[test]
    fn a_retry_at_its_last_attempt_counts_as_dead_lettered_and_a_snooze_as_snoozed() {
        let metrics = QueueMetrics::new("metrics_unit_outcomes", ["k"]);
        let kind = metrics.kind("k");
        let error = || AttemptError::new(1, "error", "x");
        let retry = Settlement::Retry {
            delay: Duration::ZERO,
            error: error(),
        };
        kind.settled(&retry, Settled::Retrying);
        kind.settled(&retry, Settled::Dead);
        let snooze = Settlement::Snoozed {
            delay: Duration::ZERO,
            error: error(),
        };
        kind.settled(&snooze, Settled::Retrying);
        let count = |outcome: &str| {
            JOBS_FINISHED
                .with_label_values(&["metrics_unit_outcomes", "k", outcome])
                .get()
        };
        assert_eq!(
            (count("retried"), count("dead_lettered"), count("snoozed")),
            (1, 1, 1)
        );
    }
}
