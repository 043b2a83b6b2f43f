//! Channels: each provider adapter against a local server speaking its wire format (SMTP against a real one),
//! chains with fallback and breakers, deliveries, delivery callbacks, the HTTP overview, and worker fleets.

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
/// The fake provider server only this binary uses.
mod fake_provider;

mod alerts;
mod api;
mod callbacks;
mod chain;
mod deliveries;
mod feed;
mod fleet;
mod recipients;
mod traces;

/// One module per family of provider adapters.
mod providers {
    mod aws;
    mod email;
    mod push;
    mod sms;
    mod smtp;
    mod webhooks;
}
