-- herald_job_history becomes a table partitioned by `finished_at` (range partitions, one day wide by default),
-- so retention removes a day of history by archiving it and then dropping its partition: no row-by-row DELETE,
-- no dead tuples, no vacuum, no WAL per row (see docs/operations.md, "Retention and archives").
--
-- * Partitions are created ahead of time by every `herald clock` (`[clock.partitions]`), named
--   `herald_job_history_p<start, UTC, YYYYMMDD_HHMMSS>`.
-- * `herald_job_history_default` takes any row no partition covers (a fleet running without a clock, or a clock
--   down for longer than the partitions it made ahead), so the ack path never fails for want of a partition;
--   retention removes its old rows in bounded batches.
-- * An existing installation's rows stay where they are: the old table becomes the partition
--   `herald_job_history_before_0010` for every time before the next UTC midnight (attaching it reads it once, to
--   check that bound). Retention removes its rows in bounded batches, then drops it once it is empty and past the
--   cutoff. A new installation's old table is empty and is simply dropped.
-- * The indexes keep their names and definitions (a btree on job_id, a BRIN on finished_at that summarizes as
--   ranges fill); each partition gets its own copy.
DO $$
DECLARE
    boundary timestamptz;
BEGIN
    ALTER TABLE herald_job_history RENAME TO herald_job_history_before_0010;
    ALTER INDEX herald_job_history_job_id RENAME TO herald_job_history_before_0010_job_id;
    ALTER INDEX herald_job_history_finished_at RENAME TO herald_job_history_before_0010_finished_at;

    CREATE TABLE herald_job_history (LIKE herald_job_history_before_0010 INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
        PARTITION BY RANGE (finished_at);
    CREATE INDEX herald_job_history_job_id ON herald_job_history (job_id);
    CREATE INDEX herald_job_history_finished_at ON herald_job_history USING brin (finished_at)
        WITH (autosummarize = on);
    CREATE TABLE herald_job_history_default PARTITION OF herald_job_history DEFAULT;

    IF EXISTS (SELECT 1 FROM herald_job_history_before_0010) THEN
        SELECT greatest(date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day',
                        date_trunc('day', max(finished_at) AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC'
        INTO boundary FROM herald_job_history_before_0010;
        EXECUTE format('ALTER TABLE herald_job_history ATTACH PARTITION herald_job_history_before_0010 '
                       'FOR VALUES FROM (MINVALUE) TO (%L)', boundary);
    ELSE
        DROP TABLE herald_job_history_before_0010;
    END IF;
END
$$;
