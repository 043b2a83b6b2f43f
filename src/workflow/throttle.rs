//! Throttle nodes: at most `limit` continuations per key in any `window`-long span, across the whole fleet.
//!
//! The key is the node's `key` template, or by default the workflow's name and the run's recipient (the two kinds
//! never collide: each is prefixed with what it is). Each continuation the node lets through is a grant row held
//! by its step (run, epoch, node), under the key's SHA-256 (no address or name from trigger data is stored with
//! it, and its size is fixed). A taker locks the key (a transaction-scoped advisory lock: takers of one key queue,
//! takers of other keys do not wait), finds the key's `limit`-th newest grant and, if it has left the window, adds
//! its own, before the lock is released at commit: no two workers can both take the last slot. A retried attempt
//! finds its step's grant and takes no second one. Over the limit, the node completes as `throttled` and follows
//! no edge (`on_limit: skip`), or reserves the next free slot and parks its step until then (`on_limit: delay`; a
//! scheduled `resume` job, no sleeping worker): waiters are served in arrival order, each woken once. Times are
//! the database's, never a worker's clock.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::definition::{OnLimit, ThrottleSpec, Workflow};
use super::engine::Step;
use super::steps::RunState;
use super::{Engine, NodeJob, WorkflowError, sql};
use crate::queue::JobError;

/// The longest key a throttle takes (a rendered template can be long; the key is stored with every grant).
pub const MAX_KEY_CHARS: usize = 512;

impl Engine {
    /// Runs a throttle node (see the module docs).
    pub(super) async fn throttle(
        &self,
        job: &NodeJob,
        run: &RunState,
        workflow: &Workflow,
        spec: &ThrottleSpec,
        scope: &minijinja::Value,
        next: &[String],
    ) -> Result<Step, JobError> {
        let key = match &spec.key {
            Some(template) => format!(
                "key:{}",
                template.render(scope).map_err(JobError::permanent)?
            ),
            None => {
                let recipient = run
                    .context
                    .pointer("/recipient/id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                format!("workflow:{}/{recipient}", workflow.name)
            }
        };
        if key.chars().count() > MAX_KEY_CHARS {
            return Err(JobError::permanent(format!(
                "the throttle key is longer than {MAX_KEY_CHARS} characters"
            )));
        }
        let window_ms = i64::try_from(spec.window.as_millis()).unwrap_or(i64::MAX);
        let reserve = spec.on_limit == OnLimit::Delay;
        let taken = self
            .take_slot(job, &hashed_key(&key), window_ms, spec.limit, reserve)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        match taken {
            (Some(granted_at), Some(false), _) => Ok(Step::done(
                "allowed",
                json!({ "key": key, "limit": spec.limit, "granted_at": granted_at }),
                next,
            )),
            // A reserved slot still ahead (a first attempt, or a resume that came early): park until it.
            (Some(granted_at), _, _) => Ok(Step::SuspendUntil(granted_at)),
            (None, _, next_slot) => Ok(Step::done(
                "throttled",
                json!({ "key": key, "limit": spec.limit, "next_slot": next_slot }),
                &[],
            )),
        }
    }

    /// Takes a slot of `key` for the job's step under the key's lock (`reserve`: a later one if none is free
    /// now); answers (the step's grant time, whether it is still ahead, the key's next free slot).
    async fn take_slot(
        &self,
        job: &NodeJob,
        key: &str,
        window_ms: i64,
        limit: u32,
        reserve: bool,
    ) -> Result<(Option<DateTime<Utc>>, Option<bool>, DateTime<Utc>), WorkflowError> {
        let mut tx = crate::db::begin_bounded(&self.pool, &[]).await?;
        sqlx::query(sql::LOCK_THROTTLE_KEY)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        let taken = sqlx::query_as(sql::TAKE_THROTTLE_SLOT)
            .bind(key)
            .bind(job.run)
            .bind(job.epoch)
            .bind(&job.node)
            .bind(window_ms)
            .bind(i64::from(limit))
            .bind(reserve)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(taken)
    }
}

/// What a key is stored and locked as: its SHA-256, in hex (digest keys too).
pub(super) fn hashed_key(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
