-- The in-app feed (src/feed): one row per `in_app` message, for its recipient. `idempotency_key` is the send's
-- (`run:<run>:<epoch>:<node>`): a send retried after a crash finds its item and writes no second one. An item is
-- unseen until `seen_at`, unread until `read_at`, and out of the default listing once `archived_at`.
CREATE TABLE herald_feed_items (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient_id    text        NOT NULL,
    idempotency_key text        NOT NULL UNIQUE,
    workflow        text,
    category        text,
    title           text        NOT NULL DEFAULT '',
    body            text        NOT NULL DEFAULT '',
    action_url      text,
    data            jsonb       NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    seen_at         timestamptz,
    read_at         timestamptz,
    archived_at     timestamptz
);
CREATE INDEX herald_feed_items_recipient ON herald_feed_items (recipient_id, id DESC);
CREATE INDEX herald_feed_items_unseen ON herald_feed_items (recipient_id) WHERE seen_at IS NULL AND archived_at IS NULL;
CREATE INDEX herald_feed_items_unread ON herald_feed_items (recipient_id) WHERE read_at IS NULL AND archived_at IS NULL;
-- Retention (clock): by age.
CREATE INDEX herald_feed_items_created ON herald_feed_items USING brin (created_at);
