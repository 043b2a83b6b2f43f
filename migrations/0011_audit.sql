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
    -- the client's X-Request-Id (or the one the API generated): a correlation id, chosen by the caller
    request_id   text,
    details      jsonb       NOT NULL DEFAULT '{}',
    -- what the database itself saw, which no caller chooses: the PostgreSQL role and the client address of the
    -- connection that wrote the row (NULL over a Unix socket)
    db_user      text        NOT NULL DEFAULT session_user,
    db_client    inet                 DEFAULT inet_client_addr()
);
-- The filters of GET /v1/audit and `herald audit`, each with the id order the pages follow.
CREATE INDEX herald_audit_log_action ON herald_audit_log (action, id);
CREATE INDEX herald_audit_log_key ON herald_audit_log (actor_key_id, id) WHERE actor_key_id IS NOT NULL;
CREATE INDEX herald_audit_log_at ON herald_audit_log USING brin (at);

-- Append-only, by the database: herald never changes or removes a row, and neither can a statement sent by
-- mistake. (The table's owner can still drop the trigger, or the table: this guards against accidents, not
-- against the database's administrator.)
CREATE FUNCTION herald_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'herald_audit_log is append-only';
END $$;
CREATE TRIGGER herald_audit_log_append_only BEFORE UPDATE OR DELETE ON herald_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION herald_audit_log_append_only();

-- When a key last authenticated a request (refreshed at most once per key-cache period per API process).
ALTER TABLE herald_api_keys ADD COLUMN last_used_at timestamptz;

-- `GET /metrics` took the `read` scope before the `metrics` scope existed: keys that could scrape keep doing so
-- (a read key sees more than /metrics anyway). `POST /v1/events` took `enqueue`; that right is deliberately *not*
-- carried over, since an event can complete any user's wait: a key that sends events needs a new key with the
-- `events` scope (docs/security.md, "Upgrading").
UPDATE herald_api_keys SET scopes = array_append(scopes, 'metrics')
WHERE 'read' = ANY (scopes) AND NOT 'metrics' = ANY (scopes);
