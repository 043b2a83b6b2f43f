//! Throttle nodes: at most `limit` continuations per key in any `window`-long span, across the whole fleet.
//!
//! The key is the node's `key` template, or by default the workflow's name and the run's recipient. Each
//! continuation the node lets through is a grant row held by its step (run, epoch, node). A taker locks the key
//! (a transaction-scoped advisory lock: takers of one key queue, takers of other keys do not wait), counts the
//! key's grants inside the window and, below the limit, adds its own, all before the lock is released at commit:
//! no two workers can both see the last free slot. A retried attempt finds its step's grant and goes on without
//! taking a second slot. Over the limit, the node completes as `throttled` and follows no edge (`on_limit: skip`),
//! or parks its step until the oldest grant in the window leaves it and tries again (`on_limit: delay`; a
//! scheduled `resume` job, no sleeping worker).

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
            Some(template) => template.render(scope).map_err(JobError::permanent)?,
            None => {
                let recipient = run
                    .context
                    .pointer("/recipient/id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                format!("{}/{recipient}", workflow.name)
            }
        };
        if key.chars().count() > MAX_KEY_CHARS {
            return Err(JobError::permanent(format!(
                "the throttle key is longer than {MAX_KEY_CHARS} characters"
            )));
        }
        let window_ms = i64::try_from(spec.window.as_millis()).unwrap_or(i64::MAX);
        let (allowed, taken, next_slot) = self
            .take_slot(job, &key, window_ms, spec.limit)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        if allowed {
            return Ok(Step::done(
                "allowed",
                json!({ "key": key, "count": taken + 1, "limit": spec.limit }),
                next,
            ));
        }
        match (spec.on_limit, next_slot) {
            (OnLimit::Delay, Some(at)) if at > Utc::now() => Ok(Step::SuspendUntil(at)),
            // The slot freed while we looked: try again at once (a retry spends no attempt).
            (OnLimit::Delay, _) => Err(JobError::Snooze(
                std::time::Duration::from_millis(100),
                "a throttle slot frees now".into(),
            )),
            (OnLimit::Skip, _) => Ok(Step::done(
                "throttled",
                json!({ "key": key, "limit": spec.limit, "next_slot": next_slot }),
                &[],
            )),
        }
    }

    /// Takes a slot of `key` for the job's step under the key's lock; answers (allowed, grants counted in the
    /// window besides the step's own, when the oldest of them leaves the window).
    async fn take_slot(
        &self,
        job: &NodeJob,
        key: &str,
        window_ms: i64,
        limit: u32,
    ) -> Result<(bool, i64, Option<DateTime<Utc>>), WorkflowError> {
        let mut tx = crate::db::begin_bounded(&self.pool, &[]).await?;
        sqlx::query(sql::LOCK_THROTTLE_KEY)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        let taken: (bool, i64, Option<DateTime<Utc>>) = sqlx::query_as(sql::TAKE_THROTTLE_SLOT)
            .bind(key)
            .bind(job.run)
            .bind(job.epoch)
            .bind(&job.node)
            .bind(window_ms)
            .bind(i64::from(limit))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(taken)
    }
}
