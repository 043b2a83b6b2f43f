//! Every SQL statement of the workflow engine. Each is exercised by the tests in `tests/workflow/`.
//!
//! Concurrency rules the statements rely on (PostgreSQL, READ COMMITTED):
//! * A step moves `pending -> (waiting ->) completed | failed` only through `UPDATE ... WHERE status
//!   = <expected>`: a second worker running the same node job (after a crash) finds the step already moved and
//!   does nothing, so a node's effect on its run happens once.
//! * The run's `pending` counter and `context` are changed with `SET pending = pending - 1 + n`: an UPDATE that
//!   waited for a concurrent one re-reads the newest row, so parallel branches never lose each other's changes.
//! * Wait registration and event intake both take an advisory lock on the correlation key before reading, so
//!   whichever commits second sees the other's row: an event is never missed by a wait that starts concurrently.

// ---- definitions ----

/// Whether a version is stored. $1 name, $2 version.
pub const WORKFLOW_VERSION_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM herald_workflows WHERE name = $1 AND version = $2)";

/// Stores a definition version unless that (name, version) exists; reports whether it was inserted and, if not,
/// whether the stored content is the same (by digest of the canonical jsonb text).
pub const SAVE_WORKFLOW: &str = "
WITH new AS (
    SELECT encode(sha256(convert_to($3::jsonb::text, 'UTF8')), 'hex') AS digest
), inserted AS (
    INSERT INTO herald_workflows (name, version, definition, digest, source)
    SELECT $1, $2, $3::jsonb, new.digest, $4 FROM new
    ON CONFLICT (name, version) DO NOTHING
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM inserted) AS inserted,
       (SELECT digest FROM herald_workflows WHERE name = $1 AND version = $2) IS NOT DISTINCT FROM new.digest
           AS same_content
FROM new";

pub const LOAD_WORKFLOW: &str =
    "SELECT definition FROM herald_workflows WHERE name = $1 AND version = $2";

/// The newest version of each workflow in $1 (those stored).
pub const LATEST_VERSIONS: &str =
    "SELECT name, max(version) FROM herald_workflows WHERE name = ANY($1) GROUP BY name";

/// `LATEST_VERSIONS` for one name, the usual batch. `name = ANY($1)` is planned afresh on every call (its generic
/// plan never looks cheaper than a custom one); this form gets a generic plan after five calls on a connection.
pub const LATEST_VERSION: &str = "SELECT max(version) FROM herald_workflows WHERE name = $1";

pub const LIST_WORKFLOWS: &str = "
SELECT DISTINCT ON (name) name, version, definition->>'description' AS description, source, created_at,
       count(*) OVER (PARTITION BY name) AS versions
FROM herald_workflows ORDER BY name, version DESC";

// ---- runs ----

