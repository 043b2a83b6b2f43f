//! Every SQL statement the queue runs, in one place. The Rust around them lives in `enqueue.rs`, `lease.rs`,
//! `admin.rs` and `dead_letters.rs`; each statement is exercised by the tests in `tests/queue/`.
//!
//! Conventions: batches travel as parallel arrays through `unnest`, so a batch of any size is one statement and
//! one round trip. Wakeups are `pg_notify` calls made by the statement that made work available: one per queue
//! per statement (Postgres also folds identical notifications within a transaction), and they are delivered only
//! when the transaction commits, so a rolled-back enqueue wakes nobody.

/// The LISTEN/NOTIFY channel. The payload is [`SCHEDULED_WAKEUP`], or a queue name with the lowest `sort_key`
/// (in microseconds since the epoch) of the jobs the statement made available, `emails@1767225600000000`, or a
/// bare queue name when that is not known (a worker then searches the whole queue once; see `runner.rs`).
pub const CHANNEL: &str = "herald_jobs";
/// Payload telling promoters that a job was scheduled for later (queue names cannot contain '!').
pub const SCHEDULED_WAKEUP: &str = "!scheduled";

/// Batch enqueue. Idempotency keys are taken first (`ON CONFLICT DO NOTHING`, which waits for a concurrent
/// transaction holding the same key, so two racing enqueues produce one job); only rows that won their key (or
/// have none) are inserted. Each key records a fingerprint of what it was enqueued with, so a repeat with another
/// body can be told apart from a true retry. Returns one row per input, in input order.
/// $1 queue, $2 kind, $3 payload, $4 priority, $5 run_at (NULL = now), $6 max_attempts, $7 timeout_ms,
/// $8 idempotency_key, $9 replay_of, $10 priority aging in seconds, $11 request_id, $12 trace_parent.
pub const ENQUEUE: &str = r#"
WITH input AS MATERIALIZED (
    SELECT nextval('herald_jobs_id_seq') AS id, t.queue, t.kind, t.payload, t.priority,
           coalesce(t.run_at, now()) AS run_at, t.max_attempts, t.timeout_ms, t.idempotency_key, t.replay_of,
           t.request_id, t.trace_parent, t.ord,
           CASE WHEN t.idempotency_key IS NOT NULL
                THEN md5(t.queue || E'\x1f' || t.kind || E'\x1f' || t.priority || E'\x1f' || t.payload::text)
           END AS fingerprint
    FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::int2[], $5::timestamptz[], $6::int4[], $7::int4[],
                $8::text[], $9::int8[], $11::text[], $12::text[])
         WITH ORDINALITY AS t(queue, kind, payload, priority, run_at, max_attempts, timeout_ms, idempotency_key,
                              replay_of, request_id, trace_parent, ord)
),
won_keys AS (
    INSERT INTO herald_idempotency_keys (key, job_id, fingerprint)
    SELECT idempotency_key, id, fingerprint FROM input WHERE idempotency_key IS NOT NULL
    ORDER BY idempotency_key -- a fixed lock order: two batches sharing keys cannot deadlock each other
    ON CONFLICT (key) DO NOTHING
    RETURNING job_id
),
inserted AS (
    INSERT INTO herald_jobs (id, queue, kind, payload, priority, run_at, scheduled, sort_key, max_attempts,
                             timeout_ms, idempotency_key, replay_of, request_id, trace_parent)
    SELECT i.id, i.queue, i.kind, i.payload, i.priority, i.run_at, i.run_at > now(),
           i.run_at - make_interval(secs => i.priority * $10::float8), i.max_attempts, i.timeout_ms,
           i.idempotency_key, i.replay_of, i.request_id, i.trace_parent
    FROM input i
    WHERE i.idempotency_key IS NULL OR i.id IN (SELECT job_id FROM won_keys)
    RETURNING id, queue, scheduled, sort_key
),
wakeups AS (
    SELECT count(pg_notify('herald_jobs', w.payload)) AS sent
    FROM (SELECT DISTINCT '!scheduled' AS payload FROM inserted WHERE scheduled
          UNION ALL
          -- A microsecond earlier than the lowest key: the hint must never sit above a job it announces.
          SELECT queue || '@' || (floor(extract(epoch FROM min(sort_key)) * 1000000)::int8 - 1)
          FROM inserted WHERE NOT scheduled GROUP BY queue) w
)
SELECT i.id, (ins.id IS NOT NULL) AS inserted, i.idempotency_key, i.fingerprint,
       (SELECT sent FROM wakeups) AS wakeups
