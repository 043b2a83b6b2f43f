//! The queue's vocabulary: names parsed once at the edge, and the job a caller asks to enqueue.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a value from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct ParseError {
    pub what: &'static str,
    pub reason: String,
}

fn check_identifier(what: &'static str, value: &str, max_len: usize) -> Result<(), ParseError> {
    let fail = |reason: &str| {
        Err(ParseError {
            what,
            reason: reason.to_string(),
        })
    };
    if value.is_empty() {
        return fail("must not be empty");
    }
    if value.len() > max_len {
        return fail(&format!("must be at most {max_len} bytes"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return fail("may contain only ASCII letters, digits, '_', '-' and '.'");
    }
    Ok(())
}

/// A queue name: 1-64 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct QueueName(String);

/// Read from settings (`workflows.queue`) as text and parsed, so a bad name fails at start naming the key.
impl<'de> Deserialize<'de> for QueueName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl QueueName {
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        check_identifier("queue name", value, 64)?;
        Ok(Self(value.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job kind names the handler that runs it: 1-128 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct JobKind(String);

impl JobKind {
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        check_identifier("job kind", value, 128)?;
        Ok(Self(value.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A caller-chosen key that makes enqueueing idempotent: 1-255 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let fail = |reason: &str| {
            Err(ParseError {
                what: "idempotency key",
                reason: reason.to_string(),
            })
        };
        if value.is_empty() {
            return fail("must not be empty");
        }
        if value.chars().count() > 255 {
            return fail("must be at most 255 characters");
        }
        if value.chars().any(|c| c.is_control()) {
            return fail("must not contain control characters");
        }
        Ok(Self(value.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Priority 0 (default) to 9; higher runs first. See `jobs.priority_aging_secs` for how waiting jobs age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
#[serde(transparent)]
pub struct Priority(i16);

impl Priority {
    pub const MAX: i16 = 9;

    pub fn new(value: i64) -> Result<Self, ParseError> {
        if (0..=i64::from(Self::MAX)).contains(&value) {
            Ok(Self(value as i16))
        } else {
            Err(ParseError {
                what: "priority",
                reason: format!("must be between 0 and {}", Self::MAX),
            })
        }
    }
    pub fn get(self) -> i16 {
        self.0
    }
}

pub type JobId = i64;

/// Where a job is: `available`, `scheduled` or `running` while queued; `completed`, `cancelled` or `dead` once
/// finished.
// The hot table has no state column: a queued job's state follows from its lease and schedule. A finished job's
// is `herald_job_history.outcome`, decoded straight into this type.
// sqlx declares this type by name (`text`): bind `as_str()`, since binding the enum itself costs a type lookup
// per connection.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum JobState {
    /// Due and waiting for a worker.
    Available,
    /// Waiting for its `run_at` (enqueued for later, or a retry in backoff).
    Scheduled,
    /// Leased by a worker.
    Running,
    Completed,
    Cancelled,
    /// Failed for good: it is in the dead letters.
    Dead,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        Self::Available,
        Self::Scheduled,
        Self::Running,
        Self::Completed,
        Self::Cancelled,
        Self::Dead,
    ];
    /// The states of a finished job: what `herald_job_history.outcome` allows.
    pub const FINISHED: [JobState; 3] = [Self::Completed, Self::Cancelled, Self::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Dead => "dead",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A queue served by a worker process, with how many of its jobs run at once there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: QueueName,
    pub concurrency: usize,
}

/// A typed job: its payload type and the kind that routes it to its handler.
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    const KIND: &'static str;
}

/// Per-job defaults from configuration, applied where a job sets no value of its own.
#[derive(Debug, Clone)]
pub struct JobDefaults {
    pub max_attempts: i32,
    pub timeout: Duration,
    /// How much waiting time one priority level is worth (the anti-starvation rule).
    pub priority_aging: Duration,
}

/// One job to enqueue. Build it with [`NewJob::new`] or [`NewJob::typed`], then set options.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: QueueName,
    pub kind: JobKind,
    pub payload: serde_json::Value,
    pub priority: Priority,
    /// `None` means now.
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: Option<i32>,
    pub timeout: Option<Duration>,
    pub idempotency_key: Option<IdempotencyKey>,
    /// The id of the request that created the job (the API sets it), stored so logs can be joined.
    pub request_id: Option<String>,
    /// The W3C traceparent the job's attempts continue (see `telemetry`): the enqueuing span's, by default.
    pub trace_parent: Option<String>,
}

impl NewJob {
    pub fn new(queue: QueueName, kind: JobKind, payload: serde_json::Value) -> Self {
        Self {
            queue,
            kind,
            payload,
            priority: Priority::default(),
            run_at: None,
            max_attempts: None,
            timeout: None,
            idempotency_key: None,
            request_id: None,
            // The span enqueueing it, when traces are exported (a `None` costs nothing otherwise).
            trace_parent: crate::telemetry::current_traceparent(),
        }
    }

    /// A job whose kind and payload come from a [`Job`] type.
    pub fn typed<J: Job>(queue: QueueName, job: &J) -> Result<Self, serde_json::Error> {
        let kind = JobKind(J::KIND.to_string());
        Ok(Self::new(queue, kind, serde_json::to_value(job)?))
    }

    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }
    pub fn max_attempts(mut self, attempts: i32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    pub fn idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key);
        self
    }
    pub fn request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }
    /// The trace to continue, when the job is built away from the span it belongs to (a batch writer's task).
    pub fn trace_parent(mut self, trace_parent: Option<String>) -> Self {
        self.trace_parent = trace_parent;
        self
    }
}

/// What enqueueing one job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "id", rename_all = "snake_case")]
pub enum Enqueued {
    /// A new job was inserted.
    Inserted(JobId),
    /// The idempotency key was already taken by a job enqueued with the same queue, kind, priority and payload:
    /// this is that job.
    Duplicate(JobId),
    /// The idempotency key is held by a job enqueued with something else (a reused key): this is that job.
    Conflict(JobId),
}

impl Enqueued {
    pub fn id(self) -> JobId {
        match self {
            Enqueued::Inserted(id) | Enqueued::Duplicate(id) | Enqueued::Conflict(id) => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_at_the_edge() {
        assert!(QueueName::parse("emails.high-1").is_ok());
        assert!(QueueName::parse("").is_err());
        assert!(QueueName::parse("has space").is_err());
        assert!(QueueName::parse(&"x".repeat(65)).is_err());
        assert!(JobKind::parse("email.send").is_ok());
        assert!(IdempotencyKey::parse("order-42/ship").is_ok());
        assert!(IdempotencyKey::parse("bad\nkey").is_err());
        assert!(Priority::new(9).is_ok());
        assert!(Priority::new(10).is_err());
        assert!(Priority::new(-1).is_err());
    }

    #[test]
    fn job_states_are_spelled_as_the_history_table_stores_them() {
        for state in JobState::ALL {
            let json = serde_json::to_value(state).unwrap();
            assert_eq!(json, state.as_str());
            assert_eq!(state.to_string(), state.as_str());
            assert_eq!(serde_json::from_value::<JobState>(json).unwrap(), state);
            assert_eq!(JobState::parse(state.as_str()), Some(state));
            // sqlx writes (and reads) the same spelling.
            let mut sent = sqlx::postgres::PgArgumentBuffer::default();
            let _ = sqlx::Encode::<sqlx::Postgres>::encode_by_ref(&state, &mut sent);
            assert_eq!(&sent[..], state.as_str().as_bytes());
        }
        // The CHECK constraint on `herald_job_history.outcome` lists exactly the finished states.
        let quoted: Vec<String> = JobState::FINISHED
            .iter()
            .map(|s| format!("'{s}'"))
            .collect();
        let check = format!("CHECK (outcome IN ({}))", quoted.join(", "));
        let migration = include_str!("../../migrations/0001_queue.sql");
        let migration = migration.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(migration.contains(&check), "{check} not in the migration");
    }
}
