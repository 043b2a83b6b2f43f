//! The recipient store: profiles, devices, preferences and topic membership (`herald_recipients`,
//! `herald_recipient_devices`, `herald_topic_members`). Every change an operator or a service makes here is
//! audited in its own transaction.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;

use super::profile::{self, Profile};
use super::types::{DeviceProvider, EmailAddress, Locale, PhoneNumber, TimeZone};
use super::{Preferences, RecipientsError, sql};
use crate::audit::{self, Actor};

/// Most recipients one batch call (profiles, topic members) may name.
pub const MAX_BATCH: usize = 1_000;

/// A profile as the API answers it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Recipient {
    pub id: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    #[schema(value_type = Vec<DeviceView>)]
    pub devices: Json<Vec<DeviceView>>,
    /// Direct-message handles by chat provider.
    #[schema(value_type = Object)]
    pub chat: Json<Value>,
    #[schema(value_type = Object)]
    pub data: Json<Value>,
    #[schema(value_type = Preferences)]
    pub preferences: Json<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One of a recipient's push devices.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    pub provider: DeviceProvider,
    /// The FCM token, the APNs token (lowercase hex), or the Web Push subscription as compact JSON.
    pub token: String,
    pub label: Option<String>,
    /// False once a provider said the device is gone: it is not sent to again.
    pub active: bool,
    pub deactivated_at: Option<DateTime<Utc>>,
    pub deactivated_reason: Option<String>,
}

impl Recipient {
    /// The stored profile as a document (what a PATCH merges into).
    fn document(&self) -> Value {
        let mut doc = Map::new();
        for (key, value) in [
            ("email", &self.email),
            ("phone", &self.phone),
            ("locale", &self.locale),
            ("timezone", &self.timezone),
        ] {
            if let Some(value) = value {
                doc.insert(key.into(), Value::String(value.clone()));
            }
        }
        let devices: Vec<Value> = self
            .devices
            .0
            .iter()
            .map(|d| json!({"provider": d.provider, "token": d.token, "label": d.label}))
            .collect();
        doc.insert("devices".into(), Value::Array(devices));
        doc.insert("chat".into(), self.chat.0.clone());
        doc.insert("data".into(), self.data.0.clone());
        Value::Object(doc)
    }
}

/// Creates or replaces a profile (its preferences stay); answers whether it is new. Audited.
pub async fn put(
    pool: &PgPool,
    actor: &Actor,
    id: &str,
    profile: &Profile,
) -> Result<bool, RecipientsError> {
    let mut tx = crate::db::begin_bounded(pool, &[]).await?;
    let created = write(&mut tx, id, profile).await?;
    let action = if created {
        "recipient.create"
    } else {
        "recipient.replace"
    };
    audit::record(&mut *tx, actor, action, id, json!({})).await?;
    tx.commit().await?;
    Ok(created)
}

/// Writes many profiles in one transaction, in id order (an id given twice: the last one wins); answers whether
/// each (by id) is new. Audited as one entry.
pub async fn put_many(
    pool: &PgPool,
    actor: &Actor,
    profiles: &[(String, Profile)],
) -> Result<std::collections::BTreeMap<String, bool>, RecipientsError> {
    let mut tx = crate::db::begin_bounded(pool, &[]).await?;
    let created = put_many_in(&mut tx, actor, profiles).await?;
    tx.commit().await?;
    Ok(created)
}

/// [`put_many`] inside the caller's transaction (the Kafka bridge's, with its offsets).
pub async fn put_many_in(
    conn: &mut PgConnection,
    actor: &Actor,
    profiles: &[(String, Profile)],
) -> Result<std::collections::BTreeMap<String, bool>, sqlx::Error> {
    let mut latest = std::collections::BTreeMap::new();
    for (id, profile) in profiles {
        latest.insert(id.as_str(), profile);
    }
    let mut created = std::collections::BTreeMap::new();
    for (id, profile) in &latest {
        created.insert(id.to_string(), write(conn, id, profile).await?);
    }
    if !latest.is_empty() {
        let ids: Vec<&str> = latest.keys().take(20).copied().collect();
        let details = json!({"count": latest.len(), "first_ids": ids});
        audit::record(&mut *conn, actor, "recipient.batch", "recipients", details).await?;
    }
    Ok(created)
}

