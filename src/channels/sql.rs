//! Every SQL statement of the channel layer (deliveries, suppressions, callbacks, circuits, fleet size).

/// Begins many sends in one statement: creates each delivery (or finds the one an earlier attempt created) and
/// moves it, in the same statement, to what this attempt must do (see `deliveries.rs`):
/// * `sent` / `delivered` / `bounced` stay as they are: it went out, do not send again;
/// * a suppressed recipient (on the list now): `suppressed`;
/// * `sending` (a worker died mid-call) and `unknown`: `unknown`, never re-sent;
/// * anything else (new, `queued`, `failed`, or `suppressed` by a send whose address has left the list since):
///   `sending`: call the providers.
///
/// Each change appends a history entry (source `send`). Answers one row per input, in input order: the
/// delivery's id, its new status, the provider that accepted it (if it went out), and the suppression reason.
/// Rows are inserted (and so locked) in key order, so two batches never wait on each other in a cycle; a batch
/// naming one delivery twice is refused by PostgreSQL and retried one send at a time by the caller.
/// $1 run ids, $2 node ids, $3 recipients, $4 channels, $5 workflows, $6 triggered_at.
pub const BEGIN_DELIVERIES: &str = r#"
WITH input AS (
    SELECT i.*, s.reason AS suppressed,
           CASE WHEN s.reason IS NULL THEN 'sending' ELSE 'suppressed' END AS status
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
        WITH ORDINALITY AS i(run_id, node_id, recipient, channel, workflow, triggered_at, recipient_id, ord)
    LEFT JOIN herald_suppressions s ON s.channel = i.channel AND s.address = i.recipient
), begun AS (
    INSERT INTO herald_deliveries AS d (run_id, node_id, recipient, channel, status, workflow, triggered_at,
                                        recipient_id, history)
    SELECT run_id, node_id, recipient, channel, status, workflow, triggered_at, recipient_id,
           jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
               'status', status, 'at', now(), 'source', 'send', 'reason', 'suppressed: ' || suppressed)))
    FROM input ORDER BY run_id, node_id, recipient, channel
    ON CONFLICT (run_id, node_id, recipient, channel) DO UPDATE
    SET status = CASE WHEN d.status IN ('sent', 'delivered', 'bounced') THEN d.status
                      WHEN excluded.status = 'suppressed' THEN 'suppressed'
                      WHEN d.status IN ('sending', 'unknown') THEN 'unknown'
                      ELSE 'sending' END,
        history = d.history || CASE
            WHEN d.status IN ('sent', 'delivered', 'bounced') THEN '[]'::jsonb
            WHEN excluded.status = 'suppressed' AND d.status = 'suppressed' THEN '[]'::jsonb
            WHEN excluded.status = 'suppressed' THEN excluded.history
            WHEN d.status = 'sending' THEN jsonb_build_array(jsonb_build_object(
                'status', 'unknown', 'at', now(), 'source', 'send',
                'reason', 'a worker stopped during the provider call; the outcome is unknown'))
            WHEN d.status = 'unknown' THEN '[]'::jsonb
            ELSE excluded.history END,
        updated_at = now()
    RETURNING d.id, d.run_id, d.node_id, d.recipient, d.channel, d.status, d.provider, d.provider_message_id
)
SELECT b.id, b.status, b.provider, b.provider_message_id, i.suppressed AS suppressed_reason
FROM input i
JOIN begun b ON b.run_id = i.run_id AND b.node_id = i.node_id AND b.recipient = i.recipient
            AND b.channel = i.channel
ORDER BY i.ord
"#;

/// Records a send not made on purpose (`skipped`, the reason in `error`), once: a retry of the node finds the
/// row and keeps it. $1 run, $2 node, $3 recipient (as shown), $4 channel, $5 workflow, $6 triggered at,
/// $7 reason, $8 recipient id. Answers the delivery's id.
pub const SKIP_DELIVERY: &str = r#"
WITH skipped AS (
    INSERT INTO herald_deliveries (run_id, node_id, recipient, channel, status, workflow, triggered_at, error,
                                   recipient_id, history)
    VALUES ($1, $2, $3, $4, 'skipped', $5, $6, $7, $8,
            jsonb_build_array(jsonb_build_object('status', 'skipped', 'at', now(), 'source', 'send',
                                                 'reason', $7::text)))
    ON CONFLICT (run_id, node_id, recipient, channel) DO NOTHING
    RETURNING id
)
SELECT id FROM skipped
UNION ALL
SELECT id FROM herald_deliveries WHERE run_id = $1 AND node_id = $2 AND recipient = $3 AND channel = $4
LIMIT 1
"#;

