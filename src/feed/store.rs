//! Feed items: written by the `in_app` channel, listed, counted and marked through the API.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use super::{FeedError, sql};
use crate::channels::{Channel, Message, SendError, SendFuture, Sent};

/// The content fields an item takes as they are; any other field of the message goes into its `data`.
const TITLE: &str = "title";
const BODY: &str = "body";
const ACTION_URL: &str = "action_url";
/// What the workflow layer adds to an `in_app` message's content for the item (not shown as data).
pub const WORKFLOW_FIELD: &str = "herald.workflow";
pub const CATEGORY_FIELD: &str = "herald.category";

/// The most items one page lists, and ids one mark names.
pub const MAX_PAGE: i64 = 100;
pub const MAX_MARK_IDS: usize = 1_000;

/// One feed item as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FeedItem {
    pub id: i64,
    pub workflow: Option<String>,
    pub category: Option<String>,
    pub title: String,
    pub body: String,
    pub action_url: Option<String>,
    /// The message's other content fields.
    #[schema(value_type = Object)]
    pub data: sqlx::types::Json<Value>,
    pub created_at: DateTime<Utc>,
    pub seen_at: Option<DateTime<Utc>>,
    pub read_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
}

/// A recipient's unseen and unread counts (archived items count in neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FeedCounts {
    pub unseen: i64,
    pub unread: i64,
}

/// A page of items, newest first, with the cursor of the next page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FeedPage {
    pub items: Vec<FeedItem>,
    pub next_cursor: Option<String>,
    pub counts: FeedCounts,
}

/// Which items a listing shows.
#[derive(Debug, Clone, Default)]
pub struct FeedQuery {
    /// `all` (the default: every item not archived), `unseen`, `unread`, `read` or `archived`.
    pub state: Option<String>,
    pub category: Option<String>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// What a mark does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Seen,
    Read,
    Unread,
    Archived,
    Unarchived,
}

impl Mark {
    pub const NAMES: &'static str = "seen, read, unread, archived, unarchived";

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "seen" => Some(Mark::Seen),
            "read" => Some(Mark::Read),
            "unread" => Some(Mark::Unread),
            "archived" => Some(Mark::Archived),
            "unarchived" => Some(Mark::Unarchived),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mark::Seen => "seen",
            Mark::Read => "read",
            Mark::Unread => "unread",
            Mark::Archived => "archived",
            Mark::Unarchived => "unarchived",
        }
    }
}

const STATES: [&str; 5] = ["all", "unseen", "unread", "read", "archived"];

/// A page of `recipient`'s items.
pub async fn list(
    pool: &PgPool,
    recipient: &str,
    query: &FeedQuery,
) -> Result<FeedPage, FeedError> {
    let state = query.state.as_deref().unwrap_or("all");
    if !STATES.contains(&state) {
        return Err(FeedError::Invalid(format!(
            "`state` is one of {}",
            STATES.join(", ")
        )));
    }
    let fit_category = |category: &str| {
        (1..=64).contains(&category.len())
            && category
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    if query.category.as_deref().is_some_and(|c| !fit_category(c)) {
        return Err(FeedError::Invalid(
            "`category` is 1-64 characters of [A-Za-z0-9_.-]".into(),
        ));
    }
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(FeedError::Invalid(format!("`limit` is 1-{MAX_PAGE}")));
    }
    let before = match &query.cursor {
        None => None,
        Some(cursor) => Some(
            cursor
                .parse::<i64>()
                .ok()
                .filter(|_| cursor.len() <= 18)
                .filter(|id| *id > 0)
                .ok_or_else(|| FeedError::Invalid("`cursor` is not one this API gave".into()))?,
        ),
    };
    let mut items: Vec<FeedItem> = sqlx::query_as(sql::LIST_ITEMS)
        .bind(recipient)
        .bind(before)
        .bind(limit + 1)
        .bind(state)
        .bind(&query.category)
        .fetch_all(pool)
        .await?;
    let more = items.len() as i64 > limit;
    items.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = more
        .then(|| items.last().map(|item| item.id.to_string()))
        .flatten();
    Ok(FeedPage {
        items,
        next_cursor,
        counts: counts(pool, recipient).await?,
    })
}

