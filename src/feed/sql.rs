//! The feed's statements (`herald_feed_items`, see `migrations/0022_feed.sql`).

/// Stores an item ($1 recipient, $2 idempotency key, $3 workflow, $4 category, $5 title, $6 body, $7 action URL,
/// $8 data) unless one has this key, and wakes the recipient's live streams; answers the item's id if new.
pub const INSERT_ITEM: &str = "
WITH inserted AS (
    INSERT INTO herald_feed_items (recipient_id, idempotency_key, workflow, category, title, body, action_url, data)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
)
SELECT i.id FROM inserted i CROSS JOIN LATERAL (SELECT pg_notify('herald_feed', $1)) woken";

/// A page of recipient $1's items, newest first, below id $2 (NULL: from the newest), at most $3; $4 the state
/// filter (`all`, `unseen`, `unread`, `read`, `archived`; `all` leaves archived items out), $5 a category (NULL:
/// any).
pub const LIST_ITEMS: &str = "
SELECT id, workflow, category, title, body, action_url, data, created_at, seen_at, read_at, archived_at
FROM herald_feed_items
WHERE recipient_id = $1 AND ($2::bigint IS NULL OR id < $2)
  AND CASE $4
        WHEN 'unseen' THEN seen_at IS NULL AND archived_at IS NULL
        WHEN 'unread' THEN read_at IS NULL AND archived_at IS NULL
        WHEN 'read' THEN read_at IS NOT NULL AND archived_at IS NULL
        WHEN 'archived' THEN archived_at IS NOT NULL
        ELSE archived_at IS NULL
      END
  AND ($5::text IS NULL OR category = $5)
ORDER BY id DESC
LIMIT $3";

/// Recipient $1's items newer than id $2, oldest first, at most $3 (what a live stream sends next).
pub const ITEMS_AFTER: &str = "
SELECT id, workflow, category, title, body, action_url, data, created_at, seen_at, read_at, archived_at
FROM herald_feed_items
WHERE recipient_id = $1 AND id > $2
ORDER BY id
LIMIT $3";

/// Recipient $1's newest item id (0 if none).
pub const NEWEST_ID: &str =
    "SELECT coalesce(max(id), 0) FROM herald_feed_items WHERE recipient_id = $1";

/// Recipient $1's unseen and unread counts (archived items count in neither).
pub const COUNTS: &str = "
SELECT count(*) FILTER (WHERE seen_at IS NULL), count(*) FILTER (WHERE read_at IS NULL)
FROM herald_feed_items
WHERE recipient_id = $1 AND archived_at IS NULL AND (seen_at IS NULL OR read_at IS NULL)";

/// Marks recipient $1's items $2 (ids; NULL: all of the recipient's items) as $3 (`seen`, `read`, `unread`,
/// `archived`, `unarchived`); wakes their live streams; answers how many items changed.
pub const MARK: &str = "
WITH changed AS (
    UPDATE herald_feed_items SET
        seen_at = CASE WHEN $3 IN ('seen', 'read') THEN coalesce(seen_at, now()) ELSE seen_at END,
        read_at = CASE WHEN $3 = 'read' THEN coalesce(read_at, now())
                       WHEN $3 = 'unread' THEN NULL ELSE read_at END,
        archived_at = CASE WHEN $3 = 'archived' THEN coalesce(archived_at, now())
                           WHEN $3 = 'unarchived' THEN NULL ELSE archived_at END
    WHERE recipient_id = $1 AND ($2::bigint[] IS NULL OR id = ANY($2))
      AND CASE $3
            WHEN 'seen' THEN seen_at IS NULL
            WHEN 'read' THEN read_at IS NULL
            WHEN 'unread' THEN read_at IS NOT NULL
            WHEN 'archived' THEN archived_at IS NULL
            WHEN 'unarchived' THEN archived_at IS NOT NULL
            ELSE false
          END
    RETURNING 1
), counted AS (
    SELECT count(*) AS n FROM changed
)
SELECT c.n FROM counted c LEFT JOIN LATERAL (SELECT pg_notify('herald_feed', $1) WHERE c.n > 0) woken ON true";

/// Removes an erased recipient's items ($1), a batch of at most $2; answers how many.
pub const ERASE_ITEMS: &str = "
DELETE FROM herald_feed_items WHERE id IN (
    SELECT id FROM herald_feed_items WHERE recipient_id = $1 LIMIT $2
)";
