//! The node job handler: execute one node, then record its step and enqueue the next nodes in one transaction.
//!
//! A node job runs in three stages:
//! 1. `BEGIN_STEPS` checks the step (and reads the run), batched with other node jobs' reads (`steps.rs`). No row means the step already moved on (this job ran
//!    before and its worker died after committing) or the run ended: the job succeeds without doing anything.
//! 2. The node executes: pure nodes compute, actions send through the channel layer, delay and wait nodes park.
//! 3. One transaction finishes the step, merges the node's output into the run and enqueues the next node jobs
//!    (shared with other nodes' steps that finished at the same moment: see `steps.rs`).
//!
//! A failure is retried by the queue with backoff; on the last attempt (or a permanent error) the node fails:
//! its `on_error` edge is followed if it has one, otherwise the run fails. Either way the job is dead-lettered.
//! (A wait that times out without an `on_timeout` edge also fails its node, but its job itself succeeded.)
//! If the database is unreachable for all of a job's attempts, the job is dead-lettered with its step still
//! pending: replaying the dead letter resumes the run where it stopped.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::definition::{self, DelaySpec, Node, NodeKind, Workflow};
use super::expr;
use super::inline::{self, Decision, RunId};
use super::metrics::{self, RunsEnded};
use super::runs::StepStatus;
use super::steps::{FinishedStep, RunState};
use super::{Engine, NodeJob, Phase, WorkflowError, sql};
use crate::channels::Message;
use crate::channels::deliveries::{Begin, Finished};
use crate::queue::{JobContext, JobError};

/// What executing a node decided.
pub(super) enum Step {
    /// The node is finished: record it and follow `next`.
    Done(Decision),
    /// An action sent its message: record the send's result with the node's step, in one commit.
    Sent {
        decision: Decision,
        deliveries: Vec<Finished>,
    },
    /// Park the step until a `resume` job runs at this time (delay nodes).
    SuspendUntil(DateTime<Utc>),
    /// The node recorded its own outcome in its own transaction (wait-for-events).
    Recorded,
}

impl Step {
    pub(super) fn done(outcome: &str, output: Value, next: &[String]) -> Self {
        Step::Done(Decision::new(outcome, output, next))
    }
}

/// The `run` variable expressions and templates see.
pub(super) fn run_vars(job: &NodeJob, workflow: &Workflow) -> Value {
    json!({ "id": job.run, "workflow": workflow.name, "version": workflow.version })
}

/// A batched read or write failed: whatever the cause, the job is worth trying again.
fn batch_error(error: std::sync::Arc<WorkflowError>) -> JobError {
    JobError::retry(error.to_string())
}

/// A database problem is worth retrying; anything else about a node job is not.
pub(super) fn retryable(error: WorkflowError) -> JobError {
    let transient =
        |e: &WorkflowError| matches!(e, WorkflowError::Database(_) | WorkflowError::Queue(_));
    let retry = match &error {
        WorkflowError::Shared(shared) => transient(shared),
        other => transient(other),
    };
    if retry {
        JobError::retry(error.to_string())
    } else {
        JobError::permanent(error.to_string())
    }
}

impl Engine {
    pub(super) async fn run_node(&self, mut job: NodeJob, ctx: JobContext) -> Result<(), JobError> {
        job.attempt = ctx.attempt;
        job.started_at = Some(Utc::now());
        job.job_id = Some(ctx.id);
        let Some(run) = self.step_batches().begin(&job).await.map_err(batch_error)? else {
            tracing::debug!(run = job.run, node = %job.node, "node job has nothing left to do");
            return Ok(());
        };
        let workflow = match self.catalog.version(&run.workflow, run.version).await {
            Ok(workflow) => workflow,
            Err(error) => return self.unrunnable(&job, retryable(error)).await,
        };
        let Some(node) = workflow.node(&job.node) else {
            let message = format!(
                "workflow {} v{} has no node `{}`",
                run.workflow, run.version, job.node
            );
            return self.unrunnable(&job, JobError::permanent(message)).await;
        };
        let executed = self.execute(&job, &run, &workflow, node).await;
        let kind = node.kind.name();
        let step = match executed {
            Ok(step) => step,
            Err(error) => return self.node_failed(&job, node, &ctx, error).await,
        };
        let from = if job.phase == Phase::Run {
            StepStatus::Pending
        } else {
            StepStatus::Waiting
        };
        // Counted once recorded: a finish that fails is retried by the queue, and counted then.
        let (result, recorded) = match step {
            Step::Done(decision) => {
                // A throttle over its limit, and a digest's batched events, complete, but operators watch them apart.
                let counted = match decision.outcome.as_str() {
                    "throttled" => "throttled",
                    "batched" => "batched",
                    _ => "completed",
                };
                (
                    self.finish(job, from, run, &workflow, decision, Vec::new())
                        .await,
                    counted,
                )
            }
            Step::Sent {
                decision,
                deliveries,
            } => (
                self.finish(job, from, run, &workflow, decision, deliveries)
                    .await,
                "completed",
            ),
            Step::SuspendUntil(at) => (self.suspend(&job, at).await.map_err(retryable), "parked"),
            // A wait registered (parked), or timed out (its step recorded by its own statements).
            Step::Recorded => (Ok(()), "recorded"),
        };
        if result.is_ok() {
            metrics::node_executed(kind, recorded);
        }
        result
    }

