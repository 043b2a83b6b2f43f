-- Lease tokens are made by the claiming worker (a random positive bigint) instead of herald_lease_token_seq: a
-- worker must know a claim's token before it sends the claim, so that the jobs of a claim whose answer never
-- arrived (abandoned at its deadline, or lost in a crash after the commit) can be recognised and given back.
-- See src/queue/worker/ledger.rs. The sequence stays for workers of earlier versions during a rolling upgrade.
COMMENT ON COLUMN herald_jobs.lease_token IS
    'the lease of the running attempt, made by the claiming worker; acks and releases must name it (see src/queue/worker/ledger.rs)';
