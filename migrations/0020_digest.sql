-- Digest nodes (src/workflow/digest.rs): the runs that reach a digest node with one key are collected into a window;
-- when it closes, one of them (the window's owner) continues with the batch and the rest end there.
--
-- A window is open while `closed_at` is NULL and `closes_at` is ahead; arrivals and the close take the key's
-- transaction-scoped advisory lock, so at most one window per key is open and no arrival joins a window after its
-- close has read the batch. `key` is the SHA-256 (hex) of the digest's key, never the key itself. `owner_*` is the
-- step whose scheduled `resume` job closes the window (NULL until one: with `send_first`, the opening event goes
-- on alone and the next one becomes the owner).
CREATE TABLE herald_digest_windows (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         text        NOT NULL,
    opened_at   timestamptz NOT NULL DEFAULT statement_timestamp(),
    closes_at   timestamptz NOT NULL,
    closed_at   timestamptz,
    owner_run   bigint,
    owner_epoch integer,
    owner_node  text,
    -- Events batched so far (the `send_first` event is not one of them).
    batched     integer     NOT NULL DEFAULT 0
);
CREATE INDEX herald_digest_windows_open ON herald_digest_windows (key, closes_at) WHERE closed_at IS NULL;

-- One row per step that reached a digest node: which window it joined and as what, so a retried attempt answers
-- the same and never joins twice. `event` (the run's trigger data) is kept for the first `keep` events of a window
-- only; `seq` is the event's place in its window (0: a `send_first` event, then 1, 2, ...).
CREATE TABLE herald_digest_entries (
    run_id     bigint      NOT NULL,
    epoch      integer     NOT NULL,
    node_id    text        NOT NULL,
    window_id  bigint      NOT NULL REFERENCES herald_digest_windows (id) ON DELETE CASCADE,
    role       text        NOT NULL CHECK (role IN ('first', 'owner', 'batched')),
    seq        integer     NOT NULL,
    arrived_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    event      jsonb,
    PRIMARY KEY (run_id, epoch, node_id)
);
CREATE INDEX herald_digest_entries_window ON herald_digest_entries (window_id, seq);

-- A removed run (retention) takes its entries, and a finished window left with no entry goes with its last one.
CREATE FUNCTION herald_remove_run_digest_entries() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    touched bigint[];
BEGIN
    WITH gone AS (
        DELETE FROM herald_digest_entries e USING removed r WHERE e.run_id = r.id RETURNING e.window_id
    )
    SELECT array_agg(DISTINCT window_id) INTO touched FROM gone;
    -- A second statement: it sees the entries the first one removed as gone. Only windows no arrival can join
    -- any more go: closed ones, and `send_first` windows no second event reached.
    DELETE FROM herald_digest_windows w
    WHERE w.id = ANY (touched)
      AND (w.closed_at IS NOT NULL OR (w.batched = 0 AND w.owner_run IS NULL AND w.closes_at < now()))
      AND NOT EXISTS (SELECT 1 FROM herald_digest_entries e WHERE e.window_id = w.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER herald_runs_remove_digest_entries AFTER DELETE ON herald_runs
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION herald_remove_run_digest_entries();
