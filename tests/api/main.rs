//! The HTTP API against the real router, and the README's first command (`herald up` with a private PostgreSQL).

/// The helpers in tests/common: the base every binary uses (databases, settings, workers, polling, processes),
/// and the API server (app).
#[path = "../common"]
mod common {
    mod base;
    pub use base::*;
    mod app;
    pub use app::*;
}

mod audit;
mod cli_up;
mod http;
mod security;
mod ui;