/// Scrubs up to $3 deliveries of an erased recipient: those resolved from their profile ($1, by the recipient
/// index) or made by runs $2 (started for them, by the run index); $4 false leaves those still `sending` (a
/// provider call in flight, whose row guards against a second send). The address becomes `erased:<id>`; provider
/// reasons and errors (which can quote it) are dropped; status, provider, timings and counts stay. Locks wait
/// (no SKIP LOCKED): a row busy elsewhere is scrubbed once free, not passed over. Answers each row's run and node.
pub const ERASE_DELIVERIES: &str = r#"
WITH batch AS (
    SELECT id FROM herald_deliveries
    WHERE (recipient_id = $1 OR run_id = ANY($2::bigint[])) AND recipient NOT LIKE 'erased:%'
      AND ($4 OR status <> 'sending')
    ORDER BY id LIMIT $3
    FOR UPDATE
)
UPDATE herald_deliveries d
SET recipient = 'erased:' || d.id, recipient_id = NULL, error = NULL,
    attempts = coalesce((SELECT jsonb_agg(a - 'reason') FROM jsonb_array_elements(d.attempts) AS a), '[]'),
    history = coalesce((SELECT jsonb_agg(h - 'reason') FROM jsonb_array_elements(d.history) AS h), '[]'),
    updated_at = now()
FROM batch WHERE d.id = batch.id
RETURNING d.run_id, d.node_id
"#;

/// Records sends' results: status, the accepting provider and its id, every provider call, and the error. A
/// status never moves back: a callback that got here first (delivered) keeps its status. $1 ids, $2 statuses,
/// $3 providers, $4 provider message ids, $5 attempts (jsonb arrays), $6 errors.
pub const FINISH_DELIVERIES: &str = r#"
UPDATE herald_deliveries d
SET status = CASE WHEN d.status IN ('queued', 'sending', 'unknown')
                       OR herald_delivery_rank(d.status) < herald_delivery_rank(u.status)
                  THEN u.status ELSE d.status END,
    provider = coalesce(u.provider, d.provider),
    provider_message_id = coalesce(u.message_id, d.provider_message_id),
    attempts = d.attempts || u.attempts,
    error = u.error,
    updated_at = now(),
    history = d.history || jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
        'status', u.status, 'at', now(), 'source', 'send', 'reason', u.error)))
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[])
    AS u(id, status, provider, message_id, attempts, error)
WHERE d.id = u.id
"#;

/// [`SUPPRESS`] for many addresses, in key order. $1 channels, $2 addresses, $3 reasons, $4 providers.
pub const SUPPRESS_MANY: &str = r#"
INSERT INTO herald_suppressions (channel, address, reason, provider)
SELECT DISTINCT ON (channel, address) channel, address, reason, provider
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(channel, address, reason, provider)
ORDER BY channel, address
ON CONFLICT (channel, address) DO NOTHING
"#;

/// Add an address to the suppression list (the first reason wins). $1 channel, $2 address, $3 reason,
/// $4 provider.
pub const SUPPRESS: &str = r#"
INSERT INTO herald_suppressions (channel, address, reason, provider)
VALUES ($1, $2, $3, $4)
ON CONFLICT (channel, address) DO NOTHING
"#;

/// Remove an address from the suppression list. $1 channel, $2 address.
pub const UNSUPPRESS: &str = "DELETE FROM herald_suppressions WHERE channel = $1 AND address = $2";

/// The suppression list, newest first. $1 limit.
pub const LIST_SUPPRESSIONS: &str = r#"
SELECT channel, address, reason, provider, created_at
FROM herald_suppressions ORDER BY created_at DESC, address LIMIT $1
"#;

/// A run's deliveries. $1 run id.
pub const RUN_DELIVERIES: &str = r#"
SELECT id, run_id, node_id, recipient, channel, status, provider, provider_message_id, attempts, history, error,
       created_at, updated_at
FROM herald_deliveries WHERE run_id = $1 ORDER BY id
"#;

/// Remember a callback event; no row returned means it was applied before. $1 provider, $2 event key.
pub const RECORD_CALLBACK_EVENT: &str = r#"
INSERT INTO herald_callback_events (provider, event_key) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING event_key
"#;

/// Apply a callback's status to the delivery the provider's message id names, only forward.
/// $1 provider, $2 provider message id, $3 status, $4 reason. Returns the delivery's channel and recipient.
pub const APPLY_CALLBACK_STATUS: &str = r#"
UPDATE herald_deliveries
SET status = $3, updated_at = now(),
    history = history || jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
        'status', $3::text, 'at', now(), 'source', 'callback', 'reason', $4::text)))
WHERE provider = $1 AND provider_message_id = $2
  AND herald_delivery_rank(status) < herald_delivery_rank($3)
RETURNING id
"#;

