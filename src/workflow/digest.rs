//! Digest nodes: the runs that reach a digest node with one key inside a window are collected into one batch, and
//! exactly one of them continues with it when the window closes; the others end there (outcome `batched`).
//!
//! The key is the workflow and node (two digest nodes never share a window: their continuations differ), then the
//! node's `key` template, or by default the run's recipient; stored as its SHA-256 (as throttle keys are). The first arrival opens a window (`window: 1h` from then, or `until: "09:00"`
//! next in the recipient's time zone) and owns it: its step parks with a `resume` job due at the close (a
//! scheduled queue job, no sleeping worker). Later arrivals join the open window and complete as `batched`. At the
//! close, the owner's resume closes the window, reads the batch and continues with `digest` in its context:
//! `count`, `events` (the first `keep`, each `{run_id, at, data}` with the run's trigger data), `first_at`,
//! `last_at`. An arrival after the close opens the next window. With `send_first`, the window's opening event
//! continues at once with a batch of one; the next arrival owns the window and closes it with the events after the
//! first (none came: nothing more is sent).
//!
//! Exactly once: arrivals and the close take the key's transaction-scoped advisory lock, and the close runs once
//! the database's clock has passed `closes_at`, so an arrival either joined before the close read the batch or
//! finds the window closed. Each step's entry (its role and window) is written with its arrival: a retried
//! attempt answers the same and never joins twice; a retried close reads the same batch. A window whose owner can
//! no longer close it (its run cancelled or failed, or retried from this node in a new epoch) is taken over by the
//! next event for the key, which closes it (at once if its time has passed).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::definition::{DigestSpec, DigestWindow, Workflow};
use super::engine::Step;
use super::inline::Decision;
use super::steps::RunState;
use super::{Engine, NodeJob, Phase, WorkflowError, sql};
use crate::queue::JobError;

/// The longest key a digest takes (it is hashed before it is stored, but rendering it is bounded all the same).
pub const MAX_KEY_CHARS: usize = 512;

/// What a step is to its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The `send_first` event: it went on alone at once.
    First,
    /// The step that closes the window and continues with the batch.
    Owner,
    /// Joined the batch; its path ends here.
    Batched,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::First => "first",
            Role::Owner => "owner",
            Role::Batched => "batched",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "first" => Some(Role::First),
            "owner" => Some(Role::Owner),
            "batched" => Some(Role::Batched),
            _ => None,
        }
    }
}

/// A step's place in a window: its role, the window, and when the window closes.
struct Entry {
    role: Role,
    window: i64,
    closes_at: DateTime<Utc>,
    /// The window's key (hashed): what the close locks, whatever the run's context says by then.
    key: String,
}

impl Engine {
    /// Runs a digest node (see the module docs): `run` joins or opens a window, `resume` closes it.
    pub(super) async fn digest(
        &self,
        job: &NodeJob,
        run: &RunState,
        workflow: &Workflow,
        spec: &DigestSpec,
        scope: &minijinja::Value,
        next: &[String],
    ) -> Result<Step, JobError> {
        let entry = match job.phase {
            Phase::Run => {
                let key = super::throttle::hashed_key(&key(spec, run, workflow, &job.node, scope)?);
                self.arrive(job, run, spec, &key).await
            }
            Phase::Resume | Phase::Timeout => self.entry_of(job).await,
        }
        .map_err(|e| JobError::retry(e.to_string()))?;
        let Some(entry) = entry else {
            return Err(JobError::permanent(
                "internal: a digest step resumed without its window",
            ));
        };
        match entry.role {
            Role::First => {
                let event = event(job.run, Utc::now(), run);
                let batch = json!({ "count": 1, "events": [event], "first_at": event["at"],
                                    "last_at": event["at"], "first": true });
                Ok(continued(entry.window, batch, next))
            }
            Role::Batched => Ok(Step::done(
                "batched",
                json!({ "window": entry.window, "closes_at": entry.closes_at }),
                &[],
            )),
            Role::Owner if job.phase == Phase::Run => Ok(Step::SuspendUntil(entry.closes_at)),
            Role::Owner => {
                let batch = self
                    .close(&entry.key, entry.window, spec.keep)
                    .await
                    .map_err(super::engine::retryable)?;
                match batch {
                    // Resumed before the database's clock reached the close: park again until then.
                    None => Ok(Step::SuspendUntil(entry.closes_at)),
                    Some(batch) => Ok(continued(entry.window, batch, next)),
                }
            }
        }
    }