/// Starts runs of one workflow version, past their trigger node and the pure nodes after it (see `inline.rs`):
/// one row per context (which already holds what those nodes produced), the trigger's step and those nodes'
/// steps ($6: per run, a JSON array of `{node, outcome, output}`) completed, and a pending step for each node to
/// run as a job ($7: per run, a JSON array of node ids; empty: the run is complete at once). Ids are drawn first,
/// so the rows of each run can be found by it. A run whose idempotency key is taken is skipped (the caller looks
/// the existing run up). Returns each run started with its nodes to enqueue and its input position (1-based).
pub const START_RUNS: &str = "
WITH input AS (
    SELECT nextval('herald_runs_id_seq') AS id, t.*
    FROM unnest($3::jsonb[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[], $9::text[]) WITH ORDINALITY
        AS t(context, key, request_id, done, next, recipient_id, ord)
), runs AS (
    INSERT INTO herald_runs (id, workflow, version, status, context, idempotency_key, request_id, pending,
                             finished_at, recipient_id)
    SELECT id, $1, $2, CASE WHEN jsonb_array_length(next) = 0 THEN 'completed' ELSE 'running' END, context, key,
           request_id, jsonb_array_length(next), CASE WHEN jsonb_array_length(next) = 0 THEN now() END,
           recipient_id
    FROM input ORDER BY ord
    ON CONFLICT (workflow, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, idempotency_key
), started AS (
    SELECT i.id, r.idempotency_key, i.context, i.done, i.next, i.ord FROM runs r JOIN input i USING (id)
), done_steps AS (
    -- The trigger's step, then the pure nodes' (`done`), enqueued a microsecond apart before the pending steps
    -- (all else is one transaction's now()), so timelines, in enqueue order, list them in the order they ran.
    INSERT INTO herald_run_steps (run_id, epoch, node_id, status, outcome, output, attempts, enqueued_at,
                                  started_at, finished_at)
    SELECT s.id, 1, e.node, 'completed', e.outcome, e.output, 1,
           now() - (jsonb_array_length(s.done) + 1 - e.ord) * interval '1 microsecond', now(), now()
    FROM started s CROSS JOIN LATERAL (
        SELECT $8::text AS node, 'accepted' AS outcome, s.context->'trigger' AS output, 0::int8 AS ord
        UNION ALL
        SELECT d.step->>'node', d.step->>'outcome', d.step->'output', d.ord
        FROM jsonb_array_elements(s.done) WITH ORDINALITY AS d(step, ord)
    ) AS e
), next_steps AS (
    INSERT INTO herald_run_steps (run_id, epoch, node_id, status)
    SELECT s.id, 1, node, 'pending' FROM started s CROSS JOIN LATERAL jsonb_array_elements_text(s.next) AS node
)
SELECT id, idempotency_key, next, ord FROM started ORDER BY id";

/// The runs holding idempotency keys $2 of workflow $1: (key, id, version).
pub const FIND_RUNS_BY_KEYS: &str = "SELECT idempotency_key, id, version FROM herald_runs
WHERE workflow = $1 AND idempotency_key = ANY($2)";

pub const GET_RUN: &str = "
SELECT id, workflow, version, status, epoch, pending, context, idempotency_key, failed_node, error,
       created_at, updated_at, finished_at
FROM herald_runs WHERE id = $1";

pub const GET_STEPS: &str = "
SELECT epoch, node_id, status, outcome, output, error, attempts, enqueued_at, started_at, finished_at
FROM herald_run_steps WHERE run_id = $1 ORDER BY epoch, enqueued_at, node_id";

/// Newest first, keyset-paginated by id; either filter may be NULL.
pub const LIST_RUNS: &str = "
SELECT id, workflow, version, status, epoch, pending, context, idempotency_key, failed_node, error,
       created_at, updated_at, finished_at
FROM herald_runs
WHERE ($1::text IS NULL OR workflow = $1) AND ($2::text IS NULL OR status = $2)
  AND ($3::bigint IS NULL OR id < $3) AND ($5::text IS NULL OR recipient_id = $5)
ORDER BY id DESC LIMIT $4";

/// Cancels a running run, its unfinished steps and its waits. Returns the run and the timer jobs of its parked
/// steps, for the caller to remove in the same transaction. (A step parking concurrently holds its row lock
/// until it commits; the update then re-reads the row, so its timer is returned too.)
pub const CANCEL_RUN: &str = "
WITH run AS (
    UPDATE herald_runs SET status = 'cancelled', finished_at = now(), updated_at = now()
    WHERE id = $1 AND status = 'running'
    RETURNING id, epoch
), steps AS (
    UPDATE herald_run_steps s SET status = 'cancelled', finished_at = now()
    FROM run WHERE s.run_id = run.id AND s.epoch = run.epoch AND s.status IN ('pending', 'running', 'waiting')
    RETURNING s.timer_job_id
), waits AS (
    UPDATE herald_waits w SET status = 'cancelled', resolved_at = now()
    FROM run WHERE w.run_id = run.id AND w.status = 'waiting'
)
SELECT id, coalesce((SELECT array_agg(timer_job_id) FROM steps WHERE timer_job_id IS NOT NULL), '{}') AS timers
FROM run";

/// Reopens a failed run at the node that failed, in a new epoch.
pub const RETRY_RUN: &str = "
WITH run AS (
    UPDATE herald_runs SET status = 'running', epoch = epoch + 1, pending = 1, error = NULL,
                           finished_at = NULL, updated_at = now()
    WHERE id = $1 AND status = 'failed' AND failed_node IS NOT NULL
    RETURNING id, epoch, failed_node
), step AS (
    INSERT INTO herald_run_steps (run_id, epoch, node_id, status)
    SELECT id, epoch, failed_node, 'pending' FROM run
)
SELECT id, epoch, failed_node FROM run";

// ---- steps ----

/// Reads node jobs' runs, for a batch of (run, epoch, node, phase), numbered by `position` (1-based). A job
/// gets a row only if its run is still running in this epoch and its step is in the state its phase expects
/// (`run`: pending; `resume`/`timeout`: waiting). No row means there is nothing to do: the step already moved on
/// (an earlier attempt finished it before its worker died) or the run ended. A read, not a write: the attempt
/// and start time are recorded with the step's outcome.
pub const BEGIN_STEPS: &str = "
SELECT i.position, r.workflow, r.version, r.context, r.created_at
FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[]) WITH ORDINALITY
         AS i(run_id, epoch, node_id, phase, position)
JOIN herald_run_steps s ON s.run_id = i.run_id AND s.epoch = i.epoch AND s.node_id = i.node_id
JOIN herald_runs r ON r.id = s.run_id
-- `IS TRUE`: driven by the batch through the primary keys, never by herald_runs_by_status (see FINISH_STEPS).
WHERE (r.status = 'running') IS TRUE AND r.epoch = s.epoch
  AND s.status = CASE WHEN i.phase = 'run' THEN 'pending' ELSE 'waiting' END";

/// Finishes a batch of steps (each from `from`: pending, or waiting for a resumed node) in one statement: marks
/// them completed with their outcome and output, records the pure nodes evaluated after them (`$11`, see
/// `inline.rs`) as completed steps, enqueued a microsecond apart just before the next steps so timelines list
/// them in order, inserts their next steps (once each: a node two edges reach is inserted once), and per run
/// merges the context patches and outputs (`nodes.<id>`), adjusts the pending count and completes the run when it
/// reaches 0. A step no longer in its `from` state (an earlier attempt finished it) changes nothing. Returns the
/// next steps inserted, to enqueue.
pub const FINISH_STEPS: &str = "
WITH input AS (
    SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[],
                         $8::jsonb[], $9::int4[], $10::timestamptz[], $11::jsonb[])
        AS t(run_id, epoch, node_id, from_status, outcome, output, patch, next, attempt, started_at, inline)
), step AS (
    UPDATE herald_run_steps s
    SET status = 'completed', outcome = i.outcome, output = i.output, error = NULL, finished_at = now(),
        attempts = greatest(s.attempts, i.attempt), started_at = coalesce(s.started_at, i.started_at)
    FROM input i
    WHERE s.run_id = i.run_id AND s.epoch = i.epoch AND s.node_id = i.node_id AND s.status = i.from_status
    RETURNING s.run_id, s.epoch, s.node_id
), finished AS (
    SELECT i.* FROM input i JOIN step USING (run_id, epoch, node_id)
    WHERE EXISTS (SELECT 1 FROM herald_runs r
                  WHERE r.id = i.run_id AND r.epoch = i.epoch AND (r.status = 'running') IS TRUE)
), inline AS (
    INSERT INTO herald_run_steps (run_id, epoch, node_id, status, outcome, output, attempts, enqueued_at,
                                  started_at, finished_at)
    SELECT f.run_id, f.epoch, e.step->>'node', 'completed', e.step->>'outcome', e.step->'output', 1,
           now() - (jsonb_array_length(f.inline) + 1 - e.ord) * interval '1 microsecond', now(), now()
    -- No ON CONFLICT: an inline step is reached once (sequential, acyclic workflows), and if that ever failed to
    -- hold, the batch must fail loudly rather than merge an output the timeline does not show.
    FROM finished f CROSS JOIN LATERAL jsonb_array_elements(f.inline) WITH ORDINALITY AS e(step, ord)
), next AS (
    INSERT INTO herald_run_steps (run_id, epoch, node_id, status)
    SELECT f.run_id, f.epoch, target, 'pending'
    FROM finished f CROSS JOIN LATERAL jsonb_array_elements_text(f.next) AS target
    ON CONFLICT DO NOTHING
    RETURNING run_id, epoch, node_id
), changes AS MATERIALIZED (
    SELECT f.run_id, f.epoch, count(*) AS done,
           jsonb_object_agg(f.node_id, f.output)
               || coalesce((SELECT jsonb_object_agg(e.step->>'node', e.step->'output')
                            FROM finished f2, jsonb_array_elements(f2.inline) AS e(step)
                            WHERE f2.run_id = f.run_id), '{}') AS outputs,
           coalesce((SELECT jsonb_object_agg(p.key, p.value)
                     FROM finished f2, jsonb_each(f2.patch) AS p WHERE f2.run_id = f.run_id), '{}') AS patch,
           (SELECT count(*) FROM next n WHERE n.run_id = f.run_id) AS added
    FROM finished f GROUP BY f.run_id, f.epoch
), run AS (
    UPDATE herald_runs r
    SET pending = r.pending - c.done + c.added,
        context = jsonb_set(r.context || c.patch, '{nodes}', coalesce(r.context->'nodes', '{}') || c.outputs),
        status = CASE WHEN r.pending - c.done + c.added = 0 THEN 'completed' ELSE r.status END,
        finished_at = CASE WHEN r.pending - c.done + c.added = 0 THEN now() END,
        updated_at = now()
    FROM changes c
    -- `IS TRUE` keeps herald_runs_by_status out of this join, so it is driven by the batch through the primary
    -- key. With statistics from a moment when few runs were running (an ANALYZE before a burst), the planner
    -- drove it from that index instead and ran `changes` once per running run: 8 s per batch at 17,000.
    WHERE r.id = c.run_id AND r.epoch = c.epoch AND (r.status = 'running') IS TRUE
    RETURNING r.id, r.workflow, r.status
)
-- The next nodes to enqueue, then (node NULL) the runs this completed, for the metrics.
SELECT run_id, epoch, node_id, NULL::text AS completed FROM next
UNION ALL
SELECT id, NULL, NULL, workflow FROM run WHERE status = 'completed'";

/// A delay or wait node parks its step until a resume (or timeout) job arrives; `$6` is that job's id, if it is
/// known yet (the timer, see `migrations/0009_step_timers.sql`).
pub const SUSPEND_STEP: &str = "
UPDATE herald_run_steps SET status = 'waiting', attempts = greatest(attempts, $4), started_at = coalesce(started_at, $5),
    timer_job_id = $6
WHERE run_id = $1 AND epoch = $2 AND node_id = $3 AND status = 'pending'
RETURNING run_id";

/// Parks a resumed step again with a new timer $6, if the resuming job $7 is still its timer (a second run of
/// that job finds the new timer and changes nothing). $4, $5 as in [`SUSPEND_STEP`].
pub const RESUSPEND_STEP: &str = "
UPDATE herald_run_steps SET attempts = greatest(attempts, $4), timer_job_id = $6
WHERE run_id = $1 AND epoch = $2 AND node_id = $3 AND status = 'waiting' AND timer_job_id = $7
RETURNING run_id";

/// Records the timer job of a parked step: a wait's timeout, enqueued once the wait is known to be waiting.
pub const SET_STEP_TIMER: &str = "
UPDATE herald_run_steps SET timer_job_id = $4 WHERE run_id = $1 AND epoch = $2 AND node_id = $3";

/// Keeps the latest failed attempt's error visible on the step while it is retried.
pub const RECORD_STEP_ERROR: &str = "
UPDATE herald_run_steps SET error = $4, attempts = greatest(attempts, $5), started_at = coalesce(started_at, $6)
WHERE run_id = $1 AND epoch = $2 AND node_id = $3 AND status IN ('pending', 'waiting')";

/// A node failed for good and has no `on_error` edge: the step and the run fail, its waits are cancelled. Returns
/// the run and the timer jobs of its parked steps (this one's included), for the caller to remove. A step of
/// another branch that parks while this statement runs is not seen: its timer stays until due, then finds the
/// run failed and does nothing.
pub const FAIL_RUN: &str = "
WITH step AS (
    UPDATE herald_run_steps SET status = 'failed', error = $4, finished_at = now(),
        attempts = greatest(attempts, $5), started_at = coalesce(started_at, $6)
    WHERE run_id = $1 AND epoch = $2 AND node_id = $3 AND status IN ('pending', 'waiting')
    RETURNING run_id
), waits AS (
    UPDATE herald_waits SET status = 'cancelled', resolved_at = now()
    WHERE run_id = $1 AND status = 'waiting' AND EXISTS (SELECT 1 FROM step)
), timers AS (
    SELECT timer_job_id FROM herald_run_steps
    WHERE run_id = $1 AND epoch = $2 AND status = 'waiting' AND timer_job_id IS NOT NULL
)
UPDATE herald_runs
SET status = 'failed', failed_node = $3, error = $4, pending = pending - 1, finished_at = now(), updated_at = now()
WHERE id = $1 AND epoch = $2 AND status = 'running' AND EXISTS (SELECT 1 FROM step)
RETURNING id, coalesce((SELECT array_agg(timer_job_id) FROM timers), '{}') AS timers, workflow";

/// A node failed for good but has an `on_error` edge: the step is failed, the run goes on. Returns the step's
/// timer job, if it was parked with one, for the caller to remove.
pub const FAIL_STEP: &str = "
UPDATE herald_run_steps SET status = 'failed', error = $4, finished_at = now(),
    attempts = greatest(attempts, $5), started_at = coalesce(started_at, $6)
WHERE run_id = $1 AND epoch = $2 AND node_id = $3 AND status IN ('pending', 'waiting')
RETURNING run_id, timer_job_id";

/// Inserts the steps an `on_error` edge leads to, keeping the pending count (the failed step is replaced).
pub const CONTINUE_AFTER_FAILURE: &str = "
WITH next AS (
    INSERT INTO herald_run_steps (run_id, epoch, node_id, status)
    VALUES ($1, $2, $3, 'pending')
    ON CONFLICT DO NOTHING
    RETURNING node_id
), run AS (
    UPDATE herald_runs
    SET pending = pending - 1 + (SELECT count(*) FROM next),
        status = CASE WHEN pending - 1 + (SELECT count(*) FROM next) = 0 THEN 'completed' ELSE status END,
        finished_at = CASE WHEN pending - 1 + (SELECT count(*) FROM next) = 0 THEN now() END,
        updated_at = now()
    WHERE id = $1 AND epoch = $2 AND status = 'running'
)
SELECT coalesce((SELECT array_agg(node_id) FROM next), '{}') AS enqueue";

// ---- events and waits ----

/// Serialises wait registration and event intake for one correlation key (class 1214 = herald waits).
pub const LOCK_KEY: &str = "SELECT pg_advisory_xact_lock(1214, hashtext($1))";

/// Registers a wait and, in the same statement, checks the events already stored (received since `$8`).
/// Returns the wait's status: `satisfied` at once, or `waiting`.
pub const REGISTER_WAIT: &str = "
INSERT INTO herald_waits (run_id, epoch, node_id, key, events, mode, needed, since, deadline, status)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9,
       CASE WHEN (SELECT CASE WHEN $6 = 'all' THEN count(DISTINCT e.name) ELSE count(*) END
                  FROM herald_events e
                  WHERE e.key = $4 AND e.name = ANY($5) AND e.received_at >= $8) >= $7
            THEN 'satisfied' ELSE 'waiting' END
RETURNING status";

/// Takes the correlation keys' locks (as [`LOCK_KEY`]) for a batch of events, in the order of the lock keys (the
/// keys' hashes), so two batches never wait on each other in a cycle, even when two keys' hashes collide.
pub const LOCK_KEYS: &str = "
SELECT count(pg_advisory_xact_lock(1214, h))
FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest($1::text[]) AS k ORDER BY h) AS ordered";

