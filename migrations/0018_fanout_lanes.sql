-- Fan-out lanes: a large topic is split into key ranges ("lanes") whose pages are written in parallel, each by
-- its own chain of fan-out jobs (src/workflow/fanout.rs). A page holds its lane row's lock, not the fan-out's, so
-- lanes write at once; a lane ending takes the fan-out's lock for a moment, and the last lane completes it.
--
-- A lane covers the members after `cursor` (exclusive; NULL: from the topic's first member) up to `upper`
-- (inclusive; NULL: to its last). The lanes of one fan-out partition the topic's key space, and a lane's cursor
-- moves in the transaction that wrote the page, so every member's run is made exactly once.
CREATE TABLE herald_fanout_lanes (
    fanout_id  bigint      NOT NULL REFERENCES herald_fanouts (id) ON DELETE CASCADE,
    lane       integer     NOT NULL CHECK (lane >= 0),
    cursor     text,
    upper      text,
    runs       bigint      NOT NULL DEFAULT 0,
    done       boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fanout_id, lane)
);

-- Every fan-out so far had one cursor: it becomes lane 0, so a fan-out running across the upgrade resumes where
-- it was (its queued job names no lane, which reads as lane 0).
INSERT INTO herald_fanout_lanes (fanout_id, lane, cursor, runs, done)
SELECT id, 0, cursor, runs, status <> 'running' FROM herald_fanouts;

-- `herald_fanouts.cursor` and `.runs` are no longer read or written (progress is the lanes'). They stay for one
-- release: a process older than lanes, still running during a rolling deploy, reads them.