    /// Joins the key's open window, or opens one, under the key's lock; a step that already did answers its entry.
    /// A window whose owner can no longer close it (its run cancelled or failed, or retried from this node in a
    /// new epoch) is taken over by the next arrival, which closes it at its time, or at once if that has passed:
    /// the events batched in it are never dropped while any later event for the key arrives.
    async fn arrive(
        &self,
        job: &NodeJob,
        run: &RunState,
        spec: &DigestSpec,
        key: &str,
    ) -> Result<Option<Entry>, WorkflowError> {
        // Read before the key's lock is taken: a lock holder must not wait for a second connection.
        let zone = match spec.window {
            DigestWindow::Until(_) => Some(self.recipient_zone(run).await?),
            DigestWindow::For(_) => None,
        };
        let mut tx = self.lock_key(key).await?;
        type Arrival = (
            DateTime<Utc>,
            Option<String>,
            Option<i64>,
            Option<DateTime<Utc>>,
            Option<String>,
            Option<i64>,
            Option<DateTime<Utc>>,
            Option<bool>,
            Option<i32>,
            bool,
        );
        let (now, role, window, closes_at, window_key, latest, latest_closes, open, batched, alive): Arrival =
            sqlx::query_as(sql::DIGEST_ARRIVAL)
                .bind(job.run)
                .bind(job.epoch)
                .bind(&job.node)
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
        if let Some(entry) = entry(role, window, closes_at, window_key) {
            return Ok(Some(entry));
        }
        // The newest unclosed window is joined while open, or taken over if its owner can no longer close it and
        // it holds events; a `send_first` window no second event reached is closed; otherwise (its owner's close
        // due or under way) this event opens the next window.
        let joinable = match (latest, latest_closes, open, batched) {
            (Some(window), Some(closes_at), Some(open), Some(batched)) => {
                if open || (!alive && batched > 0) {
                    Some((window, closes_at, !alive))
                } else {
                    if !alive {
                        sqlx::query(sql::CLOSE_EMPTY_DIGEST)
                            .bind(window)
                            .execute(&mut *tx)
                            .await?;
                    }
                    None
                }
            }
            _ => None,
        };
        let keep = i32::try_from(spec.keep).unwrap_or(i32::MAX);
        let data = kept_data(run);
        let (window, closes_at, role) = match joinable {
            Some((window, closes_at, take_over)) => {
                let role = if take_over {
                    Role::Owner
                } else {
                    Role::Batched
                };
                sqlx::query(sql::JOIN_DIGEST)
                    .bind(job.run)
                    .bind(job.epoch)
                    .bind(&job.node)
                    .bind(role.as_str())
                    .bind(window)
                    .bind(&data)
                    .bind(keep)
                    .execute(&mut *tx)
                    .await?;
                (window, closes_at, role)
            }
            None => {
                let closes_at = closes_at_from(spec, now, zone)?;
                let role = if spec.send_first {
                    Role::First
                } else {
                    Role::Owner
                };
                let window: i64 = sqlx::query_scalar(sql::OPEN_DIGEST)
                    .bind(job.run)
                    .bind(job.epoch)
                    .bind(&job.node)
                    .bind(role.as_str())
                    .bind(key)
                    .bind(closes_at)
                    .bind(&data)
                    .bind(keep)
                    .fetch_one(&mut *tx)
                    .await?;
                (window, closes_at, role)
            }
        };
        tx.commit().await?;
        Ok(Some(Entry {
            role,
            window,
            closes_at,
            key: key.to_string(),
        }))
    }

    /// A transaction holding digest key `key`'s lock (taken with the `BEGIN`, one round trip). Relaxed commits:
    /// what an arrival or a close writes is redone if lost, as node steps are (see
    /// [`crate::db::relaxed_commit_pool`]): its node job's acknowledgement is a later, synchronous commit.
    async fn lock_key(
        &self,
        key: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, WorkflowError> {
        // Only a SHA-256 in hex is put into the statement's text.
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(WorkflowError::Io(
                "internal: a digest key is not hashed".into(),
            ));
        }
        let lock = sql::LOCK_DIGEST_KEY.replace("{key}", key);
        Ok(crate::db::begin_bounded_then(&self.steps_pool, &lock).await?)
    }

    /// The run's recipient's time zone (UTC without a recipient or a zone).
    async fn recipient_zone(&self, run: &RunState) -> Result<chrono_tz::Tz, WorkflowError> {
        Ok(match recipient(run) {
            Some(id) => crate::recipients::store::send_profile(&self.pool, id)
                .await?
                .map_or(chrono_tz::UTC, |profile| profile.zone()),
            None => chrono_tz::UTC,
        })
    }

