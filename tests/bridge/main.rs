//! The Kafka bridge: against librdkafka's in-process mock cluster, and end to end against a real
//! Kafka-protocol broker (tansu) with `herald bridge` and `herald worker` processes.

/// The helpers in tests/common: the base every binary uses (databases, settings, workers, polling, processes),
/// and the workflow harness (flows).
#[path = "../common"]
mod common {
    mod base;
    pub use base::*;
    pub mod flows;
}
/// The Kafka helpers only this binary uses.
mod kafka;

mod e2e;
mod mock_cluster;
mod secure;
