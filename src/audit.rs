//! The audit log: who did what to which thing, and when. Every operator action (keys created or revoked, queues
//! and schedules paused or resumed, dead letters replayed or deleted, suppressions added or removed, workflows
//! saved, runs cancelled or retried) appends one row **in the same transaction as the action**: the function that
//! performs an action takes the [`Actor`] and calls [`record`] on its own transaction, so the HTTP API and the
//! command line cannot forget it, and a row exists exactly when the action committed.
//!
//! This module owns `herald_audit_log` and is a leaf: the domain modules import it, it imports none of them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgExecutor, PgPool};
use utoipa::ToSchema;

/// Longest request id stored (the API already refuses longer ones; this guards any other caller).
const MAX_REQUEST_ID: usize = 128;
/// Longest target stored: targets come from requests (an address, a name), so they are bounded here too.
const MAX_TARGET: usize = 512;

/// Who performs an action, and for which request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    kind: ActorKind,
    key_id: Option<i64>,
    name: String,
    request_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActorKind {
    Key,
    Cli,
    Herald,
}

impl ActorKind {
    fn as_str(self) -> &'static str {
        match self {
            ActorKind::Key => "key",
            ActorKind::Cli => "cli",
            ActorKind::Herald => "herald",
        }
    }
}

impl Actor {
    /// An API key, by id and name, acting for the request `request_id`.
    pub fn key(key_id: i64, name: &str, request_id: Option<&str>) -> Self {
        Self {
            kind: ActorKind::Key,
            key_id: Some(key_id),
            name: name.to_string(),
            request_id: request_id.map(|id| truncated(id, MAX_REQUEST_ID)),
        }
    }

    /// The command line, named by the operating-system user who ran it: `$USER` (which the user sets, so it is a
    /// claim) and the process's uid (which the user cannot choose), e.g. `alice (uid 1000)`.
    pub fn cli() -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let claimed = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty())
            .map(|u| truncated(&u, 64))
            .unwrap_or_else(|| "unknown user".to_string());
        let user = match std::fs::metadata("/proc/self") {
            Ok(process) => format!("{claimed} (uid {})", process.uid()),
            Err(_) => claimed,
        };
        Self {
            kind: ActorKind::Cli,
            key_id: None,
            name: user,
            request_id: None,
        }
    }

    /// herald itself, doing `what` (e.g. `workflow sync at start`).
    pub fn herald(what: &str) -> Self {
        Self {
            kind: ActorKind::Herald,
            key_id: None,
            name: what.to_string(),
            request_id: None,
        }
    }
}

/// Appends one row for `action` on `target` by `actor`. Call it on the transaction that performs the action.
pub async fn record<'e>(
    executor: impl PgExecutor<'e>,
    actor: &Actor,
    action: &str,
    target: &str,
    details: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO herald_audit_log \
         (actor_kind, actor_key_id, actor_name, action, target, request_id, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(actor.kind.as_str())
    .bind(actor.key_id)
    .bind(&actor.name)
    .bind(action)
    .bind(truncated(target, MAX_TARGET))
    .bind(&actor.request_id)
    .bind(details)
    .execute(executor)
    .await?;
    Ok(())
}

/// One row of the audit log.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `key`, `cli` or `herald`.
    pub actor_kind: String,
    /// The API key's id, for `key`.
    pub actor_key_id: Option<i64>,
    /// The key's name, the OS user (`cli`), or what herald was doing (`herald`).
    pub actor_name: String,
    /// e.g. `queue.pause`, `dead_letter.replay`, `suppression.add`.
    pub action: String,
    pub target: String,
    pub request_id: Option<String>,
    /// Action-specific facts (a replay's new job ids, a suppression's reason, ...).
    #[schema(value_type = Object)]
    pub details: Value,
    /// The PostgreSQL role of the connection that wrote the row (set by the database, not by the caller).
    pub db_user: String,
    /// That connection's client address, if it came over TCP.
    pub db_client: Option<String>,
}

/// What to list: newest first, optionally one action, before a cursor.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor_key_id: Option<i64>,
    pub since: Option<DateTime<Utc>>,
    /// Only rows with a smaller id (the paging cursor).
    pub before_id: Option<i64>,
}

/// How long one read of the log may take: a filter that matches nothing in a large log must not hold a
/// connection for minutes.
const LIST_TIMEOUT: &str = "5s";

/// Up to `limit` rows matching `filter`, newest first. The statement names only the filters that are set (each
/// combination gets its own plan, so the index for the filter is used), and runs under a statement timeout.
pub async fn list(
    pool: &PgPool,
    filter: &AuditFilter,
    limit: i64,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let mut query = sqlx::QueryBuilder::new(
        "SELECT id, at, actor_kind, actor_key_id, actor_name, action, target, request_id, details, \
                db_user, db_client::text AS db_client \
         FROM herald_audit_log WHERE true",
    );
    if let Some(action) = &filter.action {
        query.push(" AND action = ").push_bind(action);
    }
    if let Some(key_id) = filter.actor_key_id {
        query.push(" AND actor_key_id = ").push_bind(key_id);
    }
    if let Some(since) = filter.since {
        query.push(" AND at >= ").push_bind(since);
    }
    if let Some(before_id) = filter.before_id {
        query.push(" AND id < ").push_bind(before_id);
    }
    query.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("SET LOCAL statement_timeout = '{LIST_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    let rows = query.build_query_as().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows)
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_on_character_boundaries() {
        assert_eq!(truncated("abc", 2), "ab");
        assert_eq!(truncated("é", 1), "");
        let actor = Actor::key(1, "ops", Some(&"x".repeat(500)));
        assert_eq!(actor.request_id.map(|id| id.len()), Some(MAX_REQUEST_ID));
    }

    #[test]
    fn the_command_line_is_named_by_its_user() {
        let actor = Actor::cli();
        assert_eq!(actor.kind, ActorKind::Cli);
        assert!(!actor.name.is_empty());
    }
}