/// Stores a batch of events, each unless its id was seen before (a redelivery counts once; the caller removes
/// repeats within the batch), in the order given, so the ids drawn follow it. Stamped with the clock, not the
/// transaction's start: an event waits for its key's lock, and a wait registered meanwhile must still count it.
/// Returns the rows stored.
pub const INSERT_EVENTS: &str = "
INSERT INTO herald_events (event_id, name, key, payload, received_at)
SELECT e.event_id, e.name, e.key, e.payload, clock_timestamp()
FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) WITH ORDINALITY AS e(event_id, name, key, payload, n)
ORDER BY e.n
ON CONFLICT (event_id) DO NOTHING
RETURNING id, event_id";

/// Marks satisfied every waiting wait on the keys `$1` that the events just stored (row ids `$2`, names `$3`)
/// complete, in one statement for the batch. Returns each wait with its step's timer (the timeout job, now
/// pointless, for the caller to remove), and what the caller needs to tell which of the batch's events completed
/// it: its key, mode, count needed and event names, and the matching events stored before this batch (their count,
/// and their distinct names). "Before" is "not in the batch", not an id comparison: ids from another session's
/// sequence cache need not be smaller.
pub const SATISFY_WAITS: &str = "
UPDATE herald_waits w SET status = 'satisfied', resolved_at = now()
WHERE w.key = ANY($1) AND w.status = 'waiting' AND w.events && $3::text[]
  AND EXISTS (SELECT 1 FROM herald_events b WHERE b.id = ANY($2) AND b.key = w.key AND b.name = ANY(w.events))
  AND (SELECT CASE WHEN w.mode = 'all' THEN count(DISTINCT e.name) ELSE count(*) END
       FROM herald_events e
       WHERE e.key = w.key AND e.name = ANY(w.events) AND e.received_at >= w.since) >= w.needed