FROM input i LEFT JOIN inserted ins ON ins.id = i.id
ORDER BY i.ord
"#;

/// The jobs holding the given idempotency keys (for reporting duplicates).
pub const JOBS_BY_IDEMPOTENCY_KEY: &str =
    "SELECT key, job_id, fingerprint FROM herald_idempotency_keys WHERE key = ANY($1::text[])";

/// The claim statement, with `$floor` added to the search's conditions (one text for [`CLAIM`] and
/// [`CLAIM_FROM`]).
macro_rules! claim_statement {
    ($floor:literal) => {
        concat!(
            r#"
WITH next AS (
    SELECT id FROM herald_jobs
    WHERE queue = $1 AND lease_token IS NULL AND NOT scheduled"#,
            $floor,
            r#"
      AND NOT EXISTS (SELECT 1 FROM herald_queues q WHERE q.name = $1 AND q.paused)
    ORDER BY sort_key
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE herald_jobs j
    SET lease_token = $5,
        lease_expires_at = now() + $3 * interval '1 millisecond',
        leased_by = $4,
        attempt = j.attempt + 1,
        claimed_at = clock_timestamp()
    WHERE j.id = ANY(ARRAY(SELECT id FROM next))
    RETURNING j.id, j.kind, j.payload, j.priority, j.attempt, j.max_attempts, j.timeout_ms, j.lease_token, j.run_at,
              j.created_at, j.sort_key, j.trace_parent
)
SELECT * FROM claimed ORDER BY sort_key
"#
        )
    };
}

/// Claim up to $2 available jobs of queue $1 for worker $4, with a lease term of $3 milliseconds, under lease
/// token $5 (made by the worker, so it knows a claim's token before the answer arrives). A paused queue yields
/// nothing. Rows come back in claim order, so a worker starts them in that order. (`id = ANY(ARRAY(...))` keeps
/// the planner on the primary key; a join against the CTE made it hash the whole table.) `claimed_at` is
/// `clock_timestamp()`, not `now()`: `now()` is when the transaction began, which can precede the promotion that
/// made the job available, so history showed claims before `run_at`.
pub const CLAIM: &str = claim_statement!("");

/// [`CLAIM`] from `sort_key` $6 on: the index scan starts there instead of at the queue's oldest entry. The
/// entries before it are jobs already claimed; while an old transaction holds vacuum back they stay in the index,
/// dead, and a scan from the start would wade through every one of them (see `runner.rs`).
pub const CLAIM_FROM: &str = claim_statement!(" AND sort_key >= $6");

/// Settle a batch of finished attempts in one statement. Each input row names (job id, lease token) and an
/// outcome: `completed` (delete, append history), `retry` (back to scheduled at now + delay, error appended),
/// `interrupted` (like a retry due now, with the attempt refunded), or `dead` (delete, append to dead letters and
/// history). A retry whose attempts are spent becomes dead. Rows whose
/// token no longer matches (the lease was rescued and maybe re-claimed) are left alone and simply not returned:
/// that is how a stale ack is rejected.
/// $1 id, $2 token, $3 outcome, $4 retry delay ms, $5 error (jsonb, NULL on success), $6 priority aging seconds.
/// (`j.id = ANY($1)` keeps the planner on the primary key; joining on the unnested input alone made it hash the
/// whole table: 60 ms instead of 12 ms per 1,000 acks.)
pub const SETTLE: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::int8[], $5::jsonb[])
           AS t(id, token, outcome, delay_ms, error)
),
finished AS (
    DELETE FROM herald_jobs j
    USING input i
    WHERE j.id = ANY($1::int8[]) AND j.id = i.id AND j.lease_token = i.token
      AND i.outcome <> 'interrupted' AND (i.outcome <> 'retry' OR j.attempt >= j.max_attempts)
    RETURNING j.*, CASE WHEN i.outcome = 'completed' THEN 'completed' ELSE 'dead' END AS result,
              CASE WHEN i.error IS NULL THEN j.errors ELSE j.errors || jsonb_build_array(i.error) END AS all_errors,
              i.error ->> 'message' AS last_error
),
history AS (
    INSERT INTO herald_job_history (job_id, queue, kind, payload, priority, outcome, attempt, max_attempts, errors,
                                    idempotency_key, replay_of, created_at, claimed_at, request_id, run_at)
    SELECT id, queue, kind, payload, priority, result, attempt, max_attempts, all_errors, idempotency_key,
           replay_of, created_at, claimed_at, request_id, run_at
    FROM finished
),
dead AS (
    INSERT INTO herald_dead_letters (job_id, queue, kind, payload, priority, attempt, max_attempts, timeout_ms,
                                     errors, reason, created_at)
    SELECT id, queue, kind, payload, priority, attempt, max_attempts, timeout_ms, all_errors,
           coalesce(last_error, 'failed'), created_at
    FROM finished WHERE result = 'dead'
),
retried AS (
    UPDATE herald_jobs j
    SET lease_token = NULL, lease_expires_at = NULL, leased_by = NULL, claimed_at = NULL,
        scheduled = true,
        attempt = CASE WHEN i.outcome = 'interrupted' THEN j.attempt - 1 ELSE j.attempt END,
        run_at = now() + i.delay_ms * interval '1 millisecond',
        sort_key = now() + i.delay_ms * interval '1 millisecond' - make_interval(secs => j.priority * $6::float8),
        errors = j.errors || jsonb_build_array(i.error)
    FROM input i
    WHERE j.id = ANY($1::int8[]) AND j.id = i.id AND j.lease_token = i.token
      -- The first test involves the input alone, so the planner filters the input before joining (an OR mixing
      -- both tables made every flush probe the table for all its rows: 3x slower acks).
      AND i.outcome IN ('retry', 'interrupted') AND (i.outcome = 'interrupted' OR j.attempt < j.max_attempts)
    RETURNING j.id
),
wakeups AS (
    SELECT count(pg_notify('herald_jobs', '!scheduled')) AS sent FROM (SELECT 1 FROM retried LIMIT 1) r
)
SELECT id, result AS settled FROM finished
UNION ALL
SELECT id, 'retry' FROM retried WHERE (SELECT sent FROM wakeups) >= 0
"#;

