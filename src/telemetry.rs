//! Logging set-up, in one place: `RUST_LOG` filters (default `info`), output goes to stderr, as text or, with
//! `HERALD_LOG_FORMAT=json`, as one JSON object per line (for a log stack: Loki, ELK). Read from the environment,
//! not from the config files, because logging starts before they are read.
//!
//! Each line carries the fields of the spans it happened in: an HTTP request's `request_id`, a job attempt's
//! `job` id.

use tracing_subscriber::EnvFilter;

/// The environment variable choosing the log format: `json`, or anything else for text.
pub const LOG_FORMAT_VAR: &str = "HERALD_LOG_FORMAT";

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json =
        std::env::var(LOG_FORMAT_VAR).is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless; ignore the error it returns.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init()
    } else {
        builder.try_init()
    };
}
