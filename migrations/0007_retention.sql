-- Retention (src/clock/retention): every data set is read and removed by ranges of its time column, so each
-- needs an index that range scans can use. Append-only tables with heavy insert traffic get BRIN indexes (a
-- few pages, nearly free on the insert path; herald_job_history has one since 0001); tables whose rows change
-- or arrive out of time order, or that are small, get btrees.

-- Finished runs by finish time (running runs have none, and are not indexed).
CREATE INDEX herald_runs_finished_at ON herald_runs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX herald_events_received_at ON herald_events USING brin (received_at) WITH (autosummarize = on);
CREATE INDEX herald_callback_events_received_at ON herald_callback_events USING brin (received_at)
    WITH (autosummarize = on);
-- A BRIN range that is not summarized matches every scan, so pages appended since the last vacuum are read by
-- each range query: summarize each range as soon as it is full (retention also summarizes before its scans).
ALTER INDEX herald_job_history_finished_at SET (autosummarize = on);
CREATE INDEX herald_dead_letters_failed_at ON herald_dead_letters (failed_at);
CREATE INDEX herald_bridge_dead_letters_created_at ON herald_bridge_dead_letters (created_at);
-- Keys are deleted after their TTL and their space reused by new keys, which would blur a BRIN index's ranges.
CREATE INDEX herald_idempotency_keys_created_at ON herald_idempotency_keys (created_at);
