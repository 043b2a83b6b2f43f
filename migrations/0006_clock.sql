-- The clock's schedules. Their definitions live in the configuration (`[[clock.schedules]]` and the built-in
-- maintenance schedules); this table holds what every clock of the fleet must agree on: how far each schedule
-- has fired, and whether it is paused.

CREATE TABLE herald_schedules (
    name            text        PRIMARY KEY,
    paused          boolean     NOT NULL DEFAULT false,
    -- The latest tick claimed: fired, or passed over (missed while no clock ran, or paused). A clock fires only
    -- ticks after it, in the transaction that moves it forward, so a tick fires once however many clocks see it.
    last_tick       timestamptz NOT NULL,
    -- The latest tick that fired, when, and what it made (a job, or a workflow run).
    last_fired_tick timestamptz,
    last_fired_at   timestamptz,
    last_job_id     bigint,
    last_run_id     bigint,
    -- Why the last tick could not fire (an unknown workflow, a payload its trigger refuses); NULL once one fires.
    last_error      text,
    -- Ticks passed over so far (missed with `missed = "skip"`, or paused).
    passed_over     bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
