//! The bridge's data set for retention (`clock::retention` runs it): messages it could not route, archived then
//! removed by `created_at`.

use crate::dataset::{DataSet, Disposal, data_set_statements};

/// `herald_bridge_dead_letters` by `created_at` (raw bytes archived as Postgres' `\x…` hex text).
pub const BRIDGE_DEAD_LETTERS: DataSet = DataSet {
    name: "bridge_dead_letters",
    schema_version: 1,
    disposal: Disposal::Archive,
    sql: data_set_statements!("herald_bridge_dead_letters", "created_at", "NULL"),
    attachments: &[],
    prepare: None,
    partitioning: None,
};
