//! API keys: created by `herald keys create`, stored as SHA-256 digests, each with scopes. The key itself is
//! printed once and never stored; the digest is computed here, so the plaintext never reaches PostgreSQL (where
//! `log_statement` would write it to the server's log).
//!
//! A key is `hk_` and 48 lowercase hex digits (24 random bytes); anything else is refused before any lookup.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::audit::{self, Actor};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Enqueue and cancel jobs.
    Enqueue,
    /// Read jobs, queues, dead letters, workers, metrics.
    Read,
    /// Pause/resume queues, replay and delete dead letters.
    Admin,
    /// Send events (`POST /v1/events`).
    Events,
    /// Scrape `GET /metrics`.
    Metrics,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Enqueue,
        Scope::Read,
        Scope::Admin,
        Scope::Events,
        Scope::Metrics,
    ];

    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "enqueue" => Some(Scope::Enqueue),
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            "events" => Some(Scope::Events),
            "metrics" => Some(Scope::Metrics),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Enqueue => "enqueue",
            Scope::Read => "read",
            Scope::Admin => "admin",
            Scope::Events => "events",
            Scope::Metrics => "metrics",
        }
    }
}

const CREATE: &str = "INSERT INTO herald_api_keys (name, prefix, key_hash, scopes) \
     VALUES ($1, $2, $3, $4) RETURNING id, created_at";
const LOOKUP: &str =
    "SELECT id, name, scopes FROM herald_api_keys WHERE key_hash = $1 AND revoked_at IS NULL";
/// Notes a key's use, at most once a minute per key for the whole fleet, and never waiting: a row another
/// process is updating right now is skipped (it is being noted anyway).
const NOTE_USE: &str = "UPDATE herald_api_keys SET last_used_at = now() WHERE id = ( \
     SELECT id FROM herald_api_keys WHERE id = $1 \
       AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute') \
     FOR UPDATE SKIP LOCKED)";

/// The prefix every key starts with.
const KEY_PREFIX: &str = "hk_";
/// Hex digits after the prefix (24 random bytes).
const KEY_HEX_DIGITS: usize = 48;

/// Whether `key` has the shape of a herald key (`hk_` + 48 lowercase hex digits). Cheap, and checked before
/// anything else: a string that cannot be a key costs no lookup and no cache entry.
pub fn well_formed(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|hex| {
        hex.len() == KEY_HEX_DIGITS
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A key's SHA-256 digest: what is stored, looked up and cached.
pub fn digest(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}
const LIST: &str = "SELECT id, name, prefix, scopes, created_at, revoked_at, last_used_at \
     FROM herald_api_keys ORDER BY id";
const REVOKE: &str =
    "UPDATE herald_api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL";
const REVOKE_NAMED: &str = "UPDATE herald_api_keys SET revoked_at = now() \
     WHERE name = $1 AND revoked_at IS NULL RETURNING id";

/// A key as `herald keys list` shows it (never the key itself).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KeyRecord {
    pub id: i64,
    pub name: String,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When the key last authenticated a request (to within a minute plus `api.key_cache_secs`).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Creates a key and returns it (the only time it is visible) with its record. Audited as `key.create`.
pub async fn create(
    pool: &PgPool,
    actor: &Actor,
    name: &str,
    scopes: &[Scope],
) -> Result<(String, KeyRecord), sqlx::Error> {
    let secret: [u8; 24] = rand::rng().random();
    let key = format!(
        "hk_{}",
        secret
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let prefix = key.chars().take(11).collect();
    let scope_names: Vec<String> = scopes.iter().map(|s| s.as_str().to_string()).collect();
    let mut tx = pool.begin().await?;
    let (id, created_at) = sqlx::query_as(CREATE)
        .bind(name)
        .bind(&prefix)
        .bind(digest(&key).as_slice())
        .bind(&scope_names)
        .fetch_one(&mut *tx)
        .await?;
    let details = json!({ "name": name, "scopes": scope_names });
    audit::record(&mut *tx, actor, "key.create", &format!("key:{id}"), details).await?;
    tx.commit().await?;
    let record = KeyRecord {
        id,
        name: name.to_string(),
        prefix,
        scopes: scope_names,
        created_at,
        revoked_at: None,
        last_used_at: None,
    };
    Ok((key, record))
}

/// A live key, as authentication needs it.
#[derive(Debug, Clone)]
pub struct LiveKey {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<Scope>,
}

/// The live key whose digest is `digest`.
pub async fn lookup(pool: &PgPool, digest: &[u8; 32]) -> Result<Option<LiveKey>, sqlx::Error> {
    let found: Option<(i64, String, Vec<String>)> = sqlx::query_as(LOOKUP)
        .bind(digest.as_slice())
        .fetch_optional(pool)
        .await?;
    Ok(found.map(|(id, name, scopes)| LiveKey {
        id,
        name,
        scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
    }))
}

/// Records that key `id` authenticated a request (`last_used_at`, to the minute). Authentication calls it off
/// the request's path, when its cache misses.
pub async fn note_use(pool: &PgPool, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(NOTE_USE)
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn list(pool: &PgPool) -> Result<Vec<KeyRecord>, sqlx::Error> {
    sqlx::query_as(LIST).fetch_all(pool).await
}

/// Revokes a key; false if there is no live key with that id. Audited as `key.revoke`.
pub async fn revoke(pool: &PgPool, actor: &Actor, id: i64) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let revoked = sqlx::query(REVOKE)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if revoked {
        audit::record(
            &mut *tx,
            actor,
            "key.revoke",
            &format!("key:{id}"),
            json!({}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(revoked)
}

/// Revokes every live key named `name`; returns how many. Each is audited as `key.revoke`.
pub async fn revoke_named(pool: &PgPool, actor: &Actor, name: &str) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(REVOKE_NAMED)
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
    for id in &ids {
        let details = json!({ "name": name });
        audit::record(&mut *tx, actor, "key.revoke", &format!("key:{id}"), details).await?;
    }
    tx.commit().await?;
    Ok(ids.len() as u64)
}
