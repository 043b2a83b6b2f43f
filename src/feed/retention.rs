//! The feed's data set for retention (`clock::retention` runs it): items archived, then removed, by age.

use crate::dataset::{DataSet, Disposal, data_set_statements};

/// `herald_feed_items` by `created_at` (`clock.retention.feed_items_days`).
pub const FEED_ITEMS: DataSet = DataSet {
    name: "feed_items",
    schema_version: 1,
    disposal: Disposal::Archive,
    sql: data_set_statements!("herald_feed_items", "created_at", "id"),
    attachments: &[],
    prepare: Some("SELECT brin_summarize_new_values('herald_feed_items_created'::regclass)"),
    partitioning: None,
};