RETURNING w.run_id, w.epoch, w.node_id,
          (SELECT s.timer_job_id FROM herald_run_steps s
           WHERE s.run_id = w.run_id AND s.epoch = w.epoch AND s.node_id = w.node_id) AS timer_job_id,
          w.key, w.mode, w.needed, w.events,
          (SELECT count(*) FROM herald_events e
           WHERE e.key = w.key AND e.name = ANY(w.events) AND e.received_at >= w.since
             AND NOT e.id = ANY($2)) AS prior_count,
          (SELECT coalesce(array_agg(DISTINCT e.name), '{}') FROM herald_events e
           WHERE e.key = w.key AND e.name = ANY(w.events) AND e.received_at >= w.since
             AND NOT e.id = ANY($2)) AS prior_names";

/// A wait's timeout fired: it times out unless an event satisfied it first.
pub const TIME_OUT_WAIT: &str = "
UPDATE herald_waits SET status = 'timed_out', resolved_at = now()
WHERE run_id = $1 AND epoch = $2 AND node_id = $3 AND status = 'waiting'
RETURNING run_id";

/// The events a wait matched, latest payload per name, for the node's output.
pub const MATCHED_EVENTS: &str = "
SELECT coalesce(jsonb_object_agg(e.name, e.payload ORDER BY e.id), '{}') AS events,
       coalesce(jsonb_agg(e.event_id ORDER BY e.id), '[]') AS event_ids
