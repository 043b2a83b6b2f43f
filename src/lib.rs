//! herald: a durable job-queue worker fleet on PostgreSQL that runs notification workflows.
//!
//! Modules, one concept each:
//! * [`queue`]: the engine (enqueue, claim, ack, retry, dead letters, leases, wakeups, workers registry).
//! * [`config`]: typed, layered settings.
//! * [`db`] and [`embedded_postgres`]: connecting, migrating, and the private cluster of `herald up`.
//! * [`api`]: the HTTP API (axum), its keys and errors; [`metrics`]: Prometheus.
//! * [`app`]: the roles a process runs (`worker`, `up`), shared by the binary and the tests; [`shutdown`]: how
//!   a process stops on SIGTERM, even with a wedged handler.
//! * [`workflow`]: notification workflows whose nodes run as queue jobs; [`channels`]: how messages leave.
//! * [`bench`]: `herald bench`.

pub mod api;
pub mod app;
pub mod bench;
pub mod bench_bridge;
pub mod bench_channels;
pub mod bench_workflows;
pub mod bridge;
pub mod channels;
pub mod coalesce;
pub mod config;
pub mod db;
pub mod embedded_postgres;
pub mod metrics;
pub mod queue;
pub mod shutdown;
pub mod telemetry;
pub mod workflow;