/// The delivery a provider's message id names (for suppressing its recipient). $1 provider, $2 message id.
pub const DELIVERY_BY_PROVIDER_ID: &str = r#"
SELECT channel, recipient FROM herald_deliveries WHERE provider = $1 AND provider_message_id = $2 LIMIT 1
"#;

/// Record this process's circuit state for a provider. $1 provider, $2 process id, $3 state,
/// $4 consecutive failures, $5 open for (milliseconds, or null), $6 last error.
pub const RECORD_CIRCUIT: &str = r#"
INSERT INTO herald_provider_circuits (provider, worker_id, state, consecutive_failures, open_until, last_error)
VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond', $6)
ON CONFLICT (provider, worker_id) DO UPDATE
SET state = EXCLUDED.state, consecutive_failures = EXCLUDED.consecutive_failures,
    open_until = EXCLUDED.open_until, last_error = coalesce(EXCLUDED.last_error, herald_provider_circuits.last_error),
    updated_at = now()
"#;

/// The circuits processes recorded in the last day, for `GET /v1/providers` (each process start records under a
/// new id, so older rows are history).
pub const LIST_CIRCUITS: &str = r#"
SELECT provider, worker_id, state, consecutive_failures, open_until, last_error, updated_at
FROM herald_provider_circuits WHERE updated_at > now() - interval '1 day'
ORDER BY provider, updated_at DESC
"#;

/// Deliveries created in [$1, $2) per workflow, channel and provider ('' for none), for the clock's daily rollups:
/// counts by current status, how many a provider accepted, and the trigger -> accept latency percentiles (ms): the
/// first `sent` entry of the delivery's history minus the run's trigger time. At most $3 groups.
pub const DELIVERY_DAYS: &str = r#"
SELECT workflow, channel, provider, deliveries, accepted, queued, sending, sent, delivered, bounced, failed,
       suppressed, unknown,
       accept[1] AS accept_p50_ms, accept[2] AS accept_p95_ms, accept[3] AS accept_p99_ms
FROM (
    SELECT coalesce(d.workflow, '') AS workflow, d.channel, coalesce(d.provider, '') AS provider,
           count(*) AS deliveries,
           count(a.accepted_at) AS accepted,
           count(*) FILTER (WHERE d.status = 'queued') AS queued,
           count(*) FILTER (WHERE d.status = 'sending') AS sending,
           count(*) FILTER (WHERE d.status = 'sent') AS sent,
           count(*) FILTER (WHERE d.status = 'delivered') AS delivered,
           count(*) FILTER (WHERE d.status = 'bounced') AS bounced,
           count(*) FILTER (WHERE d.status = 'failed') AS failed,
           count(*) FILTER (WHERE d.status = 'suppressed') AS suppressed,
           count(*) FILTER (WHERE d.status = 'unknown') AS unknown,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[])
               WITHIN GROUP (ORDER BY (extract(epoch FROM a.accepted_at - d.triggered_at) * 1000)::float8)
               FILTER (WHERE a.accepted_at IS NOT NULL AND d.triggered_at IS NOT NULL) AS accept
    FROM herald_deliveries d
    LEFT JOIN LATERAL (
        SELECT min((h ->> 'at')::timestamptz) AS accepted_at
        FROM jsonb_array_elements(d.history) h WHERE h ->> 'status' = 'sent'
    ) a ON true
    WHERE d.created_at >= $1 AND d.created_at < $2
    GROUP BY 1, 2, 3
) day
ORDER BY workflow, channel, provider
LIMIT $3
"#;

/// A search of deliveries, newest first. $1 recipient ids, $2 status, $3 channel, $4 provider, $5 since,
/// $6 until, $7 below this id, $8 limit; a NULL filter filters nothing. With a recipient it reads the recipient
/// index; else it walks the primary key down from the newest (the caller bounds its time).
pub const SEARCH_DELIVERIES: &str = r#"
SELECT id, run_id, node_id, recipient, channel, status, provider, provider_message_id, attempts, history, error,
       created_at, updated_at
FROM herald_deliveries
WHERE ($1::text[] IS NULL OR recipient_id = ANY($1)) AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR channel = $3) AND ($4::text IS NULL OR provider = $4)
  AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($6::timestamptz IS NULL OR created_at < $6)
  AND ($7::bigint IS NULL OR id < $7)
ORDER BY id DESC LIMIT $8
"#;

/// The suppressions among (channel, address) pairs. $1 channels, $2 addresses (same length).
pub const SUPPRESSIONS_OF: &str = r#"
SELECT s.channel, s.address, s.reason, s.provider, s.created_at
FROM herald_suppressions s JOIN unnest($1::text[], $2::text[]) AS a (channel, address)
  ON s.channel = a.channel AND s.address = a.address
ORDER BY s.created_at DESC
"#;