FROM herald_waits w
JOIN herald_events e ON e.key = w.key AND e.name = ANY(w.events) AND e.received_at >= w.since
WHERE w.run_id = $1 AND w.epoch = $2 AND w.node_id = $3";

// ---- daily rollups (the clock stores them; see `daily.rs`) ----

/// Runs per workflow for the time range [$1, $2): started in it (created_at), and finished in it (finished_at) by
/// final status, with the duration percentiles (ms) of the completed ones. At most $3 workflows.
pub const RUN_DAYS: &str = "
WITH started AS (
    SELECT workflow, count(*) AS started
    FROM herald_runs WHERE created_at >= $1 AND created_at < $2
    GROUP BY workflow
), finished AS (
    SELECT workflow,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[])
               WITHIN GROUP (ORDER BY (extract(epoch FROM finished_at - created_at) * 1000)::float8)
               FILTER (WHERE status = 'completed') AS duration
    FROM herald_runs
    WHERE finished_at >= $1 AND finished_at < $2 AND status <> 'running'
    GROUP BY workflow
)
SELECT workflow, coalesce(s.started, 0) AS started, coalesce(f.completed, 0) AS completed,
       coalesce(f.failed, 0) AS failed, coalesce(f.cancelled, 0) AS cancelled,
       f.duration[1] AS duration_p50_ms, f.duration[2] AS duration_p95_ms, f.duration[3] AS duration_p99_ms
FROM started s FULL JOIN finished f USING (workflow)
ORDER BY workflow
LIMIT $3";

/// Steps that finished in [$1, $2) per workflow and node kind (looked up in the run's definition version;
/// `unknown` if the node is not in it): counts by status, those that needed more than one attempt, and the
/// duration percentiles (finished_at - started_at, ms). At most $3 groups.
pub const STEP_DAYS: &str = "
WITH kinds AS (
    SELECT w.name AS workflow, w.version, n ->> 'id' AS node_id, n ->> 'kind' AS node_kind
    FROM herald_workflows w, jsonb_array_elements(w.definition -> 'nodes') n
    WHERE jsonb_typeof(w.definition -> 'nodes') = 'array'
), day AS (
    SELECT r.workflow, coalesce(k.node_kind, 'unknown') AS node_kind,
           count(*) FILTER (WHERE s.status = 'completed') AS completed,
           count(*) FILTER (WHERE s.status = 'failed') AS failed,
           count(*) FILTER (WHERE s.status = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE s.attempts > 1) AS retried,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[])
               WITHIN GROUP (ORDER BY (extract(epoch FROM s.finished_at - s.started_at) * 1000)::float8)
               FILTER (WHERE s.started_at IS NOT NULL) AS duration
    FROM herald_run_steps s
    JOIN herald_runs r ON r.id = s.run_id
    LEFT JOIN kinds k ON k.workflow = r.workflow AND k.version = r.version AND k.node_id = s.node_id
    WHERE s.finished_at >= $1 AND s.finished_at < $2 AND s.status IN ('completed', 'failed', 'cancelled')
    GROUP BY 1, 2
)
SELECT workflow, node_kind, completed, failed, cancelled, retried,
       duration[1] AS duration_p50_ms, duration[2] AS duration_p95_ms, duration[3] AS duration_p99_ms
