-- Workflows: versioned definitions, runs (one row each), their steps (one row per node execution) and the
-- events that wait-for-events nodes aggregate.

-- A definition version is immutable: the same (name, version) must always hold the same content (digest).
CREATE TABLE herald_workflows (
    name        text        NOT NULL,
    version     integer     NOT NULL CHECK (version > 0),
    definition  jsonb       NOT NULL,
    digest      text        NOT NULL,
    source      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE herald_runs (
    id              bigserial   PRIMARY KEY,
    workflow        text        NOT NULL,
    version         integer     NOT NULL,
    status          text        NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    -- Bumped by a retry: steps of an earlier epoch are history, and their late jobs are ignored.
    epoch           integer     NOT NULL DEFAULT 1,
    -- Steps of this epoch not finished yet; the run completes when it reaches 0.
    pending         integer     NOT NULL DEFAULT 1,
    context         jsonb       NOT NULL,
    idempotency_key text,
    failed_node     text,
    error           text,
    request_id      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    FOREIGN KEY (workflow, version) REFERENCES herald_workflows (name, version)
);
CREATE UNIQUE INDEX herald_runs_idempotency ON herald_runs (workflow, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX herald_runs_by_workflow ON herald_runs (workflow, status, id);
CREATE INDEX herald_runs_by_status ON herald_runs (status, id);

CREATE TABLE herald_run_steps (
    run_id      bigint      NOT NULL REFERENCES herald_runs (id) ON DELETE CASCADE,
    epoch       integer     NOT NULL,
    node_id     text        NOT NULL,
    status      text        NOT NULL
        CHECK (status IN ('pending', 'running', 'waiting', 'completed', 'failed', 'cancelled')),
    -- What the node decided: sent, then, else, case_0, default, elapsed, satisfied, timed_out, ...
    outcome     text,
    output      jsonb,
    error       text,
    attempts    integer     NOT NULL DEFAULT 0,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (run_id, epoch, node_id)
);

-- Events for wait-for-events nodes. event_id makes a redelivered event count once.
CREATE TABLE herald_events (
    id          bigserial   PRIMARY KEY,
    event_id    text        NOT NULL UNIQUE,
    name        text        NOT NULL,
    key         text        NOT NULL,
    payload     jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX herald_events_by_key ON herald_events (key, name, received_at);

-- A wait-for-events node that is waiting: what it waits for, and since when events count.
CREATE TABLE herald_waits (
    run_id      bigint      NOT NULL,
    epoch       integer     NOT NULL,
    node_id     text        NOT NULL,
    key         text        NOT NULL,
    events      text[]      NOT NULL,
    mode        text        NOT NULL CHECK (mode IN ('all', 'any', 'at_least')),
    needed      integer     NOT NULL CHECK (needed > 0),
    since       timestamptz NOT NULL,
    deadline    timestamptz,
    status      text        NOT NULL CHECK (status IN ('waiting', 'satisfied', 'timed_out', 'cancelled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    PRIMARY KEY (run_id, epoch, node_id),
    FOREIGN KEY (run_id, epoch, node_id) REFERENCES herald_run_steps ON DELETE CASCADE
);
CREATE INDEX herald_waits_waiting ON herald_waits (key) WHERE status = 'waiting';
