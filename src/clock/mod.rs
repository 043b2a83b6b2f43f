//! The clock role (`herald clock`; `herald up` runs one): time-driven work for a fleet that runs for months.
//!
//! * [`schedules`]: cron schedules (built-in maintenance and users' own) fired exactly once per tick however many
//!   clocks run, each tick enqueued as a job (or a workflow run) in the same transaction that claims it.
//! * [`retention`]: old rows of each data set archived (compressed JSON Lines + manifest, to a directory or S3),
//!   verified by reading back, then removed.
//! * [`rollups`]: daily counts and latency percentiles, rebuilt from raw rows while they exist.
//! * [`housekeeping`]: churned tables vacuumed when their dead rows pile up (autovacuum off or behind).
//!
//! The maintenance work runs as ordinary jobs on the clock's own queue (`clock.queue`), served by a worker inside
//! each clock process: retries, leases, dead letters and the exactly-once tick all come from the queue.

pub mod housekeeping;
pub mod metrics;
pub mod retention;
pub mod rollups;
pub mod schedules;
mod settings;

pub use settings::{ClockSettings, PartitionSettings};

/// What the clock's operations can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error(transparent)]
    Workflow(#[from] crate::workflow::WorkflowError),
    #[error("no schedule named {0:?}")]
    UnknownSchedule(String),
    #[error("{0}")]
    Invalid(String),
    #[error("archive: {0}")]
    Archive(String),
}

/// The job kind of the built-in retention schedule (`herald.retention`).
pub const RETENTION_KIND: &str = "herald.retention";
/// The job kind of the built-in rollup schedule (`herald.rollup`).
pub const ROLLUP_KIND: &str = "herald.rollup";

/// Every schedule a clock fires: the built-in maintenance schedules first, then the users'.
pub fn all_schedules(settings: &ClockSettings) -> Result<Vec<schedules::Schedule>, ClockError> {
    use schedules::{Schedule, Target};
    let maintenance = |name: &str, kind: &str, cron: &str, timezone: &str| {
        let target = Target::Job {
            queue: settings.queue.clone(),
            kind: crate::queue::JobKind::parse(kind)
                .map_err(|e| ClockError::Invalid(e.to_string()))?,
        };
        let mut schedule = Schedule::new(name, cron, timezone, target)
            .map_err(|e| ClockError::Invalid(format!("{name}: {e}")))?;
        schedule.builtin = true;
        Ok::<_, ClockError>(schedule)
    };
    let mut all = vec![
        maintenance(
            "herald.retention",
            RETENTION_KIND,
            &settings.retention.cron,
            "UTC",
        )?,
        maintenance(
            "herald.rollup",
            ROLLUP_KIND,
            &settings.rollups.cron,
            &settings.rollups.timezone,
        )?,
    ];
    for user in &settings.schedules {
        all.push(schedules::Schedule::from_settings(user).map_err(ClockError::Invalid)?);
    }
    Ok(all)
}

/// The handlers of the maintenance jobs, for the worker inside each clock.
pub fn maintenance_handlers(
    pool: &sqlx::PgPool,
    settings: &ClockSettings,
) -> crate::queue::HandlerRegistry {
    let mut registry = crate::queue::HandlerRegistry::new();
    rollups::register(&mut registry, pool.clone(), settings.rollups.clone());
    retention::register(
        &mut registry,
        std::sync::Arc::new(retention::Retention::new(pool.clone(), &settings.retention)),
    );
    registry
}