/// Give claimed-but-unstarted jobs back at once (graceful shutdown, a lease term that passed before the job could
/// start, a lease reconciliation found the worker does not hold): the attempt they were charged is refunded and
/// their place in line (`sort_key`) is kept. Only rows still holding the given token change, so releasing a job
/// that was meanwhile settled or rescued does nothing. Returns the ids released. $1 id, $2 token.
pub const RELEASE: &str = r#"
WITH released AS (
    UPDATE herald_jobs j
    SET lease_token = NULL, lease_expires_at = NULL, leased_by = NULL, claimed_at = NULL, attempt = j.attempt - 1
    FROM unnest($1::int8[], $2::int8[]) AS t(id, token)
    WHERE j.id = ANY($1::int8[]) AND j.id = t.id AND j.lease_token = t.token
    RETURNING j.id, j.queue
),
wakeups AS (
    SELECT count(pg_notify('herald_jobs', queue)) AS sent FROM (SELECT DISTINCT queue FROM released) q
)
SELECT id FROM released WHERE (SELECT sent FROM wakeups) >= 0
"#;

/// Which of the jobs $1 are still in the hot table.
pub const STILL_QUEUED: &str = "SELECT id FROM herald_jobs WHERE id = ANY($1::int8[])";

/// Every lease held in the name of worker $1, as (id, token). Reads the partial index of leased rows, which is as
/// small as the fleet's capacity.
pub const LEASES_OF: &str =
    "SELECT id, lease_token FROM herald_jobs WHERE lease_token IS NOT NULL AND leased_by = $1";

/// Flip due scheduled jobs to available (at most $1), wake their queues, and report when the next one is due.
pub const PROMOTE: &str = r#"
WITH due AS (
    SELECT id FROM herald_jobs WHERE scheduled AND run_at <= now()
    ORDER BY run_at LIMIT $1
    FOR UPDATE SKIP LOCKED
),
promoted AS (
    UPDATE herald_jobs j SET scheduled = false FROM due WHERE j.id = due.id RETURNING j.queue, j.sort_key
),
wakeups AS (
    SELECT count(pg_notify('herald_jobs', w.payload)) AS sent
    FROM (SELECT queue || '@' || (floor(extract(epoch FROM min(sort_key)) * 1000000)::int8 - 1) AS payload
          FROM promoted GROUP BY queue) w
)
SELECT (SELECT count(*) FROM promoted) AS promoted,
       (SELECT sent FROM wakeups) AS wakeups,
       (SELECT min(run_at) FROM herald_jobs WHERE scheduled AND run_at > now()) AS next_run_at,
       -- Computed here, on the database's clock, so a worker whose clock runs ahead does not spin.
       (SELECT extract(epoch FROM min(run_at) - now())::float8 FROM herald_jobs WHERE scheduled AND run_at > now())
           AS next_due_in_secs
