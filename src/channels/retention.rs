//! The channels' data sets for retention (`clock::retention` runs them): applied callbacks are archived then
//! removed; circuit states are removed; a run's deliveries are archived inside the run (see
//! `workflow::retention`), and removed with it (their foreign key cascades).

use crate::dataset::{Attachment, DataSet, Disposal, data_set_statements};

/// `herald_callback_events` by `received_at`: the keys that deduplicate providers' callbacks.
pub const CALLBACK_EVENTS: DataSet = DataSet {
    name: "callback_events",
    schema_version: 1,
    disposal: Disposal::Archive,
    sql: data_set_statements!("herald_callback_events", "received_at", "NULL"),
    attachments: &[],
    prepare: Some(
        "SELECT brin_summarize_new_values('herald_callback_events_received_at'::regclass)",
    ),
    partitioning: None,
};

/// `herald_provider_circuits` by `updated_at`: deleted. Each process records under an id of its own, and the
/// fleet view reads only the last day's rows, so older rows are those of processes long gone (or circuits that
/// have not changed since, which the view no longer shows anyway).
pub const PROVIDER_CIRCUITS: DataSet = DataSet {
    name: "provider_circuits",
    schema_version: 1,
    disposal: Disposal::Delete,
    sql: data_set_statements!("herald_provider_circuits", "updated_at", "NULL"),
    attachments: &[],
    prepare: None,
    partitioning: None,
};

/// A run's deliveries, by run id (the unique key on deliveries starts with `run_id`).
pub const DELIVERIES_OF_RUNS: Attachment = Attachment {
    field: "deliveries",
    sql: "SELECT run_id AS key, jsonb_agg(to_jsonb(d) ORDER BY d.id)::text AS rows \
          FROM herald_deliveries d WHERE d.run_id = ANY($1) GROUP BY d.run_id",
};
