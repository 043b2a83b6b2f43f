-- herald's queue engine: the hot table, its history, dead letters, queues and the worker registry.
--
-- Design notes (see docs/architecture.md):
-- * `herald_jobs` holds only jobs that are waiting or running. A finished job is deleted and its outcome appended
--   to `herald_job_history`, so the table the claim query scans stays small and no row is ever updated to
--   "completed".
-- * A job is available when `lease_token IS NULL`; claiming sets a lease token (shared by one claim batch, taken
--   from a sequence so it never repeats) and a lease term. The lease stays valid while the worker in `leased_by`
--   heartbeats; after the term, a silent worker's jobs are rescued. Every ack names the token it was given: an ack from a
--   worker whose lease was taken away matches no row and is rejected.
-- * A job enqueued for later (or waiting out a retry backoff) is `scheduled`; a promoter in every worker process
--   flips due jobs to available and wakes the workers, on a timer set to the next due time.
-- * `sort_key` is `run_at` moved earlier by `priority` steps of the configured aging interval. Claiming orders by
--   it, so a more urgent job jumps the line, yet a less urgent one that has waited long enough is not starved.

CREATE SEQUENCE herald_lease_token_seq;

CREATE TABLE herald_jobs (
    id               bigserial   PRIMARY KEY,
    queue            text        NOT NULL,
    kind             text        NOT NULL,
    payload          jsonb       NOT NULL,
    priority         smallint    NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- true while run_at is in the future; the promoter flips it when the job falls due.
    scheduled        boolean     NOT NULL DEFAULT false,
    sort_key         timestamptz NOT NULL,
    attempt          integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    timeout_ms       integer     NOT NULL,
    idempotency_key  text,
    errors           jsonb       NOT NULL DEFAULT '[]',
    lease_token      bigint,
    lease_expires_at timestamptz,
    leased_by        uuid,
    claimed_at       timestamptz,
    replay_of        bigint,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- The claim index: only jobs that are due and not leased, in claim order. Future jobs stay out of it (they are
-- `scheduled`), so an empty claim never wades through a backlog of reminders due next month.
CREATE INDEX herald_jobs_available ON herald_jobs (queue, sort_key) WHERE lease_token IS NULL AND NOT scheduled;
-- The promoter's index: scheduled jobs by due time.
CREATE INDEX herald_jobs_scheduled ON herald_jobs (run_at) WHERE scheduled;
-- Leased jobs are few (in flight only); the rescuer scans this small index.
CREATE INDEX herald_jobs_leased ON herald_jobs (lease_expires_at) WHERE lease_token IS NOT NULL;

-- Every job is inserted, updated once per claim and deleted: let autovacuum keep up with the churn (the default
-- scale factor of 20% lets dead tuples pile up on a busy queue).
ALTER TABLE herald_jobs SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
                             autovacuum_vacuum_cost_delay = 0);

-- Idempotency keys outlive the hot row (a finished job's key still answers with its id).
CREATE TABLE herald_idempotency_keys (
    key        text        PRIMARY KEY,
    job_id     bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per finished job. Deliberately no unique constraint on job_id: the tests count rows per job to prove
-- that no job is ever completed twice.
CREATE TABLE herald_job_history (
    job_id          bigint      NOT NULL,
    queue           text        NOT NULL,
    kind            text        NOT NULL,
    payload         jsonb       NOT NULL,
    priority        smallint    NOT NULL,
    outcome         text        NOT NULL CHECK (outcome IN ('completed', 'cancelled', 'dead')),
    attempt         integer     NOT NULL,
    max_attempts    integer     NOT NULL,
    errors          jsonb       NOT NULL,
    idempotency_key text,
    replay_of       bigint,
    created_at      timestamptz NOT NULL,
    claimed_at      timestamptz,
    finished_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX herald_job_history_job_id ON herald_job_history (job_id);
-- Rows arrive in finished_at order, so a BRIN index serves retention's range scans at a fraction of a btree's
-- cost on the ack path.
CREATE INDEX herald_job_history_finished_at ON herald_job_history USING brin (finished_at);

CREATE TABLE herald_dead_letters (
    id              bigserial   PRIMARY KEY,
    job_id          bigint      NOT NULL,
    queue           text        NOT NULL,
    kind            text        NOT NULL,
    payload         jsonb       NOT NULL,
    priority        smallint    NOT NULL,
    attempt         integer     NOT NULL,
    max_attempts    integer     NOT NULL,
    timeout_ms      integer     NOT NULL,
    errors          jsonb       NOT NULL,
    reason          text        NOT NULL,
    created_at      timestamptz NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz,
    replayed_as     bigint
);
CREATE INDEX herald_dead_letters_queue_kind ON herald_dead_letters (queue, kind, failed_at);

-- Fleet-wide queue settings. A queue needs no row until someone pauses it.
CREATE TABLE herald_queues (
    name       text        PRIMARY KEY,
    paused     boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per worker process, refreshed by its heartbeat.
CREATE TABLE herald_workers (
    id           uuid        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    queues       text[]      NOT NULL,
    concurrency  integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
