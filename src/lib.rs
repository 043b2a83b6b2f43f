//! herald: a durable job-queue worker fleet on PostgreSQL that runs notification workflows.
//!
//! Modules, one concept each, from the bottom layer up (what may import what is checked by `layering.rs`):
//! * helpers: [`setting`] (what settings sections are made of), [`db`] and [`embedded_postgres`] (connecting,
//!   migrating, the private cluster of `herald up`), [`coalesce`], [`metrics`], [`shutdown`], [`telemetry`],
//!   [`dataset`] (what retention needs to know of a data set, described by the module that owns it), [`audit`]
//!   (the audit log every operator action appends to, in its own transaction);
//! * [`queue`]: the engine (enqueue, claim, ack, retry, dead letters, leases, wakeups, workers registry);
//! * [`channels`]: how messages leave (provider adapters, fallback chains, limits, breakers, deliveries,
//!   callbacks);
//! * [`recipients`]: the people herald notifies: profiles, devices, preferences, topics, unsubscribe tokens;
//! * [`feed`]: the in-app feed: the `in_app` channel's items, recipient tokens, live streams;
//! * [`templates`]: the template catalogue: message content by name, per channel and locale, with layouts;
//! * [`workflow`]: notification workflows whose nodes run as queue jobs;
//! * [`bridge`]: Kafka topics into jobs, runs and events;
//! * [`clock`]: the clock role: fleet-safe cron schedules, retention with verified archives, daily rollups;
//! * [`api`]: the HTTP API (axum), its keys and errors;
//! * [`config`]: every module's settings section, layered and checked; [`app`]: the one boot path from settings
//!   to running roles, for `main`, the tests and services that embed herald ([`app::Worker`]).
//!
//! `docs/architecture.md` has the module map: which module owns which tables and settings.

pub mod alerts;
pub mod api;
pub mod app;
pub mod audit;
pub mod bridge;
pub mod channels;
pub mod clock;
pub mod coalesce;
pub mod config;
pub mod dataset;
pub mod db;
pub mod embedded_postgres;
pub mod feed;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod partitions;
pub mod queue;
pub mod recipients;
pub mod setting;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod templates;
pub mod workflow;
