-- Queue depth per queue, computed once per fleet by the process that holds the queue-stats lock (an advisory
-- lock; see src/queue/stats.rs) and read by every process for its metrics, so no scrape ever counts the jobs.
-- A queue that empties keeps a row of zeros for an hour (a depth of 0 is a value an autoscaler needs), then goes.
CREATE TABLE herald_queue_stats (
    queue               text        PRIMARY KEY,
    available           bigint      NOT NULL,
    scheduled           bigint      NOT NULL,
    running             bigint      NOT NULL,
    -- when the oldest available job became due (NULL: none available)
    oldest_available_at timestamptz,
    computed_at         timestamptz NOT NULL,
    -- the process that computed the row (host:pid), for `herald status` and to see a leader change
    computed_by         text        NOT NULL,
    -- the last time the queue held any job
    last_seen_at        timestamptz NOT NULL
);
