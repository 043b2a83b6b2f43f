//! Every statement on the recipient tables, with its parameters. Writes that touch several recipients take their
//! rows in id order, so two batches sharing ids wait for each other instead of deadlocking.

/// Creates or replaces a profile's fields (not its preferences, which have their own endpoint). $1 id, $2 email,
/// $3 phone, $4 locale, $5 time zone, $6 chat handles, $7 data. Answers whether the row is new.
pub const UPSERT: &str = r#"
INSERT INTO herald_recipients AS r (id, email, phone, locale, timezone, chat, data)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO UPDATE
SET email = excluded.email, phone = excluded.phone, locale = excluded.locale, timezone = excluded.timezone,
    chat = excluded.chat, data = excluded.data, updated_at = now()
RETURNING (xmax = 0) AS created
"#;

/// Makes a recipient's devices the listed ones: others are removed; a listed device already stored keeps its
/// `active` flag, so a token a provider reported gone stays inactive however often a profile sync lists it.
/// $1 recipient, $2 providers, $3 tokens, $4 labels.
pub const REPLACE_DEVICES: &str = r#"
WITH listed AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[]) AS l(provider, token, label)
), removed AS (
    DELETE FROM herald_recipient_devices d
    WHERE d.recipient_id = $1
      AND NOT EXISTS (SELECT 1 FROM listed l WHERE l.provider = d.provider AND l.token = d.token)
)
INSERT INTO herald_recipient_devices (recipient_id, provider, token, label)
SELECT $1, provider, token, label FROM listed
ON CONFLICT (recipient_id, provider, token) DO UPDATE SET label = excluded.label
"#;

/// A profile as the API shows it: fields, preferences and every device (inactive ones with why). The caller adds
/// the `WHERE`.
const VIEW: &str = r#"
SELECT r.id, r.email, r.phone, r.locale, r.timezone, r.chat, r.data, r.preferences, r.created_at, r.updated_at,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                     'provider', d.provider, 'token', d.token, 'label', d.label, 'active', d.active,
                     'deactivated_at', d.deactivated_at, 'deactivated_reason', d.deactivated_reason)
                     ORDER BY d.created_at, d.provider, d.token)
                 FROM herald_recipient_devices d WHERE d.recipient_id = r.id), '[]') AS devices
FROM herald_recipients r
"#;

/// One profile. $1 id.
pub fn get() -> String {
    format!("{VIEW} WHERE r.id = $1")
}

/// A page of profiles in id order, after the cursor $1 (an id, or null), filtered by email $2 (any case) and
/// phone $3 when given; $4 the page size.
pub fn list() -> String {
    format!(
        "{VIEW} WHERE ($1::text IS NULL OR r.id > $1) \
           AND ($2::text IS NULL OR (r.email IS NOT NULL AND lower(r.email) = lower($2))) \
           AND ($3::text IS NULL OR (r.phone IS NOT NULL AND r.phone = $3)) \
         ORDER BY r.id LIMIT $4"
    )
}

/// Locks a profile for a read-modify-write (PATCH, preference changes). $1 id.
pub const LOCK: &str = "SELECT preferences FROM herald_recipients WHERE id = $1 FOR UPDATE";

/// What a send needs of a recipient: addresses, active devices (provider, token), zone, preferences. $1 id.
pub const SEND_PROFILE: &str = r#"
SELECT r.email, r.phone, r.locale, r.timezone, r.chat, r.data, r.preferences,
       coalesce((SELECT jsonb_agg(jsonb_build_array(d.provider, d.token) ORDER BY d.created_at, d.token)
                 FROM herald_recipient_devices d WHERE d.recipient_id = r.id AND d.active), '[]') AS devices
FROM herald_recipients r WHERE r.id = $1
"#;

/// $1 id, $2 the new preferences document.
pub const SET_PREFERENCES: &str =
    "UPDATE herald_recipients SET preferences = $2, updated_at = now() WHERE id = $1";

/// Deletes a profile; its devices and topic memberships go with it (foreign keys). $1 id.
pub const DELETE: &str = "DELETE FROM herald_recipients WHERE id = $1";

/// Marks a device gone wherever it is listed (a token can be on two profiles). $1 provider, $2 token, $3 why.
pub const DEACTIVATE_DEVICE: &str = r#"
UPDATE herald_recipient_devices
SET active = false, deactivated_at = now(), deactivated_reason = $3
WHERE provider = $1 AND token = $2 AND active
"#;

/// Which of the ids $1 have no profile.
pub const UNKNOWN_IDS: &str = r#"
SELECT u.id FROM unnest($1::text[]) AS u(id)
WHERE NOT EXISTS (SELECT 1 FROM herald_recipients r WHERE r.id = u.id)
ORDER BY u.id
"#;

/// Adds recipients $2 to topic $1 (those already members stay, with their first `added_at`); answers how many
/// were added. Each profile is key-share locked by the foreign key in id order.
pub const ADD_MEMBERS: &str = r#"
INSERT INTO herald_topic_members (topic, recipient_id)
SELECT $1, r.id FROM herald_recipients r WHERE r.id = ANY($2::text[]) ORDER BY r.id
ON CONFLICT DO NOTHING
"#;

/// Removes recipients $2 from topic $1.
pub const REMOVE_MEMBERS: &str =
    "DELETE FROM herald_topic_members WHERE topic = $1 AND recipient_id = ANY($2::text[])";

/// A page of a topic's member ids in id order, after $2 (or from the start); $3 the page size. (`coalesce`, not
/// `$2 IS NULL OR ...`: the bound stays an index condition in a generic plan; no id is empty.)
pub const MEMBERS: &str = r#"
SELECT recipient_id FROM herald_topic_members
WHERE topic = $1 AND recipient_id > coalesce($2, '')
ORDER BY recipient_id LIMIT $3
"#;

/// [`MEMBERS`] up to $4 (inclusive).
pub const MEMBERS_UNTIL: &str = r#"
SELECT recipient_id FROM herald_topic_members
WHERE topic = $1 AND recipient_id > coalesce($2, '') AND recipient_id <= $4
ORDER BY recipient_id LIMIT $3
"#;

/// How many members topic $1 has, counting no further than $2.
pub const COUNT_MEMBERS: &str =
    "SELECT count(*) FROM (SELECT 1 FROM herald_topic_members WHERE topic = $1 LIMIT $2) m";

/// Every $2-th member of topic $1 in id order, up to $3 of them (one pass over the topic's index).
pub const EVERY_NTH_MEMBER: &str = r#"
SELECT recipient_id FROM (
    SELECT recipient_id, row_number() OVER (ORDER BY recipient_id) AS n
    FROM herald_topic_members WHERE topic = $1
) m
WHERE n % $2 = 0 ORDER BY recipient_id LIMIT $3
"#;

/// The secret named $1, made from $2 if there is none yet (the first process to start wins; the others read it).
pub const SECRET: &str = r#"
WITH made AS (
    INSERT INTO herald_recipient_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING
    RETURNING secret
)
SELECT secret FROM made
UNION ALL
SELECT secret FROM herald_recipient_secrets WHERE name = $1
LIMIT 1
"#;
