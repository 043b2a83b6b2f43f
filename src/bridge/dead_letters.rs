//! Messages the bridge could not decode or route: listed for operators (`herald bridge dlq list`) and replayed
//! once the cause is fixed (`herald bridge dlq replay`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::message::RawMessage;
use super::store::BatchWriter;
use super::{BridgeError, sql};
use crate::audit::Actor;

/// One dead-lettered message. Bytes are shown as text when they are UTF-8, and base64 otherwise.
#[derive(Debug, Clone, Serialize)]
pub struct BridgeDeadLetter {
    pub id: i64,
    pub group_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub error: String,
    pub created_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub message: RawMessage,
    pub key: Option<String>,
    pub payload: Option<String>,
    pub headers: serde_json::Value,
}

/// Which rows to read.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    /// Include rows already replayed.
    pub include_replayed: bool,
    pub id: Option<i64>,
    /// Only this consumer group's rows (replay always uses the writer's group).
    pub group_id: Option<String>,
    pub limit: i64,
}

pub async fn list(
    pool: &PgPool,
    query: &DeadLetterQuery,
) -> Result<Vec<BridgeDeadLetter>, BridgeError> {
    let rows: Vec<DeadLetterRow> = sqlx::query_as(sql::LIST_DEAD_LETTERS)
        .bind(query.include_replayed)
        .bind(query.id)
        .bind(query.limit)
        .bind(&query.group_id)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(BridgeDeadLetter::from).collect())
}

/// A `herald_bridge_dead_letters` row: the raw message, before it is shown.
#[derive(sqlx::FromRow)]
struct DeadLetterRow {
    id: i64,
    group_id: String,
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    headers: serde_json::Value,
    payload: Option<Vec<u8>>,
    error: String,
    created_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
}

impl From<DeadLetterRow> for BridgeDeadLetter {
    fn from(row: DeadLetterRow) -> Self {
        let message = RawMessage {
            topic: row.topic,
            partition: row.partition,
            offset: row.offset,
            key: row.key,
            headers: RawMessage::headers_from_json(&row.headers),
            payload: row.payload,
            problem: None,
        };
        BridgeDeadLetter {
            id: row.id,
            group_id: row.group_id,
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
            error: row.error,
            created_at: row.created_at,
            replayed_at: row.replayed_at,
            key: message.key.as_deref().map(readable),
            payload: message.payload.as_deref().map(readable),
            headers: row.headers,
            message,
        }
    }
}

/// What a replay did, per row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplayResult {
    pub id: i64,
    pub replayed: bool,
    /// Why it still cannot be routed.
    pub error: Option<String>,
}

/// Replays the rows `query` selects (not yet replayed) through the current routes.
pub async fn replay(
    writer: &BatchWriter,
    actor: &Actor,
    query: &DeadLetterQuery,
) -> Result<Vec<ReplayResult>, BridgeError> {
    let query = DeadLetterQuery {
        include_replayed: false,
        group_id: Some(writer.group().to_string()),
        ..query.clone()
    };
    let mut results = Vec::new();
    for letter in list(writer.pool(), &query).await? {
        let result = writer.replay(actor, letter.id, &letter.message).await?;
        results.push(ReplayResult {
            id: letter.id,
            replayed: result.is_ok(),
            error: result.err(),
        });
    }
    Ok(results)
}

fn readable(bytes: &[u8]) -> String {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    }
}