pub async fn counts(pool: &PgPool, recipient: &str) -> Result<FeedCounts, FeedError> {
    let (unseen, unread): (i64, i64) = sqlx::query_as(sql::COUNTS)
        .bind(recipient)
        .fetch_one(pool)
        .await?;
    Ok(FeedCounts { unseen, unread })
}

/// Items newer than `after`, oldest first (what a live stream sends next), at most `limit`.
pub async fn items_after(
    pool: &PgPool,
    recipient: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<FeedItem>, FeedError> {
    Ok(sqlx::query_as(sql::ITEMS_AFTER)
        .bind(recipient)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// The recipient's newest item id (0 if none): where a new live stream starts.
pub async fn newest_id(pool: &PgPool, recipient: &str) -> Result<i64, FeedError> {
    Ok(sqlx::query_scalar(sql::NEWEST_ID)
        .bind(recipient)
        .fetch_one(pool)
        .await?)
}

/// Marks `ids` of `recipient` (`None`: all of their items); answers how many changed.
pub async fn mark(
    pool: &PgPool,
    recipient: &str,
    ids: Option<&[i64]>,
    mark: Mark,
) -> Result<i64, FeedError> {
    if ids.is_some_and(|ids| ids.is_empty() || ids.len() > MAX_MARK_IDS) {
        return Err(FeedError::Invalid(format!(
            "`ids` lists 1-{MAX_MARK_IDS} items"
        )));
    }
    Ok(sqlx::query_scalar(sql::MARK)
        .bind(recipient)
        .bind(ids)
        .bind(mark.as_str())
        .fetch_one(pool)
        .await?)
}

/// Removes an erased recipient's items, in batches; answers how many.
pub async fn erase(pool: &PgPool, recipient: &str) -> Result<u64, FeedError> {
    let mut removed = 0;
    loop {
        // Each batch in a bounded transaction, as the erase's other scrubs: a lock cannot hold it forever.
        let mut tx = crate::db::begin_bounded(pool, &[]).await?;
        let done = sqlx::query(sql::ERASE_ITEMS)
            .bind(recipient)
            .bind(5_000_i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        removed += done;
        if done == 0 {
            return Ok(removed);
        }
    }
}

/// The `in_app` channel: a message becomes a feed item of its recipient (`to` is the recipient's id), once per
/// idempotency key, and wakes the recipient's live streams.
pub struct FeedChannel {
    pool: PgPool,
}

impl FeedChannel {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn store(&self, message: &Message) -> Result<Sent, SendError> {
        let mut data = BTreeMap::new();
        let field = |name: &str| message.content.get(name).cloned();
        for (name, value) in &message.content {
            if ![TITLE, BODY, ACTION_URL, WORKFLOW_FIELD, CATEGORY_FIELD].contains(&name.as_str())
                && !name.starts_with("herald.")
                && name != crate::channels::UNSUBSCRIBE_URL
            {
                data.insert(name.clone(), Value::String(value.clone()));
            }
        }
        // The product's UI opens it: a `javascript:` (or any other scheme's) URL would run in its pages.
        if let Some(url) = field(ACTION_URL)
            && !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/'))
        {
            return Err(SendError::Permanent(format!(
                "`action_url` must be an http(s) URL or a path starting with /, not `{}`",
                url.chars().take(64).collect::<String>()
            )));
        }
        let inserted: Option<i64> = sqlx::query_scalar(sql::INSERT_ITEM)
            .bind(&message.to)
            .bind(&message.idempotency_key)
            .bind(field(WORKFLOW_FIELD))
            .bind(field(CATEGORY_FIELD))
            .bind(field(TITLE).unwrap_or_default())
            .bind(field(BODY).unwrap_or_default())
            .bind(field(ACTION_URL))
            .bind(sqlx::types::Json(&data))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| SendError::Transient {
                message: format!("storing the feed item: {e}"),
                retry_after: None,
            })?;
        Ok(Sent {
            provider: "feed".into(),
            provider_message_id: inserted.map(|id| id.to_string()),
        })
    }
}

impl Channel for FeedChannel {
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(async move { self.store(message).await.into() })
    }
}