    /// Records a finished node (with its send's result, for an action that sent), after evaluating the pure
    /// nodes that follow it (see `inline.rs`); returns once that is committed.
    async fn finish(
        &self,
        job: NodeJob,
        from: StepStatus,
        run: RunState,
        workflow: &Workflow,
        decision: Decision,
        deliveries: Vec<Finished>,
    ) -> Result<(), JobError> {
        let mut context = run.context;
        inline::record(&mut context, &job.node, &decision);
        let run_vars = run_vars(&job, workflow);
        let walk = inline::walk(
            workflow,
            &mut context,
            &run_vars,
            RunId::Known,
            decision.next,
        );
        let inline_kinds: Vec<&'static str> = walk
            .steps
            .iter()
            .filter_map(|step| workflow.node(&step.node))
            .map(|node| node.kind.name())
            .collect();
        let mut patch = decision.patch;
        patch.extend(walk.patch);
        let step = FinishedStep {
            job,
            from,
            outcome: decision.outcome,
            output: decision.output,
            patch,
            inline: walk.steps,
            next: walk.next,
            deliveries,
            trace_parent: crate::telemetry::current_traceparent(),
        };
        self.step_batches()
            .finish(step)
            .await
            .map_err(batch_error)?;
        for kind in inline_kinds {
            metrics::node_executed(kind, "completed");
        }
        Ok(())
    }

    /// Runs the node's own logic. Errors are the node's failures (retried by the queue).
    async fn execute(
        &self,
        job: &NodeJob,
        run: &RunState,
        workflow: &Workflow,
        node: &Node,
    ) -> Result<Step, JobError> {
        let scope = expr::scope(&run.context, &run_vars(job, workflow));
        if let Some(decided) = inline::decide(node, &scope) {
            return decided.map(Step::Done).map_err(JobError::permanent);
        }
        match &node.kind {
            NodeKind::Trigger { fields } => {
                // Runs start past their trigger (`runs.rs`); a trigger job only exists if it was enqueued by
                // an older version.
                let data = run.context.get("trigger").cloned().unwrap_or(Value::Null);
                let extracted = definition::extract_trigger(fields, &data).map_err(|problems| {
                    let text: Vec<String> =
                        problems.iter().map(|(f, m)| format!("{f} {m}")).collect();
                    JobError::permanent(format!("trigger data: {}", text.join("; ")))
                })?;
                Ok(Step::Done(Decision {
                    outcome: "accepted".into(),
                    output: extracted.clone(),
                    patch: Map::from_iter([("trigger".to_string(), extracted)]),
                    next: node.next.clone(),
                }))
            }
            NodeKind::Action { .. } => self.send(job, run, workflow, node, &scope).await,
            NodeKind::Delay(spec) => delay(job.phase, spec, &scope, &node.next),
            NodeKind::Throttle(spec) => {
                self.throttle(job, run, workflow, spec, &scope, &node.next)
                    .await
            }
            NodeKind::Digest(spec) => {
                self.digest(job, run, workflow, spec, &scope, &node.next)
                    .await
            }
            NodeKind::WaitForEvents(spec) => match job.phase {
                Phase::Run => self.start_wait(job, run, spec, &node.next, &scope).await,
                Phase::Resume => self.wait_satisfied(job, &node.next).await,
                Phase::Timeout => {
                    let timed_out = self.time_out(job, node, spec).await;
                    timed_out.map(|()| Step::Recorded).map_err(retryable)
                }
            },
            NodeKind::Condition { .. } | NodeKind::Branch { .. } | NodeKind::Transform { .. } => {
                Err(JobError::permanent(
                    "internal: a pure node was not evaluated",
                ))
            }
        }
    }