    /// The step's entry, outside any lock (a resumed owner's window is fixed by then).
    async fn entry_of(&self, job: &NodeJob) -> Result<Option<Entry>, WorkflowError> {
        type Row = (String, i64, DateTime<Utc>, String);
        let row: Option<Row> = sqlx::query_as(sql::DIGEST_ENTRY_OF_STEP)
            .bind(job.run)
            .bind(job.epoch)
            .bind(&job.node)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|(role, window, closes_at, key)| {
            entry(Some(role), Some(window), Some(closes_at), Some(key))
        }))
    }

    /// Closes the owner's window under the key's lock and reads its batch; `None` if the database's clock has not
    /// reached the close yet.
    async fn close(
        &self,
        key: &str,
        window: i64,
        keep: u32,
    ) -> Result<Option<Value>, WorkflowError> {
        let mut tx = self.lock_key(key).await?;
        let due: Option<bool> = sqlx::query_scalar(sql::DIGEST_DUE)
            .bind(window)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(due) = due else {
            return Err(WorkflowError::NotFound(format!("digest window {window}")));
        };
        if !due {
            return Ok(None);
        }
        type Batch = (i32, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Value);
        let (count, first_at, last_at, events): Batch = sqlx::query_as(sql::CLOSE_DIGEST)
            .bind(window)
            .bind(i32::try_from(keep).unwrap_or(i32::MAX))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(json!({
            "count": count, "events": events, "first_at": first_at, "last_at": last_at, "first": false,
        })))
    }
}

/// When a window opened at `now` (the database's time) closes; `zone`: the recipient's, for `until`.
fn closes_at_from(
    spec: &DigestSpec,
    now: DateTime<Utc>,
    zone: Option<chrono_tz::Tz>,
) -> Result<DateTime<Utc>, WorkflowError> {
    match spec.window {
        DigestWindow::For(length) => {
            let length =
                chrono::Duration::from_std(length).map_err(|e| WorkflowError::Io(e.to_string()))?;
            Ok(now + length)
        }
        DigestWindow::Until(time) => Ok(crate::recipients::quiet_hours::next_local(
            now,
            time,
            zone.unwrap_or(chrono_tz::UTC),
        )),
    }
}

/// An entry from its columns (all present, and a role this version knows), or `None`.
fn entry(
    role: Option<String>,
    window: Option<i64>,
    closes_at: Option<DateTime<Utc>>,
    key: Option<String>,
) -> Option<Entry> {
    match (
        role.as_deref().and_then(Role::parse),
        window,
        closes_at,
        key,
    ) {
        (Some(role), Some(window), Some(closes_at), Some(key)) => Some(Entry {
            role,
            window,
            closes_at,
            key,
        }),
        _ => None,
    }
}

/// The digest's key: the workflow and node (a window is never shared by two digest nodes, whose continuations
/// differ), then the key template rendered, or by default the run's recipient.
fn key(
    spec: &DigestSpec,
    run: &RunState,
    workflow: &Workflow,
    node: &str,
    scope: &minijinja::Value,
) -> Result<String, JobError> {
    let own = match &spec.key {
        Some(template) => format!(
            "key:{}",
            template.render(scope).map_err(JobError::permanent)?
        ),
        None => format!("recipient:{}", recipient(run).unwrap_or_default()),
    };
    if own.chars().count() > MAX_KEY_CHARS {
        return Err(JobError::permanent(format!(
            "the digest key is longer than {MAX_KEY_CHARS} characters"
        )));
    }
    Ok(format!("{}/{node}/{own}", workflow.name))
}

fn recipient(run: &RunState) -> Option<&str> {
    run.context.pointer("/recipient/id").and_then(Value::as_str)
}

/// The most bytes of one event's data a batch keeps (trigger data may be megabytes; a batch keeps up to
/// [`MAX_DIGEST_KEEP`](super::definition::MAX_DIGEST_KEEP) of them in the owner's context).
pub const MAX_KEPT_EVENT_BYTES: usize = 16 * 1024;

/// What a batch keeps of a run's trigger data: all of it, or a note if it is larger than
/// [`MAX_KEPT_EVENT_BYTES`].
fn kept_data(run: &RunState) -> Value {
    let data = run.context.get("trigger").cloned().unwrap_or(Value::Null);
    let size = serde_json::to_vec(&data).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_KEPT_EVENT_BYTES {
        json!({ "omitted": format!("{size} bytes of trigger data, more than {MAX_KEPT_EVENT_BYTES}") })
    } else {
        data
    }
}

/// One event of a batch: the run, when it arrived, and its trigger data.
fn event(run_id: i64, at: DateTime<Utc>, run: &RunState) -> Value {
    json!({ "run_id": run_id, "at": at, "data": kept_data(run) })
}

/// The node continues with `batch` as `digest` in the run's context (the output keeps only the figures).
fn continued(window: i64, batch: Value, next: &[String]) -> Step {
    let output = json!({
        "window": window, "count": batch["count"], "first_at": batch["first_at"], "last_at": batch["last_at"],
    });
    Step::Done(Decision {
        outcome: "released".into(),
        output,
        patch: Map::from_iter([("digest".to_string(), batch)]),
        next: next.to_vec(),
    })
}