FROM day
ORDER BY workflow, node_kind
LIMIT $3";

// Topic fan-outs (fanout.rs) and erasures (erase.rs).

/// A new fan-out ($1 workflow, $2 topic, $3 data, $4 request id, $5 idempotency key); answers its id, or no row
/// when the key already started one (see [`FANOUT_BY_KEY`]).
pub const INSERT_FANOUT: &str = "INSERT INTO herald_fanouts (workflow, topic, data, status, request_id, \
             idempotency_key) VALUES ($1, $2, $3, 'running', $4, $5) \
             ON CONFLICT (workflow, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id";

/// The fan-out of workflow $1 holding idempotency key $2.
pub const FANOUT_BY_KEY: &str =
    "SELECT id FROM herald_fanouts WHERE workflow = $1 AND idempotency_key = $2";

/// A fan-out's progress: its runs are its lanes'. $1 id.
pub const GET_FANOUT: &str = "SELECT f.id, f.workflow, f.topic, f.status, \
             (SELECT coalesce(sum(l.runs), 0) FROM herald_fanout_lanes l WHERE l.fanout_id = f.id)::int8 AS runs, \
             f.error, f.created_at, f.updated_at, f.finished_at FROM herald_fanouts f WHERE f.id = $1";

/// Fails a running fan-out ($1) with the error $2.
pub const FAIL_FANOUT: &str = "UPDATE herald_fanouts SET status = 'failed', error = $2, updated_at = now(), \
                     finished_at = now() WHERE id = $1 AND status = 'running'";

/// The first lane of running fan-out $1, the whole topic, unless it has one (a fan-out stored by a process older
/// than lanes has none).
pub const INSERT_FIRST_LANE: &str = "INSERT INTO herald_fanout_lanes (fanout_id, lane) \
             SELECT id, 0 FROM herald_fanouts WHERE id = $1 AND status = 'running' ON CONFLICT DO NOTHING";

/// Locks lane $2 of a running fan-out ($1) for its next page: a second copy of the lane's job waits here. Answers
/// the fan-out's work and the lane's range, and how many lanes the fan-out has.
pub const LOCK_LANE: &str = "SELECT f.workflow, f.topic, f.data, f.request_id, l.cursor, l.upper, \
             (SELECT count(*) FROM herald_fanout_lanes a WHERE a.fanout_id = f.id) AS lanes \
             FROM herald_fanout_lanes l JOIN herald_fanouts f ON f.id = l.fanout_id \
             WHERE l.fanout_id = $1 AND l.lane = $2 AND NOT l.done AND f.status = 'running' FOR UPDATE OF l";

/// Splits lane 0 of fan-out $1 at the bounds $2 (ascending): lane 0 ends at the first, lane i runs from bound i
/// (exclusive) to bound i + 1, and the last lane to the topic's end. Answers the new lanes.
pub const SPLIT_LANES: &str = "WITH first AS ( \
             UPDATE herald_fanout_lanes SET upper = $2[1], updated_at = now() WHERE fanout_id = $1 AND lane = 0) \
             INSERT INTO herald_fanout_lanes (fanout_id, lane, cursor, upper) \
             SELECT $1, b.lane::int4, b.bound, ($2::text[])[b.lane + 1] \
             FROM unnest($2::text[]) WITH ORDINALITY AS b(bound, lane) RETURNING lane";

/// Moves lane $2 of fan-out $1 past a page: cursor $3 (null: unchanged), $4 runs more, $5 whether it is done.
pub const ADVANCE_LANE: &str = "UPDATE herald_fanout_lanes SET cursor = coalesce($3, cursor), runs = runs + $4, \
             done = $5, updated_at = now() WHERE fanout_id = $1 AND lane = $2";

/// Completes fan-out $1 if none of its lanes is left. The caller holds the fan-out row's lock (`LOCK_FANOUT`),
/// so two lanes ending at once cannot each see the other still running.
pub const COMPLETE_FANOUT: &str = "UPDATE herald_fanouts SET status = 'completed', updated_at = now(), \
             finished_at = now() WHERE id = $1 AND status = 'running' \
             AND NOT EXISTS (SELECT 1 FROM herald_fanout_lanes l WHERE l.fanout_id = $1 AND NOT l.done)";

/// Locks fan-out $1 while a lane ends (see [`COMPLETE_FANOUT`]).
pub const LOCK_FANOUT: &str = "SELECT id FROM herald_fanouts WHERE id = $1 FOR NO KEY UPDATE";

/// Queues the takers of throttle key $1 one behind the other, until their transaction ends.
pub const LOCK_THROTTLE_KEY: &str =
    "SELECT pg_advisory_xact_lock(hashtext('herald.throttle'), hashtext($1))";

