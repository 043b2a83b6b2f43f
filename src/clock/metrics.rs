//! The clock's Prometheus metrics: ticks fired and passed over by schedule (schedules come from the settings, so
//! the label set is bounded), what retention archived and removed by data set, and when retention and the daily
//! rollup last succeeded. The maintenance jobs run on whichever clock process's worker claims them, so the
//! fleet's figure is the sum (counters) or the max (the last-success timestamps) across clock processes.

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{GaugeVec, IntCounterVec};

use crate::metrics::{counter_vec, gauge_vec};

pub static TICKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "clock_ticks_total",
        "Schedule ticks claimed by this clock, by schedule and outcome (fired, passed_over)",
        &["schedule", "outcome"],
    )
});

pub static ARCHIVED_ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "clock_archived_rows_total",
        "Rows archived by retention, by data set",
        &["data_set"],
    )
});

pub static ARCHIVED_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "clock_archived_bytes_total",
        "Bytes of archive objects written by retention (compressed), by data set",
        &["data_set"],
    )
});

pub static REMOVED_ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "clock_removed_rows_total",
        "Rows removed by retention (deleted, archived first where the data set is archived), by data set",
        &["data_set"],
    )
});

pub static LAST_SUCCESS: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "clock_last_success_timestamp_seconds",
        "When a maintenance job (retention, rollup) last succeeded on this process, as a Unix time",
        &["task"],
    )
});

/// Every metric above, for the process's registry.
pub fn all() -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(TICKS.clone()),
        Box::new(ARCHIVED_ROWS.clone()),
        Box::new(ARCHIVED_BYTES.clone()),
        Box::new(REMOVED_ROWS.clone()),
        Box::new(LAST_SUCCESS.clone()),
    ]
}

/// A maintenance task succeeded now.
pub(super) fn succeeded(task: &str) {
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1_000.0;
    LAST_SUCCESS.with_label_values(&[task]).set(now);
}