"#;

/// Return jobs whose lease expired to the queue, or to the dead letters when that was their last attempt. A lease
/// has expired when its initial term (set at claim) has passed and the worker holding it has not heartbeated
/// within $1 milliseconds (or has left the registry): a live worker always settles its jobs, because every
/// handler runs under a timeout. The attempt was counted when it was claimed; the error says what happened.
pub const RESCUE: &str = r#"
WITH expired AS (
    SELECT j.id FROM herald_jobs j
    WHERE j.lease_token IS NOT NULL AND j.lease_expires_at < now()
      AND NOT EXISTS (
          SELECT 1 FROM herald_workers w
          WHERE w.id = j.leased_by AND w.heartbeat_at > now() - $1 * interval '1 millisecond')
    LIMIT 1000
    FOR UPDATE OF j SKIP LOCKED
),
failed AS (
    SELECT j.id, j.errors || jsonb_build_array(jsonb_build_object(
               'attempt', j.attempt, 'at', now(), 'kind', 'lease_expired',
               'message', 'lease expired: the worker holding the job stopped heartbeating')) AS all_errors
    FROM herald_jobs j JOIN expired e ON e.id = j.id
),
finished AS (
    DELETE FROM herald_jobs j USING failed f
    WHERE j.id = f.id AND j.attempt >= j.max_attempts
    RETURNING j.*, f.all_errors
),
history AS (
    INSERT INTO herald_job_history (job_id, queue, kind, payload, priority, outcome, attempt, max_attempts, errors,
                                    idempotency_key, replay_of, created_at, claimed_at, request_id, run_at)
    SELECT id, queue, kind, payload, priority, 'dead', attempt, max_attempts, all_errors, idempotency_key,
           replay_of, created_at, claimed_at, request_id, run_at
    FROM finished
),
dead AS (
    INSERT INTO herald_dead_letters (job_id, queue, kind, payload, priority, attempt, max_attempts, timeout_ms,
                                     errors, reason, created_at)
    SELECT id, queue, kind, payload, priority, attempt, max_attempts, timeout_ms, all_errors,
           'lease expired on the last attempt', created_at
    FROM finished
),
returned AS (
    UPDATE herald_jobs j
    SET lease_token = NULL, lease_expires_at = NULL, leased_by = NULL, claimed_at = NULL, errors = f.all_errors
    FROM failed f
    WHERE j.id = f.id AND j.attempt < j.max_attempts
    RETURNING j.queue
),
wakeups AS (
    SELECT count(pg_notify('herald_jobs', queue)) AS sent FROM (SELECT DISTINCT queue FROM returned) q
)
SELECT (SELECT count(*) FROM returned) AS returned, (SELECT count(*) FROM finished) AS dead,
       (SELECT sent FROM wakeups) AS wakeups
"#;

/// Register or refresh this worker process. Its heartbeat is what keeps its leases alive (see [`RESCUE`]): no
/// job row is touched, so a heartbeat never contends with claims and acks for row locks.
/// $1 worker id, $2 hostname, $3 pid, $4 queues, $5 concurrency.
/// `GREATEST`: a heartbeat the worker gave up on may still commit after a newer one (both queued behind one lock);
/// it must not move the time back, because the worker's liveness proof (`worker/liveness.rs`) counts on it.
pub const HEARTBEAT: &str = r#"
INSERT INTO herald_workers (id, hostname, pid, queues, concurrency)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = GREATEST(herald_workers.heartbeat_at, now())
"#;

/// Forget workers that stopped heartbeating long ago ($1 milliseconds).
pub const REAP_WORKERS: &str =
    "DELETE FROM herald_workers WHERE heartbeat_at < now() - $1 * interval '1 millisecond'";

/// A worker leaving cleanly removes its row.
pub const DEREGISTER_WORKER: &str = "DELETE FROM herald_workers WHERE id = $1";

/// The live fleet.
pub const LIST_WORKERS: &str = r#"
SELECT id, hostname, pid, queues, concurrency, started_at, heartbeat_at
FROM herald_workers ORDER BY started_at
"#;

