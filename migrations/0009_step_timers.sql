-- Timers: a delay or wait-for-events step that parks (status `waiting`) leaves a queue job due later, the delay's
-- `resume` job or the wait's `timeout` job. Its id is kept on the step, so whatever ends the step first (an
-- event satisfying the wait, the run being cancelled or failing) removes that job from `herald_jobs` in the same
-- transaction, instead of leaving a job that does nothing in the hot table until its due time.
--
-- No foreign key: the job belongs to the queue, which deletes its row when the job finishes; an id that is no
-- longer in `herald_jobs` simply has nothing left to remove. NULL for every other step, and for a wait without
-- a timeout.
ALTER TABLE herald_run_steps ADD COLUMN timer_job_id bigint;
