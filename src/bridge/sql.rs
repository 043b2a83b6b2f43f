//! Every statement the bridge runs.

/// Creates the offset rows a batch touches if they are missing (NULL: nothing stored yet), so the next statement
/// can lock them. A concurrent creator waits here for the first one's transaction, then sees its row.
pub const CREATE_OFFSETS: &str = r#"
INSERT INTO herald_bridge_offsets (group_id, topic, partition, next_offset)
SELECT $1, t.topic, t.partition, NULL
FROM UNNEST($2::text[], $3::integer[]) AS t(topic, partition)
ON CONFLICT (group_id, topic, partition) DO NOTHING
"#;

/// Locks a batch's partitions and reads where each stands. Two bridges holding the same partition (a zombie after
/// a rebalance) serialize here, and the second skips what the first stored.
pub const LOCK_OFFSETS: &str = r#"
SELECT o.topic, o.partition, o.next_offset
FROM herald_bridge_offsets o
JOIN UNNEST($2::text[], $3::integer[]) AS t(topic, partition)
  ON o.topic = t.topic AND o.partition = t.partition
WHERE o.group_id = $1
ORDER BY o.topic, o.partition
FOR UPDATE OF o
"#;

pub const STORE_OFFSETS: &str = r#"
UPDATE herald_bridge_offsets o
SET next_offset = t.next_offset, updated_at = now()
FROM UNNEST($2::text[], $3::integer[], $4::bigint[]) AS t(topic, partition, next_offset)
WHERE o.group_id = $1 AND o.topic = t.topic AND o.partition = t.partition
"#;

/// How far each partition reaches (the broker's end as the bridge knows it), for the `bridge_behind` alert. Rows
/// not created yet (nothing stored on the partition) are left alone; an unchanged end is not rewritten.
pub const RECORD_ENDS: &str = r#"
UPDATE herald_bridge_offsets o
SET end_offset = t.end_offset
FROM UNNEST($2::text[], $3::integer[], $4::bigint[]) AS t(topic, partition, end_offset)
WHERE o.group_id = $1 AND o.topic = t.topic AND o.partition = t.partition
  AND o.end_offset IS DISTINCT FROM t.end_offset
"#;

/// Where to start each assigned partition (no row, or a NULL one: nothing consumed yet).
pub const READ_OFFSETS: &str = r#"
SELECT topic, partition, next_offset
FROM herald_bridge_offsets
WHERE group_id = $1 AND next_offset IS NOT NULL
"#;

/// A partition's starting offset for `start_from = "latest"`, unless one is stored already.
pub const PIN_OFFSET: &str = r#"
INSERT INTO herald_bridge_offsets (group_id, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()
    WHERE herald_bridge_offsets.next_offset IS NULL
"#;

pub const INSERT_DEAD_LETTERS: &str = r#"
INSERT INTO herald_bridge_dead_letters (group_id, topic, partition, "offset", key, headers, payload, error)
SELECT $1, t.topic, t.partition, t.message_offset, t.key, t.headers, t.payload, t.error
FROM UNNEST($2::text[], $3::integer[], $4::bigint[], $5::bytea[], $6::jsonb[], $7::bytea[], $8::text[])
    AS t(topic, partition, message_offset, key, headers, payload, error)
ON CONFLICT (group_id, topic, partition, "offset") DO NOTHING
"#;

pub const LIST_DEAD_LETTERS: &str = r#"
SELECT id, group_id, topic, partition, "offset", key, headers, payload, error, created_at, replayed_at
FROM herald_bridge_dead_letters
WHERE ($1 OR replayed_at IS NULL) AND ($2::bigint IS NULL OR id = $2) AND ($4::text IS NULL OR group_id = $4)
ORDER BY id
LIMIT $3
"#;

/// Locks a row for its replay; none if another replay got there first.
pub const LOCK_FOR_REPLAY: &str =
    "SELECT id FROM herald_bridge_dead_letters WHERE id = $1 AND replayed_at IS NULL FOR UPDATE";

pub const MARK_REPLAYED: &str = "UPDATE herald_bridge_dead_letters SET replayed_at = now() WHERE id = $1 AND replayed_at IS NULL";

pub const UPDATE_DEAD_LETTER_ERROR: &str =
    "UPDATE herald_bridge_dead_letters SET error = $2 WHERE id = $1";