/// Pause or resume a queue fleet-wide; resuming wakes its workers.
pub const SET_PAUSED: &str = r#"
WITH previous AS (
    SELECT paused FROM herald_queues WHERE name = $1
), upsert AS (
    INSERT INTO herald_queues (name, paused) VALUES ($1, $2)
    ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()
    RETURNING name, paused
)
SELECT name, paused, CASE WHEN NOT paused THEN pg_notify('herald_jobs', name) END IS NULL AS quiet,
       coalesce((SELECT paused FROM previous), false) <> $2 AS changed
FROM upsert
"#;

/// Depth and state of every queue that has jobs or settings.
pub const QUEUE_STATS: &str = r#"
WITH stats AS (
    SELECT queue,
           count(*) FILTER (WHERE lease_token IS NULL AND NOT scheduled) AS available,
           count(*) FILTER (WHERE lease_token IS NOT NULL) AS running,
           count(*) FILTER (WHERE scheduled) AS scheduled,
           min(run_at) FILTER (WHERE lease_token IS NULL AND NOT scheduled) AS oldest_available_at
    FROM herald_jobs GROUP BY queue
)
SELECT coalesce(s.queue, q.name) AS name, coalesce(q.paused, false) AS paused,
       coalesce(s.available, 0) AS available, coalesce(s.running, 0) AS running,
       coalesce(s.scheduled, 0) AS scheduled,
       extract(epoch FROM now() - s.oldest_available_at)::float8 AS oldest_age_secs
FROM stats s FULL JOIN herald_queues q ON q.name = s.queue
ORDER BY 1
"#;

/// A job still in the hot table.
pub const LIVE_JOB: &str = r#"
SELECT id, queue, kind, payload, priority, run_at, scheduled, attempt, max_attempts, errors,
       lease_token IS NOT NULL AS running, claimed_at, created_at, idempotency_key, request_id
FROM herald_jobs WHERE id = $1
"#;

/// A finished job's latest history row.
pub const FINISHED_JOB: &str = r#"
SELECT job_id, queue, kind, payload, priority, outcome, attempt, max_attempts, errors, created_at, claimed_at,
       finished_at, idempotency_key, request_id
FROM herald_job_history WHERE job_id = $1 ORDER BY finished_at DESC LIMIT 1
"#;

/// Cancel the jobs among $1 that are not running: each leaves the hot table and its history says `cancelled`.
/// A leased job is left alone: a claim that locked it first made it leased, and the re-check after the lock
/// wait sees that. Rows are locked in id order, so two cancellations sharing jobs cannot deadlock each other
/// (claims and promotions skip locked rows). Returns the ids cancelled.
pub const CANCEL: &str = r#"
WITH doomed AS (
    SELECT id FROM herald_jobs WHERE id = ANY($1::int8[]) AND lease_token IS NULL
    ORDER BY id
    FOR UPDATE
),
gone AS (
    DELETE FROM herald_jobs j WHERE j.id = ANY(ARRAY(SELECT id FROM doomed)) RETURNING j.*
)
INSERT INTO herald_job_history (job_id, queue, kind, payload, priority, outcome, attempt, max_attempts, errors,
                                idempotency_key, replay_of, created_at, claimed_at, request_id, run_at)
SELECT id, queue, kind, payload, priority, 'cancelled', attempt, max_attempts, errors, idempotency_key, replay_of,
       created_at, claimed_at, request_id, run_at
FROM gone
RETURNING job_id
"#;

/// Whether a job is in the hot table and leased (to explain why it could not be cancelled).
pub const JOB_RUNNING: &str = "SELECT lease_token IS NOT NULL FROM herald_jobs WHERE id = $1";

/// The filter shared by listing, replaying and purging dead letters. Placeholders $1..$5:
/// id, queue, kind, failed at or after, failed before.
macro_rules! dead_letter_filter {
    () => {
        "($1::int8 IS NULL OR d.id = $1) AND ($2::text IS NULL OR d.queue = $2) AND \
         ($3::text IS NULL OR d.kind = $3) AND ($4::timestamptz IS NULL OR d.failed_at >= $4) AND \
         ($5::timestamptz IS NULL OR d.failed_at < $5)"
    };
}

/// Dead letters matching the filter, newest first, after cursor $6 (an id; NULL for the first page), at most $7.
pub const LIST_DEAD_LETTERS: &str = concat!(
    "SELECT d.id, d.job_id, d.queue, d.kind, d.payload, d.priority, d.attempt, d.max_attempts, d.errors, d.reason, \
     d.created_at, d.failed_at, d.replayed_at, d.replayed_as \
     FROM herald_dead_letters d WHERE ",
    dead_letter_filter!(),
    " AND ($6::int8 IS NULL OR d.id < $6) ORDER BY d.id DESC LIMIT $7"
);