async fn write(conn: &mut PgConnection, id: &str, profile: &Profile) -> Result<bool, sqlx::Error> {
    let chat: Map<String, Value> = profile
        .chat
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let created: bool = sqlx::query_scalar(sql::UPSERT)
        .bind(id)
        .bind(profile.email.as_ref().map(EmailAddress::as_str))
        .bind(profile.phone.as_ref().map(PhoneNumber::as_str))
        .bind(profile.locale.as_ref().map(Locale::as_str))
        .bind(profile.timezone.as_ref().map(TimeZone::name))
        .bind(Json(Value::Object(chat)))
        .bind(Json(Value::Object(profile.data.clone())))
        .fetch_one(&mut *conn)
        .await?;
    let devices = &profile.devices;
    sqlx::query(sql::REPLACE_DEVICES)
        .bind(id)
        .bind(
            devices
                .iter()
                .map(|d| d.provider.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(devices.iter().map(|d| d.token.as_str()).collect::<Vec<_>>())
        .bind(
            devices
                .iter()
                .map(|d| d.label.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    Ok(created)
}

/// Applies a JSON merge patch (RFC 7396) to a stored profile, checks the result as a whole, and writes it.
pub async fn patch(
    pool: &PgPool,
    actor: &Actor,
    id: &str,
    patch: &Value,
) -> Result<Recipient, RecipientsError> {
    profile::check_patch(patch).map_err(RecipientsError::Invalid)?;
    let mut tx = crate::db::begin_bounded(pool, &[]).await?;
    lock(&mut tx, id).await?;
    let current = fetch(&mut tx, id).await?.ok_or_else(|| not_found(id))?;
    let mut document = current.document();
    profile::merge_patch(&mut document, patch);
    let profile = Profile::parse(&document, false).map_err(RecipientsError::Invalid)?;
    write(&mut tx, id, &profile).await?;
    let fields: Vec<&String> = patch
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    audit::record(
        &mut *tx,
        actor,
        "recipient.update",
        id,
        json!({"fields": fields}),
    )
    .await?;
    let updated = fetch(&mut tx, id).await?.ok_or_else(|| not_found(id))?;
    tx.commit().await?;
    Ok(updated)
}

pub async fn get(pool: &PgPool, id: &str) -> Result<Option<Recipient>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    fetch(&mut conn, id).await
}

async fn fetch(conn: &mut PgConnection, id: &str) -> Result<Option<Recipient>, sqlx::Error> {
    sqlx::query_as(&sql::get())
        .bind(id)
        .fetch_optional(conn)
        .await
}

async fn lock(conn: &mut PgConnection, id: &str) -> Result<Value, RecipientsError> {
    let preferences: Option<Json<Value>> = sqlx::query_scalar(sql::LOCK)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    preferences.map(|p| p.0).ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> RecipientsError {
    RecipientsError::NotFound(id.to_string())
}

/// Which profiles a list shows.
#[derive(Debug, Default)]
pub struct ListFilter<'a> {
    /// The last id of the previous page.
    pub after: Option<&'a str>,
    pub email: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub limit: i64,
}

/// A page of profiles in id order.
pub async fn list(pool: &PgPool, filter: &ListFilter<'_>) -> Result<Vec<Recipient>, sqlx::Error> {
    sqlx::query_as(&sql::list())
        .bind(filter.after)
        .bind(filter.email)
        .bind(filter.phone)
        .bind(filter.limit)
        .fetch_all(pool)
        .await
}

/// Deletes a profile inside the caller's transaction (the erase that scrubs what runs and deliveries hold of
/// them is the workflow engine's); answers whether there was one.
pub async fn delete_in(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(sql::DELETE).bind(id).execute(conn).await?;
    Ok(done.rows_affected() > 0)
}

/// A recipient's preferences; `None` if there is no such recipient.
pub async fn preferences(pool: &PgPool, id: &str) -> Result<Option<Preferences>, RecipientsError> {
    let stored: Option<Json<Value>> =
        sqlx::query_scalar("SELECT preferences FROM herald_recipients WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(stored.map(|p| parse_stored(&p.0)))
}

/// A stored preferences document (checked when written; anything unreadable reads as "nothing set").
fn parse_stored(value: &Value) -> Preferences {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

/// Replaces a recipient's preferences. Audited.
pub async fn set_preferences(
    pool: &PgPool,
    actor: &Actor,
    id: &str,
    preferences: &Preferences,
) -> Result<(), RecipientsError> {
    let problems = preferences.check();
    if !problems.is_empty() {
        return Err(RecipientsError::Invalid(problems));
    }
    let mut tx = crate::db::begin_bounded(pool, &[]).await?;
    lock(&mut tx, id).await?;
    store_preferences(&mut tx, id, preferences).await?;
    audit::record(
        &mut *tx,
        actor,
        "recipient.preferences",
        id,
        json!(preferences),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn store_preferences(
    conn: &mut PgConnection,
    id: &str,
    preferences: &Preferences,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql::SET_PREFERENCES)
        .bind(id)
        .bind(Json(preferences))
        .execute(conn)
        .await?;
    Ok(())
}

/// What an unsubscribe link does (see [`Preferences::opt_out`]). Audited as the recipient's own act, once: a
/// second click changes and records nothing.
pub async fn opt_out(
    pool: &PgPool,
    id: &str,
    channel: crate::channels::ChannelKind,
    workflow: &str,
    category: Option<&str>,
) -> Result<(), RecipientsError> {
    let mut tx = crate::db::begin_bounded(pool, &[]).await?;
    let stored = lock(&mut tx, id).await?;
    // A document this version cannot read (written by a newer one) is not overwritten with a default.
    let mut preferences: Preferences = serde_json::from_value(stored).map_err(|e| {
        RecipientsError::Invalid(vec![(
            "preferences".into(),
            format!("stored preferences unreadable: {e}"),
        )])
    })?;
    if !preferences.opt_out(channel, workflow, category) {
        return Ok(());
    }
    store_preferences(&mut tx, id, &preferences).await?;
    let details = json!({"channel": channel.as_str(), "workflow": workflow, "category": category});
    audit::record(
        &mut *tx,
        &Actor::herald("unsubscribe link"),
        "recipient.unsubscribe",
        id,
        details,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What a send needs of a recipient (see [`send_profile`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SendProfile {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub chat: Json<std::collections::BTreeMap<String, String>>,
    pub data: Json<Value>,
    pub preferences: Json<Value>,
    /// Active devices as (provider, token).
    pub devices: Json<Vec<(String, String)>>,
}

impl SendProfile {
    /// The recipient's preferences; `None` if the stored document cannot be read (written by a newer version):
    /// the send then does not go out (fail closed), rather than ignore every opt-out.
    pub fn preferences(&self) -> Option<Preferences> {
        serde_json::from_value(self.preferences.0.clone()).ok()
    }

    /// The stored zone (UTC if none, or one this build does not know).
    pub fn zone(&self) -> chrono_tz::Tz {
        self.timezone
            .as_deref()
            .and_then(|z| TimeZone::parse(z).ok())
            .map_or(chrono_tz::UTC, |z| z.0)
    }

    /// The active devices of one provider.
    pub fn devices_of(&self, provider: &str) -> impl Iterator<Item = &str> {
        self.devices
            .0
            .iter()
            .filter(move |(p, _)| p == provider)
            .map(|(_, token)| token.as_str())
    }

    /// The profile as templates see it (`{{ recipient.email }}`).
    pub fn template_vars(&self, id: &str) -> Value {
        json!({
            "id": id, "email": self.email, "phone": self.phone, "locale": self.locale,
            "timezone": self.timezone, "data": self.data.0,
        })
    }
}

/// A recipient's addresses, devices and preferences for a send; `None` if there is no such recipient.
pub async fn send_profile(pool: &PgPool, id: &str) -> Result<Option<SendProfile>, sqlx::Error> {
    sqlx::query_as(sql::SEND_PROFILE)
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Marks a device gone (a provider answered that it is unregistered); answers how many profiles listed it.
pub async fn deactivate_device(
    pool: &PgPool,
    provider: &str,
    token: &str,
    reason: &str,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(sql::DEACTIVATE_DEVICE)
        .bind(provider)
        .bind(token)
        .bind(reason)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// A topic key: 1-128 characters of `[A-Za-z0-9_.:-]`.
pub fn valid_topic(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// Adds recipients to a topic; every id must have a profile (the unknown ones are the error, and nothing is
/// added). Answers how many were not members yet. Audited.
pub async fn add_members(
    pool: &PgPool,
    actor: &Actor,
    topic: &str,
    ids: &[String],
) -> Result<u64, RecipientsError> {
    let mut tx = crate::db::begin_bounded(pool, &[]).await?;
    let unknown: Vec<String> = sqlx::query_scalar(sql::UNKNOWN_IDS)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
    if !unknown.is_empty() {
        let problems = unknown
            .into_iter()
            .take(20)
            .map(|id| {
                (
                    "recipients".to_string(),
                    format!("no recipient has the id `{id}`"),
                )
            })
            .collect();
        return Err(RecipientsError::Invalid(problems));
    }
    let added = sqlx::query(sql::ADD_MEMBERS)
        .bind(topic)
        .bind(ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let details = json!({"requested": ids.len(), "added": added});
    audit::record(&mut *tx, actor, "topic.add", topic, details).await?;
    tx.commit().await?;
    Ok(added)
}

/// Removes recipients from a topic; answers how many were members. Audited.
pub async fn remove_members(
    pool: &PgPool,
    actor: &Actor,
    topic: &str,
    ids: &[String],
) -> Result<u64, RecipientsError> {
    let mut tx = crate::db::begin_bounded(pool, &[]).await?;
    let removed = sqlx::query(sql::REMOVE_MEMBERS)
        .bind(topic)
        .bind(ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let details = json!({"requested": ids.len(), "removed": removed});
    audit::record(&mut *tx, actor, "topic.remove", topic, details).await?;
    tx.commit().await?;
    Ok(removed)
}

/// A page of `topic`'s member ids in id order: after `after` (or from the start), up to `until` (inclusive, or
/// to the end), at most `limit`.
pub async fn members(
    conn: impl sqlx::PgExecutor<'_>,
    topic: &str,
    after: Option<&str>,
    until: Option<&str>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let statement = if until.is_some() {
        sql::MEMBERS_UNTIL
    } else {
        sql::MEMBERS
    };
    let query = sqlx::query_scalar(statement)
        .bind(topic)
        .bind(after)
        .bind(limit);
    match until {
        Some(until) => query.bind(until).fetch_all(conn).await,
        None => query.fetch_all(conn).await,
    }
}

/// How many members `topic` has, counting no further than `cap` (a count reads every member it counts).
pub async fn count_members(
    conn: impl sqlx::PgExecutor<'_>,
    topic: &str,
    cap: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sql::COUNT_MEMBERS)
        .bind(topic)
        .bind(cap)
        .fetch_one(conn)
        .await
}

/// Every `every`-th member id of `topic` in id order, at most `limit` of them: where to cut a topic into equal
/// ranges.
pub async fn every_nth_member(
    conn: impl sqlx::PgExecutor<'_>,
    topic: &str,
    every: i64,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(sql::EVERY_NTH_MEMBER)
        .bind(topic)
        .bind(every)
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// The secret `name`, made (random, 32 bytes) and stored for the whole fleet if there is none yet.
pub async fn secret(pool: &PgPool, name: &str) -> Result<Vec<u8>, sqlx::Error> {
    let fresh: [u8; 32] = rand::random();
    // Two processes starting at once: the one whose insert lost reads the winner's on the next try.
    for _ in 0..3 {
        let stored: Option<Vec<u8>> = sqlx::query_scalar(sql::SECRET)
            .bind(name)
            .bind(&fresh[..])
            .fetch_optional(pool)
            .await?;
        if let Some(secret) = stored {
            return Ok(secret);
        }
    }
    Err(sqlx::Error::RowNotFound)
}

#[cfg(test)]
mod tests {
    #[test]
    fn topic_keys() {
        assert!(super::valid_topic("release-notes"));
        assert!(super::valid_topic("tenant:42.news_v2"));
        assert!(!super::valid_topic(""));
        assert!(!super::valid_topic("a b"));
        assert!(!super::valid_topic(&"x".repeat(129)));
    }
}
