-- The audit log: one row per operator action (keys created or revoked, queues and schedules paused or resumed,
-- dead letters replayed or deleted, suppressions changed, workflows saved, runs cancelled or retried), written in
-- the same transaction as the action itself, so a committed action always has its row and a rolled-back one
-- never does. Append-only: herald never updates these rows, and retention does not touch them.
CREATE TABLE herald_audit_log (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    -- `key`: an API key (actor_key_id and its name); `cli`: the herald command line (the OS user);
    -- `herald`: herald itself (the workflow sync at start, `herald up`'s development key).
    actor_kind   text        NOT NULL CHECK (actor_kind IN ('key', 'cli', 'herald')),
    actor_key_id bigint,
    actor_name   text        NOT NULL,
    -- e.g. `queue.pause`, `dead_letter.replay`, `key.create`
    action       text        NOT NULL,
    -- what the action was applied to: a queue name, a dead-letter id, `email:ann@example.com`, ...
    target       text        NOT NULL,
    request_id   text,
    details      jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX herald_audit_log_action ON herald_audit_log (action, id);

-- When a key last authenticated a request (refreshed at most once per key-cache period per API process).
ALTER TABLE herald_api_keys ADD COLUMN last_used_at timestamptz;