/// Takes a slot of throttle key $1 for the step ($2 run, $3 epoch, $4 node): at most $6 grants of the key in any
/// $5 milliseconds. A new grant fits once the key's $6-th newest grant (reservations included) has left the
/// window: at once if it already has; with $7 (`on_limit: delay`) a later slot is reserved, in arrival order;
/// otherwise none is taken. A step that took a slot in an earlier attempt answers that one. Run under
/// [`LOCK_THROTTLE_KEY`], so the statement (and its `statement_timestamp()`) starts after every earlier taker's
/// commit. Answers the step's grant time (NULL: none), whether it is still ahead, and the key's next free slot.
pub const TAKE_THROTTLE_SLOT: &str = "
WITH mine AS (
    SELECT granted_at FROM herald_throttle_grants WHERE run_id = $2 AND epoch = $3 AND node_id = $4
), slot AS (
    SELECT greatest(statement_timestamp(),
                    (SELECT granted_at FROM herald_throttle_grants WHERE key = $1
                     ORDER BY granted_at DESC OFFSET $6 - 1 LIMIT 1) + $5 * interval '1 millisecond') AS at
), granted AS (
    INSERT INTO herald_throttle_grants (run_id, epoch, node_id, key, granted_at)
    SELECT $2, $3, $4, $1, s.at FROM slot s
    WHERE NOT EXISTS (SELECT 1 FROM mine) AND ($7 OR s.at <= statement_timestamp())
    RETURNING granted_at
), grant_time AS (
    SELECT granted_at FROM mine UNION ALL SELECT granted_at FROM granted
)
SELECT g.granted_at, g.granted_at > statement_timestamp() AS ahead, s.at AS next_slot
FROM slot s LEFT JOIN grant_time g ON true";

/// A new erasure of recipient $1; answers its id.
pub const INSERT_ERASURE: &str =
    "INSERT INTO herald_erasures (recipient_id, status) VALUES ($1, 'running') RETURNING id";

/// A running erasure's recipient. $1 id.
pub const GET_ERASURE: &str =
    "SELECT recipient_id FROM herald_erasures WHERE id = $1 AND status = 'running'";

/// The running runs of recipient $1.
pub const RECIPIENT_RUNNING_RUNS: &str =
    "SELECT id FROM herald_runs WHERE recipient_id = $1 AND status = 'running' ORDER BY id";

/// The next batch of runs started for recipient $1, after run $2, at most $3 (by the runs' recipient index).
pub const RECIPIENT_RUN_BATCH: &str =
    "SELECT id FROM herald_runs WHERE recipient_id = $1 AND id > $2 ORDER BY id LIMIT $3";

/// Adds a pass's counts to erasure $1 ($2 runs, $3 deliveries, $4 events); $5 the last pass completes it.
pub const COUNT_ERASURE: &str = r#"
UPDATE herald_erasures
SET runs = runs + $2, deliveries = deliveries + $3, events = events + $4,
    status = CASE WHEN $5 THEN 'completed' ELSE status END,
    finished_at = CASE WHEN $5 THEN now() END
WHERE id = $1
"#;

/// Scrubs runs $1 (a batch of an erased recipient's): the context, steps' outputs and errors, a fan-out key; the
/// recipient column is cleared, so a scrubbed run is not matched again.
pub const SCRUB_RUNS: &str = r#"
WITH steps AS (
    UPDATE herald_run_steps s SET output = NULL, error = NULL
    WHERE s.run_id = ANY($1::bigint[]) AND (s.output IS NOT NULL OR s.error IS NOT NULL)
), digests AS (
    UPDATE herald_digest_entries d SET event = NULL
    WHERE d.run_id = ANY($1::bigint[]) AND d.event IS NOT NULL
)
UPDATE herald_runs r
SET context = '{"erased": true}'::jsonb, recipient_id = NULL, error = NULL,
    idempotency_key = CASE WHEN r.idempotency_key LIKE 'fanout:%' THEN NULL ELSE r.idempotency_key END,
    updated_at = now()
WHERE r.id = ANY($1::bigint[])
"#;

/// In runs not started for an erased recipient, the nodes that sent to them ($1 runs, $2 nodes, pairwise): each
/// step's output and error, and its entry in the run's context, which quote the address.
pub const SCRUB_SENDING_STEPS: &str = r#"
WITH pairs AS (
    SELECT DISTINCT run_id, node_id FROM unnest($1::bigint[], $2::text[]) AS p(run_id, node_id)
), steps AS (
    UPDATE herald_run_steps s SET output = NULL, error = NULL
    FROM pairs p WHERE s.run_id = p.run_id AND s.node_id = p.node_id
)
UPDATE herald_runs r
SET context = jsonb_set(r.context, '{nodes}', (r.context -> 'nodes') - n.nodes), updated_at = now()
FROM (SELECT run_id, array_agg(node_id) AS nodes FROM pairs GROUP BY run_id) n
WHERE r.id = n.run_id AND jsonb_typeof(r.context -> 'nodes') = 'object'
"#;

/// A batch of the events keyed by an erased recipient's id ($1, $2 the batch size): payload emptied.
pub const SCRUB_EVENTS: &str = r#"
UPDATE herald_events e SET payload = '{}'::jsonb
WHERE e.id IN (
    SELECT id FROM herald_events WHERE key = $1 AND payload <> '{}'::jsonb ORDER BY id LIMIT $2 FOR UPDATE
)
"#;

/// Serializes arrivals at, and the close of, digest windows of one key (a SHA-256 in hex, the only text put in
/// place of `{key}`), until the transaction ends. Sent with the transaction's `BEGIN`.
pub const LOCK_DIGEST_KEY: &str =
    "SELECT pg_advisory_xact_lock(hashtext('herald.digest'), hashtext('{key}'))";

