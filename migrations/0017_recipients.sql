-- Recipients: the people herald notifies (src/recipients), their devices, their topics; and where a run, a
-- delivery and a fan-out record which recipient they were for.

-- One profile per recipient, under the caller's own id. Addresses are stored as parsed at the edge (an email
-- address, an E.164 number, an IANA time zone, a BCP 47 tag); `preferences` is the document
-- `recipients::preferences` reads (opt-outs by channel, workflow and category).
CREATE TABLE herald_recipients (
    id          text        PRIMARY KEY,
    email       text,
    phone       text,
    locale      text,
    timezone    text,
    -- Direct-message handles by chat provider: {"slack": "U024BE7LH"}.
    chat        jsonb       NOT NULL DEFAULT '{}',
    data        jsonb       NOT NULL DEFAULT '{}',
    preferences jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Search by email (case-insensitive) and by phone.
CREATE INDEX herald_recipients_email ON herald_recipients (lower(email)) WHERE email IS NOT NULL;
CREATE INDEX herald_recipients_phone ON herald_recipients (phone) WHERE phone IS NOT NULL;

-- A recipient's push devices. A device a provider reported gone (APNs 410, FCM UNREGISTERED, Web Push 404/410)
-- is kept, inactive, so a profile sync that still lists the stale token does not revive it.
CREATE TABLE herald_recipient_devices (
    recipient_id       text        NOT NULL REFERENCES herald_recipients (id) ON DELETE CASCADE,
    provider           text        NOT NULL CHECK (provider IN ('fcm', 'apns', 'webpush')),
    -- The FCM registration token, the APNs device token (hex), or the Web Push subscription as compact JSON.
    token              text        NOT NULL,
    label              text,
    active             boolean     NOT NULL DEFAULT true,
    deactivated_at     timestamptz,
    deactivated_reason text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (recipient_id, provider, token)
);
CREATE INDEX herald_recipient_devices_token ON herald_recipient_devices (provider, token);

-- Topic membership: a topic is only its members (no row of its own), so it exists while it has one.
CREATE TABLE herald_topic_members (
    topic        text        NOT NULL,
    recipient_id text        NOT NULL REFERENCES herald_recipients (id) ON DELETE CASCADE,
    added_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, recipient_id)
);
CREATE INDEX herald_topic_members_recipient ON herald_topic_members (recipient_id);

-- A secret herald makes for itself on first start (unsubscribe links), shared by the fleet through the database;
-- `recipients.signing_secret` overrides it.
CREATE TABLE herald_recipient_secrets (
    name       text        PRIMARY KEY,
    secret     bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The recipient a run was started for (a trigger's `recipient`, a topic member), and the recipient a delivery
-- was resolved from: what an erase finds. Partial indexes: rows without a recipient cost no index entry.
ALTER TABLE herald_runs ADD COLUMN recipient_id text;
CREATE INDEX herald_runs_recipient ON herald_runs (recipient_id) WHERE recipient_id IS NOT NULL;
ALTER TABLE herald_deliveries ADD COLUMN recipient_id text;
CREATE INDEX herald_deliveries_recipient ON herald_deliveries (recipient_id, id) WHERE recipient_id IS NOT NULL;

-- A send not made on purpose: `skipped`, with its reason (preference, suppressed, no_address) in `error`.
ALTER TABLE herald_deliveries DROP CONSTRAINT herald_deliveries_status_check;
ALTER TABLE herald_deliveries ADD CONSTRAINT herald_deliveries_status_check CHECK (status IN
    ('queued', 'sending', 'unknown', 'sent', 'delivered', 'bounced', 'failed', 'suppressed', 'skipped'));

-- A topic trigger: one run per member, created page by page by fan-out jobs (src/workflow/fanout.rs). `cursor`
-- is the last member id done: a fan-out job that dies resumes after it, and each member's run carries the
-- idempotency key `fanout:<id>:<member>`, so a page written twice makes each run once.
CREATE TABLE herald_fanouts (
    id          bigserial   PRIMARY KEY,
    workflow    text        NOT NULL,
    topic       text        NOT NULL,
    data        jsonb       NOT NULL,
    status      text        NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    cursor      text,
    runs        bigint      NOT NULL DEFAULT 0,
    error       text,
    request_id  text,
    -- The trigger's idempotency key: a retried topic trigger answers the fan-out it started, never a second one.
    idempotency_key text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE UNIQUE INDEX herald_fanouts_key ON herald_fanouts (workflow, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- A recipient's erase: the profile is gone at once; this row drives the scrub of what runs, steps, deliveries
-- and events still hold of them, in bounded batches (src/workflow/erase.rs), and records that it happened.
CREATE TABLE herald_erasures (
    id           bigserial   PRIMARY KEY,
    recipient_id text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('running', 'completed')),
    runs         bigint      NOT NULL DEFAULT 0,
    deliveries   bigint      NOT NULL DEFAULT 0,
    events       bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
