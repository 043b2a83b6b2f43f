-- The Kafka bridge: the offsets it has consumed, stored with the jobs and events they produced, and the messages
-- it could not decode or route.

-- Per (consumer group, topic, partition): the next offset to read. Written in the same transaction as the jobs,
-- runs and events of a batch, so Postgres, not the broker, is the truth about what has been consumed. On every
-- partition assignment the bridge starts from here.
CREATE TABLE herald_bridge_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    -- NULL only inside the transaction that creates the row (it locks the partition before anything is read).
    next_offset bigint,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Messages that could not be decoded or routed, with their raw bytes, written in the batch's transaction.
CREATE TABLE herald_bridge_dead_letters (
    id          bigserial   PRIMARY KEY,
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    key         bytea,
    -- [{"name": ..., "value": base64 or null}]
    headers     jsonb       NOT NULL DEFAULT '[]',
    payload     bytea,
    error       text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Set when `herald bridge dlq replay` routed the message successfully.
    replayed_at timestamptz,
    UNIQUE (group_id, topic, partition, "offset")
);

CREATE INDEX herald_bridge_dead_letters_pending ON herald_bridge_dead_letters (id) WHERE replayed_at IS NULL;