/// Under [`LOCK_DIGEST_KEY`] for key $4: the database's time; the digest entry of the step ($1 run, $2 epoch, $3
/// node) if an earlier attempt made one (its role, its window, when that closes, the window's key); and the key's
/// newest unclosed window (its id, close time, whether that is still ahead, how many events it batched, and
/// whether its owner can still close it: the owner's step pending, running or parked in a running run).
pub const DIGEST_ARRIVAL: &str = "
SELECT statement_timestamp(), e.role, ew.id, ew.closes_at, ew.key,
       l.id, l.closes_at, l.closes_at > statement_timestamp(), l.batched,
       EXISTS (SELECT 1 FROM herald_run_steps s JOIN herald_runs r ON r.id = s.run_id
               WHERE s.run_id = l.owner_run AND s.epoch = l.owner_epoch AND s.node_id = l.owner_node
                 AND s.status IN ('pending', 'running', 'waiting') AND r.status = 'running')
FROM (SELECT 1) one
LEFT JOIN herald_digest_entries e ON e.run_id = $1 AND e.epoch = $2 AND e.node_id = $3
LEFT JOIN herald_digest_windows ew ON ew.id = e.window_id
LEFT JOIN LATERAL (
    SELECT w.id, w.closes_at, w.batched, w.owner_run, w.owner_epoch, w.owner_node
    FROM herald_digest_windows w
    WHERE w.key = $4 AND w.closed_at IS NULL
    ORDER BY w.closes_at DESC LIMIT 1
) l ON true";

/// The step ($1 run, $2 epoch, $3 node)'s digest entry: its role, its window, when that closes, the window's key.
pub const DIGEST_ENTRY_OF_STEP: &str = "
SELECT e.role, w.id, w.closes_at, w.key
FROM herald_digest_entries e JOIN herald_digest_windows w ON w.id = e.window_id
WHERE e.run_id = $1 AND e.epoch = $2 AND e.node_id = $3";

/// Closes window $1 with nothing to send (a `send_first` window no second event reached).
pub const CLOSE_EMPTY_DIGEST: &str =
    "UPDATE herald_digest_windows SET closed_at = statement_timestamp() WHERE id = $1";

/// Opens a window of digest key $5 closing at $6 with step ($1 run, $2 epoch, $3 node) in it as role $4 (`owner`,
/// place 1, or `first`, place 0: the window then has no owner yet), keeping event data $7 if $8 (`keep`) allows;
/// answers the window's id.
pub const OPEN_DIGEST: &str = "
WITH opened AS (
    INSERT INTO herald_digest_windows (key, closes_at, owner_run, owner_epoch, owner_node, batched)
    VALUES ($5, $6, CASE WHEN $4 = 'owner' THEN $1::bigint END, CASE WHEN $4 = 'owner' THEN $2::integer END,
            CASE WHEN $4 = 'owner' THEN $3::text END, CASE WHEN $4 = 'owner' THEN 1 ELSE 0 END)
    RETURNING id, batched
)
INSERT INTO herald_digest_entries (run_id, epoch, node_id, window_id, role, seq, event)
SELECT $1, $2, $3, o.id, $4, o.batched, CASE WHEN o.batched BETWEEN 1 AND $8 THEN $7::jsonb END
FROM opened o
RETURNING window_id";

/// Adds step ($1 run, $2 epoch, $3 node) to window $5 as role $4 (`owner`: it takes the window over, which has no
/// owner or one that can no longer close it; else `batched`), keeping event data $6 if its place is within $7
/// (`keep`); answers its place.
pub const JOIN_DIGEST: &str = "
WITH joined AS (
    UPDATE herald_digest_windows
    SET batched = batched + 1,
        owner_run = CASE WHEN $4 = 'owner' THEN $1 ELSE owner_run END,
        owner_epoch = CASE WHEN $4 = 'owner' THEN $2 ELSE owner_epoch END,
        owner_node = CASE WHEN $4 = 'owner' THEN $3 ELSE owner_node END
    WHERE id = $5
    RETURNING id, batched
)
INSERT INTO herald_digest_entries (run_id, epoch, node_id, window_id, role, seq, event)
SELECT $1, $2, $3, j.id, $4, j.batched, CASE WHEN j.batched <= $7 THEN $6::jsonb END
FROM joined j
RETURNING seq";

/// Whether window $1's close time has come by the database's clock.
pub const DIGEST_DUE: &str =
    "SELECT closes_at <= statement_timestamp() FROM herald_digest_windows WHERE id = $1";

/// Closes window $1 (once: a retried close finds the same batch) and answers the batch: how many events, the first
/// and last arrival, and the events kept (the first $2) in arrival order as `{run_id, at, data}`. Under [`LOCK_DIGEST_KEY`], so
/// no arrival joins after the batch is read.
pub const CLOSE_DIGEST: &str = "
WITH closed AS (
    UPDATE herald_digest_windows SET closed_at = coalesce(closed_at, statement_timestamp())
    WHERE id = $1 RETURNING batched
)
SELECT c.batched,
       (SELECT arrived_at FROM herald_digest_entries WHERE window_id = $1 AND seq = 1),
       (SELECT arrived_at FROM herald_digest_entries WHERE window_id = $1 AND seq = c.batched),
       (SELECT coalesce(jsonb_agg(jsonb_build_object('run_id', e.run_id, 'at', e.arrived_at, 'data', e.event)
                                  ORDER BY e.seq), '[]')
        FROM herald_digest_entries e WHERE e.window_id = $1 AND e.seq BETWEEN 1 AND $2)
FROM closed c";