/// How many matching dead letters are not replayed yet (what a replay of the filter would take).
pub const COUNT_REPLAYABLE_DEAD_LETTERS: &str = concat!(
    "SELECT count(*) FROM herald_dead_letters d WHERE ",
    dead_letter_filter!(),
    " AND d.replayed_as IS NULL"
);

/// Every matching dead letter, replayed or not: what a purge with the same filter deletes.
pub const COUNT_DEAD_LETTERS: &str = concat!(
    "SELECT count(*) FROM herald_dead_letters d WHERE ",
    dead_letter_filter!()
);

/// Re-enqueue every matching dead letter not replayed yet, as a new job with its attempts reset, and link the two.
/// $6 priority aging seconds. Returns (dead letter id, new job id, queue).
pub const REPLAY_DEAD_LETTERS: &str = concat!(
    "WITH picked AS (SELECT d.* FROM herald_dead_letters d WHERE ",
    dead_letter_filter!(),
    " AND d.replayed_as IS NULL FOR UPDATE SKIP LOCKED), \
     replayed AS ( \
        INSERT INTO herald_jobs (queue, kind, payload, priority, run_at, sort_key, max_attempts, timeout_ms, replay_of) \
        SELECT queue, kind, payload, priority, now(), now() - make_interval(secs => priority * $6::float8), \
               max_attempts, timeout_ms, id \
        FROM picked RETURNING id, replay_of, queue), \
     linked AS ( \
        UPDATE herald_dead_letters d SET replayed_at = now(), replayed_as = r.id \
        FROM replayed r WHERE d.id = r.replay_of RETURNING d.id), \
     wakeups AS (SELECT count(pg_notify('herald_jobs', queue)) AS sent FROM (SELECT DISTINCT queue FROM replayed) q) \
     SELECT r.replay_of AS dead_letter_id, r.id AS job_id, (SELECT sent FROM wakeups) AS wakeups, \
            (SELECT count(*) FROM linked) AS linked \
     FROM replayed r ORDER BY r.replay_of"
);

/// Delete every matching dead letter. Returns how many.
pub const PURGE_DEAD_LETTERS: &str = concat!(
    "WITH purged AS (DELETE FROM herald_dead_letters d WHERE ",
    dead_letter_filter!(),
    " RETURNING 1) SELECT count(*) FROM purged"
);

/// Live worker processes serving queue $1, whose heartbeat is newer than $2 milliseconds (the channel layer divides
/// each provider's rate among them).
pub const LIVE_WORKERS_SERVING: &str = r#"
SELECT count(*) FROM herald_workers
WHERE $1 = ANY (queues) AND heartbeat_at > now() - $2 * interval '1 millisecond'
"#;

/// Jobs waiting or running per queue, for the queues in $1 (the bridge's backpressure).
pub const QUEUE_DEPTHS: &str = r#"
SELECT queue, count(*) AS depth FROM herald_jobs WHERE queue = ANY($1) GROUP BY queue
"#;

/// The jobs that finished in [$1, $2) per queue and kind, for the clock's daily rollups: counts by outcome, the
/// jobs that needed more than one attempt, all attempts, and pickup latency percentiles (claim of the last
/// attempt minus its due time, in milliseconds; completed and dead jobs that were claimed). At most $3 groups.
/// The range scan uses the BRIN index on `finished_at`.
pub const JOB_DAYS: &str = r#"
SELECT queue, kind, completed + dead AS executed, completed, dead, cancelled, retried, attempts,
       pickup[1] AS pickup_p50_ms, pickup[2] AS pickup_p95_ms, pickup[3] AS pickup_p99_ms
FROM (
    SELECT queue, kind,
           count(*) FILTER (WHERE outcome = 'completed') AS completed,
           count(*) FILTER (WHERE outcome = 'dead') AS dead,
           count(*) FILTER (WHERE outcome = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE attempt > 1) AS retried,
           coalesce(sum(attempt), 0)::int8 AS attempts,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[])
               WITHIN GROUP (ORDER BY (extract(epoch FROM claimed_at - run_at) * 1000)::float8)
               FILTER (WHERE outcome <> 'cancelled' AND claimed_at IS NOT NULL AND run_at IS NOT NULL) AS pickup
    FROM herald_job_history
    WHERE finished_at >= $1 AND finished_at < $2
    GROUP BY queue, kind
) day
ORDER BY queue, kind
LIMIT $3
"#;
