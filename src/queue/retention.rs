//! The queue's data sets for retention (`clock::retention` runs them): finished jobs' history and dead letters
//! are archived then removed; idempotency keys are only removed, once older than their TTL (a key older than
//! that no longer deduplicates an enqueue).

use crate::dataset::{DataSet, Disposal, data_set_statements};

/// `herald_job_history` by `finished_at` (its BRIN index serves the range scans).
pub const JOB_HISTORY: DataSet = DataSet {
    name: "job_history",
    schema_version: 1,
    disposal: Disposal::Archive,
    sql: data_set_statements!("herald_job_history", "finished_at", "NULL"),
    attachments: &[],
    prepare: Some("SELECT brin_summarize_new_values('herald_job_history_finished_at'::regclass)"),
};

/// `herald_dead_letters` by `failed_at`.
pub const DEAD_LETTERS: DataSet = DataSet {
    name: "dead_letters",
    schema_version: 1,
    disposal: Disposal::Archive,
    sql: data_set_statements!("herald_dead_letters", "failed_at", "NULL"),
    attachments: &[],
    prepare: None,
};

/// `herald_idempotency_keys` by `created_at`: deleted, not archived.
pub const IDEMPOTENCY_KEYS: DataSet = DataSet {
    name: "idempotency_keys",
    schema_version: 1,
    disposal: Disposal::Delete,
    sql: data_set_statements!("herald_idempotency_keys", "created_at", "NULL"),
    attachments: &[],
    prepare: None,
};