    /// Parks a delay node's step until its `resume` job, due `until`. The job is enqueued first so the step can
    /// record it as its timer in the statement that parks it; if an earlier attempt already parked the step,
    /// rolling back takes the new job away again. A resumed step parks again the same way (quiet hours whose
    /// window had closed again by the time the resume ran), provided this job is still its timer.
    async fn suspend(&self, job: &NodeJob, until: DateTime<Utc>) -> Result<(), WorkflowError> {
        let mut tx = self.steps_pool.begin().await?;
        let resume = NodeJob {
            phase: Phase::Resume,
            ..job.clone()
        };
        let new = self.jobs.new_job(resume, Some(until));
        let timer = self
            .jobs
            .enqueue(&mut tx, &[new])
            .await?
            .first()
            .map(|e| e.id());
        if job.park(&mut tx, timer).await? {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(())
    }

    /// A node attempt failed. Before the last attempt the error is only recorded; on the last one (or a
    /// permanent error) the node fails for good.
    async fn node_failed(
        &self,
        job: &NodeJob,
        node: &Node,
        ctx: &JobContext,
        error: JobError,
    ) -> Result<(), JobError> {
        // A snooze spends no attempt (a provider's circuit open, no rate permit): it comes back even after what
        // was the last attempt, so it never fails the node.
        let last = match &error {
            JobError::Permanent(_) => true,
            JobError::Snooze(..) => false,
            _ => ctx.attempt >= ctx.max_attempts,
        };
        let kind = node.kind.name();
        if !last {
            let snoozed = matches!(error, JobError::Snooze(..));
            metrics::node_executed(kind, if snoozed { "snoozed" } else { "retried" });
            let message = error.to_string();
            let recorded = job
                .attempt_query(sql::RECORD_STEP_ERROR, &message)
                .execute(&self.steps_pool)
                .await;
            if let Err(db) = recorded {
                tracing::warn!(run = job.run, node = %job.node, error = %db, "could not record the step's error");
            }
            return Err(error);
        }
        let mut tx = self
            .steps_pool
            .begin()
            .await
            .map_err(|e| retryable(e.into()))?;
        let ended = self
            .fail_node_in(&mut tx, job, node, &error.to_string())
            .await
            .map_err(retryable)?;
        tx.commit().await.map_err(|e| retryable(e.into()))?;
        ended.count();
        metrics::node_executed(kind, "failed");
        Err(JobError::permanent(error.to_string()))
    }

    /// The node cannot even be looked up (its stored definition no longer compiles, or lacks the node): a
    /// permanent error fails the run; anything else is retried.
    async fn unrunnable(&self, job: &NodeJob, error: JobError) -> Result<(), JobError> {
        if let JobError::Permanent(message) = &error {
            let failed = async {
                let mut tx = self.steps_pool.begin().await?;
                let ended = self.fail_run_in(&mut tx, job, message).await?;
                tx.commit().await?;
                ended.count();
                Ok::<(), WorkflowError>(())
            };
            failed.await.map_err(retryable)?;
        }
        Err(error)
    }

    /// Fails the node's step and its run (unless the step already moved on), and removes the run's timers.
    async fn fail_run_in(
        &self,
        conn: &mut sqlx::PgConnection,
        job: &NodeJob,
        message: &str,
    ) -> Result<RunsEnded, WorkflowError> {
        let failed: Option<(i64, Vec<i64>, String)> = job
            .attempt_query_as(sql::FAIL_RUN, message)
            .fetch_optional(&mut *conn)
            .await?;
        let Some((_, timers, workflow)) = failed else {
            return Ok(RunsEnded::none());
        };
        self.jobs.cancel_timers(conn, &timers).await?;
        Ok(RunsEnded::new("failed", vec![workflow]))
    }

    /// Fails a node: follows its `on_error` edge, or fails the run.
    pub(super) async fn fail_node_in(
        &self,
        conn: &mut sqlx::PgConnection,
        job: &NodeJob,
        node: &Node,
        message: &str,
    ) -> Result<RunsEnded, WorkflowError> {
        let Some(target) = &node.on_error else {
            return self.fail_run_in(conn, job, message).await;
        };
        let failed: Option<(i64, Option<i64>)> = job
            .attempt_query_as(sql::FAIL_STEP, message)
            .fetch_optional(&mut *conn)
            .await?;
        let Some((_, timer)) = failed else {
            return Ok(RunsEnded::none());
        };
        if let Some(timer) = timer {
            self.jobs.cancel_timers(conn, &[timer]).await?;
        }
        let enqueue: Vec<String> = sqlx::query_scalar(sql::CONTINUE_AFTER_FAILURE)
            .bind(job.run)
            .bind(job.epoch)
            .bind(target)
            .fetch_one(&mut *conn)
            .await?;
        let trace = crate::telemetry::current_traceparent();
        let next = enqueue
            .into_iter()
            .map(|node| (job.run, job.epoch, node, trace.clone()));
        self.jobs.enqueue_run_phase(conn, next).await?;
        Ok(RunsEnded::none())
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;
type PgQueryAs<'q, T> = sqlx::query::QueryAs<'q, sqlx::Postgres, T, sqlx::postgres::PgArguments>;

impl NodeJob {
    /// `sql` with this job's step key bound as `$1, $2, $3` (run, epoch, node).
    pub(super) fn step_query<'q>(&'q self, sql: &'q str) -> PgQuery<'q> {
        sqlx::query(sql)
            .bind(self.run)
            .bind(self.epoch)
            .bind(&self.node)
    }

    /// Moves the step from pending to waiting (delay and wait nodes), with its timer job if it has one yet;
    /// false if an earlier attempt already did. A resumed step (waiting, this job its timer) takes the new timer.
    pub(super) async fn park(
        &self,
        conn: &mut sqlx::PgConnection,
        timer: Option<i64>,
    ) -> Result<bool, sqlx::Error> {
        let statement = match self.phase {
            Phase::Run => sql::SUSPEND_STEP,
            Phase::Resume | Phase::Timeout => sql::RESUSPEND_STEP,
        };
        let query = self
            .step_query(statement)
            .bind(self.attempt)
            .bind(self.started_at)
            .bind(timer);
        let query = match self.phase {
            Phase::Run => query,
            Phase::Resume | Phase::Timeout => query.bind(self.job_id),
        };
        Ok(query.fetch_optional(conn).await?.is_some())
    }

    /// `sql` with the step key, then `$4` the message and `$5, $6` this attempt (number, start).
    fn attempt_query<'q>(&'q self, sql: &'q str, message: &'q str) -> PgQuery<'q> {
        self.step_query(sql)
            .bind(message)
            .bind(self.attempt)
            .bind(self.started_at)
    }

    /// [`attempt_query`](Self::attempt_query), for statements whose rows are read as `T`.
    fn attempt_query_as<'q, T>(&'q self, sql: &'q str, message: &'q str) -> PgQueryAs<'q, T>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        sqlx::query_as(sql)
            .bind(self.run)
            .bind(self.epoch)
            .bind(&self.node)
            .bind(message)
            .bind(self.attempt)
            .bind(self.started_at)
    }
}

