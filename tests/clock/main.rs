//! The clock: schedules fired exactly once per tick by any number of clocks, missed ticks, time zones, pause,
//! and the HTTP and command-line views of them.

/// The helpers in tests/common: the base every binary uses, the API server (app) and the workflow harness.
#[path = "../common"]
mod common {
    mod base;
    pub use base::*;
    mod app;
    pub use app::*;
    pub mod flows;
}

mod housekeeping;
mod partitions;
mod retention;
mod rollups;
mod schedules;
