-- The HTTP API: API keys, request ids carried into jobs, and request fingerprints for idempotency keys.

-- Keys are stored as SHA-256 digests; the key itself is shown once, when it is created. `prefix` (the first
-- characters) lets an operator tell keys apart without exposing them.
CREATE TABLE herald_api_keys (
    id         bigserial   PRIMARY KEY,
    name       text        NOT NULL,
    prefix     text        NOT NULL,
    key_hash   bytea       NOT NULL UNIQUE,
    scopes     text[]      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- The id of the HTTP request that created a job, so a job's logs can be joined to the request's.
ALTER TABLE herald_jobs ADD COLUMN request_id text;
ALTER TABLE herald_job_history ADD COLUMN request_id text;

-- What the job holding a key was enqueued with (md5 of queue, kind, priority and payload), so a repeat with the
-- same key but a different body is reported as a conflict instead of silently answered with another job.
ALTER TABLE herald_idempotency_keys ADD COLUMN fingerprint text;
