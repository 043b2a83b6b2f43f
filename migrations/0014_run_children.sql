-- A run's rows without per-row foreign-key checks on the start path.
--
-- Starting a run inserts the run and three or so steps; each of those rows ran a foreign-key check (a trigger
-- query per row: the run against herald_workflows, each step against herald_runs), about 25 µs of the 66 µs a run
-- start costs PostgreSQL (docs/benchmarks.md, issue 16), and a delivery paid the same against herald_runs. The
-- checks guarded nothing the code can break:
--   * herald_workflows rows are never deleted or changed (a version is immutable), and a run's (workflow, version)
--     always comes from a row just read;
--   * steps and deliveries are only written for a run that exists: by the statement that inserts the run
--     (START_RUNS), by statements that check in the same snapshot that the run is running (FINISH_STEPS) or lock
--     it (retries), or by the job of a step of a running run (deliveries, a continuation after a failure).
--     Retention removes finished runs only, once they are `runs_days` old, and re-checks `finished_at` on the row
--     it deletes. The one gap: a job stalled for longer than the retention age between reading its running step
--     and writing (its run cancelled meanwhile, then removed) leaves a step or delivery row without its run;
--     such a row is inert (nothing reads a run's children without the run).
-- TRUNCATE herald_runs (by hand) fires no DELETE trigger: truncate the child tables with it.
-- What the cascades did (retention removes a finished run with its steps, waits and deliveries) is kept by
-- statement-level triggers: one DELETE per retention batch, however many runs it removes.

ALTER TABLE herald_runs DROP CONSTRAINT herald_runs_workflow_version_fkey;
ALTER TABLE herald_run_steps DROP CONSTRAINT herald_run_steps_run_id_fkey;
ALTER TABLE herald_deliveries DROP CONSTRAINT herald_deliveries_run_id_fkey;

-- The workflow's: a removed run takes its steps (and, through their own cascade, its waits).
CREATE FUNCTION herald_remove_run_steps() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM herald_run_steps s USING removed r WHERE s.run_id = r.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER herald_runs_remove_steps AFTER DELETE ON herald_runs
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION herald_remove_run_steps();

-- The channels': a removed run takes its deliveries (found through their unique key, which leads with run_id).
CREATE FUNCTION herald_remove_run_deliveries() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM herald_deliveries d USING removed r WHERE d.run_id = r.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER herald_runs_remove_deliveries AFTER DELETE ON herald_runs
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION herald_remove_run_deliveries();
