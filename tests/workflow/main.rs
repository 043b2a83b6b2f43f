//! Workflows: definitions and their validation, runs through the real engine and worker, wait-for-events, the
//! HTTP endpoints, and a worker process killed mid-run.

/// The helpers in tests/common: the base every binary uses (databases, settings, workers, polling, processes),
/// and the API server (app) and the workflow harness (flows).
#[path = "../common"]
mod common {
    mod base;
    pub use base::*;
    mod app;
    pub use app::*;
    pub mod flows;
}

mod api;
mod crash;
mod definitions;
mod digest;
mod events;
mod metrics;
mod recipients;
mod runs;
mod templates;
mod throttle;
mod timers;
