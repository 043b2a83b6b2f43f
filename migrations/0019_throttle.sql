-- Throttle nodes (src/workflow/throttle.rs): each continuation a throttle node lets through is a grant, held by
-- the node's step (run, epoch, node) so a retried job finds its own grant instead of taking a second one. `key` is
-- the SHA-256 (hex) of the throttle's key, never the key itself (it may be an address from trigger data). A grant
-- may be ahead of now: a slot reserved by an `on_limit: delay` node. Takers of one key queue on a
-- transaction-scoped advisory lock, so no two take the last slot of a window.
CREATE TABLE herald_throttle_grants (
    run_id     bigint      NOT NULL,
    epoch      integer     NOT NULL,
    node_id    text        NOT NULL,
    key        text        NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, epoch, node_id)
);
CREATE INDEX herald_throttle_grants_key ON herald_throttle_grants (key, granted_at);

-- A removed run (retention) takes its grants, as it takes its steps and deliveries (0014_run_children.sql).
CREATE FUNCTION herald_remove_run_throttle_grants() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM herald_throttle_grants g USING removed r WHERE g.run_id = r.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER herald_runs_remove_throttle_grants AFTER DELETE ON herald_runs
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION herald_remove_run_throttle_grants();