fn delay(
    phase: Phase,
    spec: &DelaySpec,
    scope: &minijinja::Value,
    next: &[String],
) -> Result<Step, JobError> {
    let due = match spec {
        DelaySpec::For(duration) => {
            let duration = chrono::Duration::from_std(*duration)
                .map_err(|e| JobError::permanent(e.to_string()))?;
            // A resumed delay has already waited; its due time only matters for the output.
            if phase == Phase::Resume {
                return Ok(Step::done(
                    "elapsed",
                    json!({ "waited_ms": duration.num_milliseconds() }),
                    next,
                ));
            }
            Utc::now() + duration
        }
        DelaySpec::Until(expr) => timestamp(&expr.eval_json(scope).map_err(JobError::permanent)?)
            .ok_or_else(|| {
            JobError::permanent(format!(
                "`until` ({}) is not an RFC 3339 time or Unix seconds",
                expr.source()
            ))
        })?,
    };
    if phase == Phase::Resume || due <= Utc::now() {
        Ok(Step::done("elapsed", json!({ "due": due }), next))
    } else {
        Ok(Step::SuspendUntil(due))
    }
}

fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => n
            .as_f64()
            .and_then(|secs| DateTime::from_timestamp_millis((secs * 1000.0) as i64)),
        _ => None,
    }
}

/// An action whose delivery says not to send (see `channels::deliveries`): already sent, suppressed, or left
/// mid-send by a worker that died. The node completes either way (outcome `sent`, `suppressed` or `unknown`),
/// so the run goes on.
pub(super) fn skip_send(
    decided: Begin,
    message: &Message,
    next: &[String],
) -> Result<Step, JobError> {
    let channel = message.channel.as_str();
    match decided {
        Begin::AlreadySent { id, sent } => {
            let output = json!({
                "channel": channel, "to": message.to, "provider": sent.provider,
                "provider_message_id": sent.provider_message_id, "delivery_id": id,
                "note": "already sent by an earlier attempt: not sent again",
            });
            Ok(Step::done("sent", output, next))
        }
        Begin::Suppressed { id, reason } => {
            let output = json!({
                "channel": channel, "to": message.to, "delivery_id": id, "suppressed": reason,
            });
            Ok(Step::done("suppressed", output, next))
        }
        Begin::OutcomeUnknown { id } => {
            tracing::warn!(delivery = id, to = %crate::channels::mask_recipient(&message.to), channel,
                "send outcome unknown: not re-sent");
            let output = json!({
                "channel": channel, "to": message.to, "delivery_id": id,
                "note": "a worker stopped during the provider call, so the provider may have accepted the \
                         message; it is not re-sent automatically",
            });
            Ok(Step::done("unknown", output, next))
        }
        Begin::Send { .. } => Err(JobError::permanent("internal: a send was skipped")),
    }
}
