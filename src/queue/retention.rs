//! The queue's data sets for retention (`clock::retention` runs them): finished jobs' history and dead letters
//! are archived then removed; idempotency keys are only removed, once older than their TTL (a key older than
//! that no longer deduplicates an enqueue).

use crate::dataset::{DataSet, Disposal, data_set_statements};
use crate::partitions::Partitioning;

/// `herald_job_history` is partitioned by `finished_at` (`migrations/0010_history_partitions.sql`): at billions
/// of rows a day, removing a day must be dropping a table, not deleting its rows.
pub const JOB_HISTORY_PARTITIONS: Partitioning = Partitioning {
    table: "herald_job_history",
    column: "finished_at",
};

/// The queue's partitioned tables, kept ahead by the clock.
pub const PARTITIONED: &[Partitioning] = &[JOB_HISTORY_PARTITIONS];

/// `herald_job_history` by `finished_at`: whole partitions are archived, then dropped; rows in the default
/// partition (and in the partition holding an older installation's rows) are deleted in batches. Each
/// partition's BRIN index serves the range scans; `prepare` summarizes all of them.
pub const JOB_HISTORY: DataSet = DataSet {
    name: "job_history",
    schema_version: 1,
    disposal: Disposal::Archive,
    sql: data_set_statements!("herald_job_history", "finished_at", "NULL"),
    attachments: &[],
    prepare: Some(
        "SELECT count(brin_summarize_new_values(relid)) \
         FROM pg_partition_tree('herald_job_history_finished_at'::regclass) WHERE isleaf",
    ),
    partitioning: Some(JOB_HISTORY_PARTITIONS),
};

/// `herald_dead_letters` by `failed_at`.
pub const DEAD_LETTERS: DataSet = DataSet {
    name: "dead_letters",
    schema_version: 1,
    disposal: Disposal::Archive,
    sql: data_set_statements!("herald_dead_letters", "failed_at", "NULL"),
    attachments: &[],
    prepare: None,
    partitioning: None,
};

/// `herald_idempotency_keys` by `created_at`: deleted, not archived.
pub const IDEMPOTENCY_KEYS: DataSet = DataSet {
    name: "idempotency_keys",
    schema_version: 1,
    disposal: Disposal::Delete,
    sql: data_set_statements!("herald_idempotency_keys", "created_at", "NULL"),
    attachments: &[],
    prepare: None,
    partitioning: None,
};
