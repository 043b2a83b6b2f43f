-- Channels: one delivery row per (run, node, recipient, channel), the suppression list, the callbacks already
-- applied (for deduplication), and each worker process's view of each provider's circuit.

-- The forward order of delivery statuses (src/channels/status.rs holds the same order): a callback may only move
-- a delivery to a higher rank, so late and repeated callbacks cannot move it back.
CREATE FUNCTION herald_delivery_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'queued' THEN 0
        WHEN 'sending' THEN 1
        WHEN 'unknown' THEN 2
        WHEN 'sent' THEN 3
        WHEN 'delivered' THEN 4
        ELSE 5
    END
$$;

CREATE TABLE herald_deliveries (
    id                  bigserial   PRIMARY KEY,
    run_id              bigint      NOT NULL REFERENCES herald_runs (id) ON DELETE CASCADE,
    node_id             text        NOT NULL,
    recipient           text        NOT NULL,
    channel             text        NOT NULL,
    status              text        NOT NULL CHECK (status IN
        ('queued', 'sending', 'unknown', 'sent', 'delivered', 'bounced', 'failed', 'suppressed')),
    -- The provider that accepted the message (or was last tried), and its id for the message.
    provider            text,
    provider_message_id text,
    -- Every provider call: [{provider, outcome, reason, latency_ms, at}].
    attempts            jsonb       NOT NULL DEFAULT '[]',
    -- Every status change: [{status, at, source, reason}].
    history             jsonb       NOT NULL DEFAULT '[]',
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, node_id, recipient, channel)
);
CREATE INDEX herald_deliveries_provider_message ON herald_deliveries (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- Addresses (email, phone number, device token, subscription endpoint) that must not be sent to again.
CREATE TABLE herald_suppressions (
    channel    text        NOT NULL,
    address    text        NOT NULL,
    reason     text        NOT NULL,
    provider   text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, address)
);

-- Callbacks already applied, by the provider's own event key: a provider that calls twice changes nothing.
CREATE TABLE herald_callback_events (
    provider    text        NOT NULL,
    event_key   text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_key)
);

-- Each worker process keeps its own circuit breaker per provider and records its state here on every change,
-- so `GET /v1/providers` (served by another process) can show the fleet's view.
CREATE TABLE herald_provider_circuits (
    provider             text        NOT NULL,
    worker_id            uuid        NOT NULL,
    state                text        NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    consecutive_failures integer     NOT NULL,
    open_until           timestamptz,
    last_error           text,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, worker_id)
);
