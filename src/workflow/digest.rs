//! Digest nodes: the runs that reach a digest node with one key inside a window are collected into one batch, and
//! exactly one of them continues with it when the window closes; the others end there (outcome `batched`).
//!
//! The key is the node's `key` template, or by default the workflow's name and the run's recipient, stored as its
//! SHA-256 (as throttle keys are). The first arrival opens a window (`window: 1h` from then, or `until: "09:00"`
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
//! attempt answers the same and never joins twice; a retried close reads the same batch.

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
        let key = super::throttle::hashed_key(&key(spec, run, workflow, scope)?);
        let entry = match job.phase {
            Phase::Run => self.arrive(job, run, spec, &key).await,
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
                    .close(&key, entry.window, spec.keep)
                    .await
                    .map_err(|e| JobError::retry(e.to_string()))?;
                match batch {
                    // Resumed before the database's clock reached the close: park again until then.
                    None => Ok(Step::SuspendUntil(entry.closes_at)),
                    Some(batch) => Ok(continued(entry.window, batch, next)),
                }
            }
        }
    }

    /// Joins the key's open window, or opens one, under the key's lock; a step that already did answers its entry.
    async fn arrive(
        &self,
        job: &NodeJob,
        run: &RunState,
        spec: &DigestSpec,
        key: &str,
    ) -> Result<Option<Entry>, WorkflowError> {
        let mut tx = crate::db::begin_bounded(&self.pool, &[]).await?;
        sqlx::query(sql::LOCK_DIGEST_KEY)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        let (now, existing) = entry_in(&mut tx, job).await?;
        if existing.is_some() {
            return Ok(existing);
        }
        let open: Option<(i64, DateTime<Utc>)> = sqlx::query_as(sql::OPEN_DIGEST_WINDOW)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
        let event = event(job.run, now, run);
        let (window, closes_at, role, seq) = match open {
            Some((window, closes_at)) => {
                let (seq, owns): (i32, bool) = sqlx::query_as(sql::JOIN_DIGEST)
                    .bind(window)
                    .bind(job.run)
                    .bind(job.epoch)
                    .bind(&job.node)
                    .fetch_one(&mut *tx)
                    .await?;
                let role = if owns { Role::Owner } else { Role::Batched };
                (window, closes_at, role, seq)
            }
            None => {
                let closes_at = self.closes_at(spec, run, now).await?;
                let (role, seq) = if spec.send_first {
                    (Role::First, 0)
                } else {
                    (Role::Owner, 1)
                };
                let owner = (role == Role::Owner).then_some(job);
                let window: i64 = sqlx::query_scalar(sql::OPEN_DIGEST)
                    .bind(key)
                    .bind(closes_at)
                    .bind(owner.map(|j| j.run))
                    .bind(owner.map(|j| j.epoch))
                    .bind(owner.map(|j| j.node.as_str()))
                    .bind(seq)
                    .fetch_one(&mut *tx)
                    .await?;
                (window, closes_at, role, seq)
            }
        };
        // Only the first `keep` events of a batch are read at the close: later ones keep no data.
        let kept = (seq >= 1 && seq <= i32::try_from(spec.keep).unwrap_or(i32::MAX))
            .then(|| event["data"].clone());
        sqlx::query(sql::INSERT_DIGEST_ENTRY)
            .bind(job.run)
            .bind(job.epoch)
            .bind(&job.node)
            .bind(window)
            .bind(role.as_str())
            .bind(seq)
            .bind(kept)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(Entry {
            role,
            window,
            closes_at,
        }))
    }

    /// The step's entry, outside any lock (a resumed owner's window is fixed by then).
    async fn entry_of(&self, job: &NodeJob) -> Result<Option<Entry>, WorkflowError> {
        let mut conn = self.pool.acquire().await?;
        Ok(entry_in(&mut conn, job).await?.1)
    }

    /// When a window opened at `now` (the database's time) closes.
    async fn closes_at(
        &self,
        spec: &DigestSpec,
        run: &RunState,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, WorkflowError> {
        match spec.window {
            DigestWindow::For(length) => {
                let length = chrono::Duration::from_std(length)
                    .map_err(|e| WorkflowError::Io(e.to_string()))?;
                Ok(now + length)
            }
            DigestWindow::Until(time) => {
                let zone = match recipient(run) {
                    Some(id) => crate::recipients::store::send_profile(&self.pool, id)
                        .await?
                        .map_or(chrono_tz::UTC, |profile| profile.zone()),
                    None => chrono_tz::UTC,
                };
                Ok(crate::recipients::quiet_hours::next_local(now, time, zone))
            }
        }
    }

    /// Closes the owner's window under the key's lock and reads its batch; `None` if the database's clock has not
    /// reached the close yet.
    async fn close(
        &self,
        key: &str,
        window: i64,
        keep: u32,
    ) -> Result<Option<Value>, WorkflowError> {
        let mut tx = crate::db::begin_bounded(&self.pool, &[]).await?;
        sqlx::query(sql::LOCK_DIGEST_KEY)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        let due: bool = sqlx::query_scalar(sql::DIGEST_DUE)
            .bind(window)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(true);
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

/// The step's entry if it has one, with the database's time.
async fn entry_in(
    conn: &mut sqlx::PgConnection,
    job: &NodeJob,
) -> Result<(DateTime<Utc>, Option<Entry>), WorkflowError> {
    type Row = (
        DateTime<Utc>,
        Option<String>,
        Option<i64>,
        Option<DateTime<Utc>>,
    );
    let (now, role, window, closes_at): Row = sqlx::query_as(sql::DIGEST_ENTRY_OF_STEP)
        .bind(job.run)
        .bind(job.epoch)
        .bind(&job.node)
        .fetch_one(conn)
        .await?;
    let entry = match (role.as_deref().and_then(Role::parse), window, closes_at) {
        (Some(role), Some(window), Some(closes_at)) => Some(Entry {
            role,
            window,
            closes_at,
        }),
        _ => None,
    };
    Ok((now, entry))
}

/// The digest's key: its template rendered, or the workflow and the run's recipient (prefixed by what it is, so
/// the two kinds never collide).
fn key(
    spec: &DigestSpec,
    run: &RunState,
    workflow: &Workflow,
    scope: &minijinja::Value,
) -> Result<String, JobError> {
    let key = match &spec.key {
        Some(template) => format!(
            "key:{}",
            template.render(scope).map_err(JobError::permanent)?
        ),
        None => format!(
            "workflow:{}/{}",
            workflow.name,
            recipient(run).unwrap_or_default()
        ),
    };
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(JobError::permanent(format!(
            "the digest key is longer than {MAX_KEY_CHARS} characters"
        )));
    }
    Ok(key)
}

fn recipient(run: &RunState) -> Option<&str> {
    run.context.pointer("/recipient/id").and_then(Value::as_str)
}

/// One event of a batch: the run, when it arrived, and its trigger data.
fn event(run_id: i64, at: DateTime<Utc>, run: &RunState) -> Value {
    let data = run.context.get("trigger").cloned().unwrap_or(Value::Null);
    json!({ "run_id": run_id, "at": at, "data": data })
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
