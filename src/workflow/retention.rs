//! The workflows' data sets for retention (`clock::retention` runs them). A finished run is archived as one
//! object holding its steps, its waits and its deliveries, and removed with them (their foreign keys cascade).
//! Events are archived then removed by `received_at`.

use crate::channels::retention::DELIVERIES_OF_RUNS;
use crate::dataset::{DataSet, Disposal, Statements, data_set_statements};

/// Finished runs by `finished_at` (NULL while a run runs, and again once retried): the run's columns, plus
/// `steps` and `waits` (arrays of their rows) and `deliveries` (from the channels).
pub const RUNS: DataSet = DataSet {
    name: "runs",
    schema_version: 1,
    disposal: Disposal::Archive,
    sql: Statements {
        rows: r#"
SELECT r.finished_at AS at, r.id AS key,
       (to_jsonb(r) || jsonb_build_object(
           'steps', (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.epoch, s.node_id), '[]'::jsonb)
                     FROM herald_run_steps s WHERE s.run_id = r.id),
           'waits', (SELECT coalesce(jsonb_agg(to_jsonb(w) ORDER BY w.epoch, w.node_id), '[]'::jsonb)
                     FROM herald_waits w WHERE w.run_id = r.id)))::text AS line
FROM herald_runs r
WHERE r.finished_at >= $1 AND r.finished_at < $2
ORDER BY r.finished_at, r.id
"#,
        ..data_set_statements!("herald_runs", "finished_at", "id")
    },
    attachments: &[DELIVERIES_OF_RUNS],
    prepare: None,
    partitioning: None,
};

/// `herald_events` by `received_at`.
pub const EVENTS: DataSet = DataSet {
    name: "events",
    schema_version: 1,
    disposal: Disposal::Archive,
    sql: data_set_statements!("herald_events", "received_at", "NULL"),
    attachments: &[],
    prepare: Some("SELECT brin_summarize_new_values('herald_events_received_at'::regclass)"),
    partitioning: None,
};
