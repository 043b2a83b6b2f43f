-- Daily rollups (owned by the clock): per day, counts and latency percentiles computed from the raw rows of the
-- queue, the workflows and the channels, kept much longer than the raw rows (clock.rollups.keep_days). A day is
-- computed by deleting its rows and inserting fresh ones in one transaction, so recomputing it is harmless.
-- Which day a raw row belongs to follows clock.rollups.timezone; `herald_rollup_days` records the bounds used.

-- Two facts the raw rows did not keep, added where their owners write them:
-- * herald_job_history.run_at: when the job's last attempt was due. Pickup latency is claimed_at - run_at;
--   created_at would count a job's planned delay (a workflow timer, a retry's backoff) as waiting to be picked up.
--   NULL on rows finished before this migration (they give no pickup latency).
ALTER TABLE herald_job_history ADD COLUMN run_at timestamptz;
-- * herald_deliveries.workflow and triggered_at: the run's workflow and the time it was triggered, copied when the
--   delivery is created, so counts per workflow and the trigger -> provider accept latency come from the
--   deliveries alone. NULL on deliveries created before this migration (rolled up under workflow '').
ALTER TABLE herald_deliveries ADD COLUMN workflow text, ADD COLUMN triggered_at timestamptz;

-- The days computed: the time zone and the instants that bounded each, and when it was last computed.
CREATE TABLE herald_rollup_days (
    day         date        PRIMARY KEY,
    timezone    text        NOT NULL,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now()
);

-- Finished jobs per queue and kind, by the day they finished (herald_job_history.finished_at).
CREATE TABLE herald_rollup_jobs (
    day           date             NOT NULL,
    queue         text             NOT NULL,
    kind          text             NOT NULL,
    -- Jobs whose handler ran to an end: completed + dead.
    executed      bigint           NOT NULL,
    completed     bigint           NOT NULL,
    -- Dead-lettered (attempts spent, a permanent error, or the lease lost on the last attempt).
    dead          bigint           NOT NULL,
    cancelled     bigint           NOT NULL,
    -- Jobs that needed more than one attempt, and the attempts all the day's jobs made.
    retried       bigint           NOT NULL,
    attempts      bigint           NOT NULL,
    -- Claim time of the last attempt minus the time it was due, in milliseconds (completed and dead jobs).
    pickup_p50_ms double precision,
    pickup_p95_ms double precision,
    pickup_p99_ms double precision,
    PRIMARY KEY (day, queue, kind)
);

-- Runs per workflow: started that day (created_at), and finished that day (finished_at) by final status.
CREATE TABLE herald_rollup_runs (
    day             date             NOT NULL,
    workflow        text             NOT NULL,
    started         bigint           NOT NULL,
    completed       bigint           NOT NULL,
    failed          bigint           NOT NULL,
    cancelled       bigint           NOT NULL,
    -- finished_at - created_at of the runs that completed that day, in milliseconds.
    duration_p50_ms double precision,
    duration_p95_ms double precision,
    duration_p99_ms double precision,
    PRIMARY KEY (day, workflow)
);

-- Steps (node executions) per workflow and node kind (trigger, action, condition, branch, transform, delay,
-- wait_for_events; from the run's definition version), by the day they finished.
CREATE TABLE herald_rollup_steps (
    day             date             NOT NULL,
    workflow        text             NOT NULL,
    node_kind       text             NOT NULL,
    completed       bigint           NOT NULL,
    failed          bigint           NOT NULL,
    cancelled       bigint           NOT NULL,
    -- Steps that needed more than one attempt.
    retried         bigint           NOT NULL,
    -- finished_at - started_at, in milliseconds (a delay or a wait counts its waiting).
    duration_p50_ms double precision,
    duration_p95_ms double precision,
    duration_p99_ms double precision,
    PRIMARY KEY (day, workflow, node_kind)
);

-- Deliveries per workflow, channel and provider ('' when none: suppressed before any call, or created before
-- the workflow was recorded), by the day they were created, counted by their status when the day was computed.
CREATE TABLE herald_rollup_deliveries (
    day            date             NOT NULL,
    workflow       text             NOT NULL,
    channel        text             NOT NULL,
    provider       text             NOT NULL,
    deliveries     bigint           NOT NULL,
    -- Deliveries a provider accepted (whatever their status now: sent, delivered or bounced).
    accepted       bigint           NOT NULL,
    queued         bigint           NOT NULL,
    sending        bigint           NOT NULL,
    sent           bigint           NOT NULL,
    delivered      bigint           NOT NULL,
    bounced        bigint           NOT NULL,
    failed         bigint           NOT NULL,
    suppressed     bigint           NOT NULL,
    unknown        bigint           NOT NULL,
    -- The provider's acceptance minus the run's trigger, in milliseconds.
    accept_p50_ms  double precision,
    accept_p95_ms  double precision,
    accept_p99_ms  double precision,
    PRIMARY KEY (day, workflow, channel, provider)
);
