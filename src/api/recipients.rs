//! `/v1/recipients`, `/v1/topics`, `/v1/fanouts` and `/v1/unsubscribe`: the people herald notifies, their
//! preferences, the topics that group them, and the one-click unsubscribe links their emails carry. See
//! `docs/recipients.md`.
//!
//! Scopes: `read` to look; `enqueue` to write profiles, preferences and topics (services keep them current as
//! they enqueue); `admin` to erase. `POST /v1/unsubscribe/{token}` needs no key: the signed token is the
//! authority, and mail clients call it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::{AdminScope, Authorized, EnqueueScope, ReadScope};
use super::error::{ApiError, FieldError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, DEFAULT_PAGE, MAX_PAGE};
use super::responses::{AdminAuth, EnqueueAuth, JsonBody, ReadAuth};
use crate::recipients::store::{self, ListFilter, MAX_BATCH};
use crate::recipients::types::{DeviceProvider, valid_key};
use crate::recipients::{Preferences, Profile, Recipient, RecipientId};
use crate::workflow::fanout::Fanout;

/// A profile document (`PUT`; a `PATCH` is a JSON merge patch of the same shape, where `null` clears a field).
/// Every field is optional; a `PUT` clears what it leaves out. Time zones are checked against the IANA database and
/// device tokens against their provider's format, which this schema cannot state: 422 names the field.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipientDocument {
    /// An email address (`local@example.com`), at most 254 characters.
    #[schema(max_length = 254)]
    pub email: Option<String>,
    /// E.164: `+` and 7-15 digits.
    #[schema(pattern = "^\\+[1-9][0-9]{6,14}$")]
    pub phone: Option<String>,
    /// A BCP 47 language tag (`en`, `pt-BR`).
    #[schema(max_length = 64)]
    pub locale: Option<String>,
    /// An IANA time zone name (`Europe/Paris`); quiet hours are read in it (UTC if absent).
    pub timezone: Option<String>,
    /// Push devices, at most 20.
    #[schema(max_items = 20)]
    pub devices: Option<Vec<DeviceDocument>>,
    /// Direct-message handles by chat provider (`{"slack": "U024BE7LH"}`), at most 10.
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    pub chat: Option<Value>,
    /// Your own data about the recipient (templates see it as `recipient.data`): at most 16 KiB as JSON.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// A push device.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceDocument {
    pub provider: DeviceProvider,
    /// An FCM registration token, an APNs device token (hex), or a Web Push subscription
    /// (`{"endpoint", "keys": {"p256dh", "auth"}}`, as an object or its JSON text).
    #[schema(value_type = super::schemas::StorableJson)]
    pub token: Value,
    /// Your name for it (`Ada's iPhone`).
    #[schema(max_length = 255)]
    pub label: Option<String>,
}

fn recipient_id(id: &str) -> Result<RecipientId, ApiError> {
    RecipientId::parse(id).map_err(|e| ApiError::field("id", e))
}

fn profile(body: &Map<String, Value>) -> Result<Profile, ApiError> {
    Profile::parse(&Value::Object(body.clone()), false).map_err(validation)
}

fn validation(problems: Vec<(String, String)>) -> ApiError {
    ApiError::validation(
        problems
            .into_iter()
            .map(|(field, message)| FieldError { field, message })
            .collect(),
    )
}

const ID_PARAM: &str = "Your id for the recipient: 1-255 characters, no control characters, no white space at either end";

/// Create or replace a recipient's profile (preferences are kept: they have their own endpoint).
#[utoipa::path(
    put, path = "/v1/recipients/{id}", tag = "recipients",
    params(("id" = String, Path, description = ID_PARAM, max_length = 255, pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$")),
    request_body = RecipientDocument,
    responses(
        (status = 201, description = "Created", body = Recipient),
        (status = 200, description = "Replaced", body = Recipient),
        (status = 422, description = "A field is invalid (each one named)", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]))
)]
pub async fn put_recipient(
    State(state): State<ApiState>,
    caller: Authorized<EnqueueScope>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let id = recipient_id(&id)?;
    let profile = profile(&body)?;
    let created = store::put(&state.pool, &caller.actor, id.as_str(), &profile).await?;
    let stored = found(store::get(&state.pool, id.as_str()).await?, id.as_str())?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored)).into_response())
}

fn found(recipient: Option<Recipient>, id: &str) -> Result<Recipient, ApiError> {
    recipient.ok_or_else(|| ApiError::not_found(format!("no recipient has the id `{id}`")))
}

/// Change some fields of a profile: a JSON merge patch (RFC 7396), `null` clears a field.
#[utoipa::path(
    patch, path = "/v1/recipients/{id}", tag = "recipients",
    params(("id" = String, Path, description = ID_PARAM, max_length = 255, pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$")),
    request_body = RecipientDocument,
    responses(
        (status = 200, description = "Updated", body = Recipient),
        (status = 404, description = "No such recipient", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid (each one named)", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]))
)]
pub async fn patch_recipient(
    State(state): State<ApiState>,
    caller: Authorized<EnqueueScope>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<Recipient>, ApiError> {
    let id = recipient_id(&id)?;
    // Unknown fields are refused before the merge (which would otherwise keep them out of sight).
    Profile::parse(&Value::Object(unnulled(&body)), false).map_err(validation)?;
    let patch = Value::Object(body);
    Ok(Json(
        store::patch(&state.pool, &caller.actor, id.as_str(), &patch).await?,
    ))
}

/// A patch without its nulls (which clear fields), to check the values it sets.
fn unnulled(body: &Map<String, Value>) -> Map<String, Value> {
    body.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match (k.as_str(), v) {
            // `data` and `chat` merge: their own nulls are removals, the rest is checked after the merge.
            ("data" | "chat", Value::Object(_)) => (k.clone(), Value::Object(Map::new())),
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

/// A recipient's profile, devices (with inactive ones and why) and preferences.
#[utoipa::path(
    get, path = "/v1/recipients/{id}", tag = "recipients",
    params(("id" = String, Path, description = ID_PARAM, max_length = 255, pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$")),
    responses(
        (status = 200, description = "The recipient", body = Recipient),
        (status = 404, description = "No such recipient", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn get_recipient(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Recipient>, ApiError> {
    let id = recipient_id(&id)?;
    Ok(Json(found(
        store::get(&state.pool, id.as_str()).await?,
        id.as_str(),
    )?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Erasure {
    /// The erasure: the profile is gone; its history is being scrubbed by a job.
    pub erasure: i64,
}

/// Erase a recipient (GDPR): the profile, devices and topic memberships go now; their addresses and personal data
/// are scrubbed from runs, steps, deliveries and events by a job, in batches. Audited.
#[utoipa::path(
    delete, path = "/v1/recipients/{id}", tag = "recipients",
    params(("id" = String, Path, description = ID_PARAM, max_length = 255, pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$")),
    responses(
        (status = 202, description = "Erased (also an id without a profile: runs can be started for one); the scrub runs in the background", body = Erasure),
        (status = 422, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn delete_recipient(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = recipient_id(&id)?;
    let erasure = state
        .engine
        .erase_recipient(&admin.actor, id.as_str())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(Erasure { erasure })).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecipientQuery {
    /// Only the recipient with this email address (any case).
    #[param(
        max_length = 254,
        pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$"
    )]
    pub email: Option<String>,
    /// Only recipients with this phone number (E.164).
    #[param(
        max_length = 16,
        pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$"
    )]
    pub phone: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    #[param(
        max_length = 255,
        pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$"
    )]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecipientPage {
    /// In id order.
    pub items: Vec<Recipient>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::field(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ))
    }
}

/// Cuts a page fetched with `limit + 1` rows; the next cursor is the last kept id.
fn page<T>(items: &mut Vec<T>, limit: i64, id: impl Fn(&T) -> &str) -> Option<String> {
    if items.len() as i64 <= limit {
        return None;
    }
    items.truncate(limit as usize);
    items.last().map(|item| id(item).to_string())
}

/// Recipients in id order, optionally found by email or phone.
#[utoipa::path(
    get, path = "/v1/recipients", tag = "recipients",
    params(RecipientQuery),
    responses(
        (status = 200, description = "A page of recipients", body = RecipientPage),
        (status = 400, description = "Unknown or malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad filter or page", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn list_recipients(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiQuery(query): ApiQuery<RecipientQuery>,
) -> Result<Json<RecipientPage>, ApiError> {
    let limit = limit(query.limit)?;
    for (field, value, most) in [
        ("email", &query.email, 254),
        ("phone", &query.phone, 16),
        ("cursor", &query.cursor, 255),
    ] {
        if value.as_deref().is_some_and(|v| v.chars().count() > most) {
            return Err(ApiError::field(field, format!("at most {most} characters")));
        }
        if value.as_deref().is_some_and(|v| !valid_key(v)) {
            return Err(ApiError::field(
                field,
                "must be 1-255 characters without control characters",
            ));
        }
    }
    let filter = ListFilter {
        after: query.cursor.as_deref(),
        email: query.email.as_deref(),
        phone: query.phone.as_deref(),
        limit: limit + 1,
    };
    let mut items = store::list(&state.pool, &filter).await?;
    let next_cursor = page(&mut items, limit, |r| &r.id);
    Ok(Json(RecipientPage { items, next_cursor }))
}

/// Many profiles at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipientBatch {
    /// 1-1,000 profile documents, each with its `id`; an id given twice: the last one wins.
    #[schema(min_items = 1, max_items = 1000, value_type = Vec<Object>)]
    pub recipients: Vec<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemResult {
    /// The item's id, as given (absent if it had none).
    pub id: Option<String>,
    /// `created`, `updated` or `invalid`.
    pub status: String,
    /// What was wrong with an `invalid` item; nothing of it was written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecipientBatchResult {
    /// One per item, in order.
    pub results: Vec<BatchItemResult>,
}

/// Create or replace up to 1,000 profiles in one transaction; each item answers for itself (an invalid item is
/// not written and does not stop the others).
#[utoipa::path(
    post, path = "/v1/recipients/batch", tag = "recipients",
    request_body = RecipientBatch,
    responses(
        (status = 200, description = "Per-item results", body = RecipientBatchResult),
        (status = 422, description = "Not 1-1,000 items", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]))
)]
pub async fn batch_recipients(
    State(state): State<ApiState>,
    caller: Authorized<EnqueueScope>,
    ApiJson(body): ApiJson<RecipientBatch>,
) -> Result<Json<RecipientBatchResult>, ApiError> {
    if body.recipients.is_empty() || body.recipients.len() > MAX_BATCH {
        return Err(ApiError::field(
            "recipients",
            format!("must hold 1-{MAX_BATCH} items"),
        ));
    }
    let mut results = Vec::with_capacity(body.recipients.len());
    let mut valid = Vec::new();
    for (index, item) in body.recipients.iter().enumerate() {
        let id = item.get("id").and_then(Value::as_str);
        let parsed = match id.map(RecipientId::parse) {
            None => Err(vec![(
                "id".to_string(),
                "is required: a string".to_string(),
            )]),
            Some(Err(e)) => Err(vec![("id".to_string(), e)]),
            Some(Ok(id)) => Profile::parse(item, true).map(|p| (id, p)),
        };
        let errors = match parsed {
            Ok((id, profile)) => {
                valid.push((id.as_str().to_string(), profile));
                Vec::new()
            }
            Err(problems) => problems
                .into_iter()
                .map(|(field, message)| FieldError {
                    field: format!("recipients[{index}].{field}"),
                    message,
                })
                .collect(),
        };
        results.push(BatchItemResult {
            id: id.map(str::to_string),
            status: if errors.is_empty() {
                String::new()
            } else {
                "invalid".into()
            },
            errors,
        });
    }
    let created = store::put_many(&state.pool, &caller.actor, &valid).await?;
    for result in results.iter_mut().filter(|r| r.status.is_empty()) {
        let new = result.id.as_deref().and_then(|id| created.get(id)).copied();
        result.status = if new == Some(true) {
            "created"
        } else {
            "updated"
        }
        .into();
    }
    Ok(Json(RecipientBatchResult { results }))
}

/// A recipient's preferences.
#[utoipa::path(
    get, path = "/v1/recipients/{id}/preferences", tag = "recipients",
    params(("id" = String, Path, description = ID_PARAM, max_length = 255, pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$")),
    responses(
        (status = 200, description = "Their preferences", body = Preferences),
        (status = 404, description = "No such recipient", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn get_preferences(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Preferences>, ApiError> {
    let id = recipient_id(&id)?;
    let preferences = store::preferences(&state.pool, id.as_str()).await?;
    preferences
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no recipient has the id `{id}`")))
}

/// Replace a recipient's preferences: opt-outs by channel, workflow and category. Audited.
#[utoipa::path(
    put, path = "/v1/recipients/{id}/preferences", tag = "recipients",
    params(("id" = String, Path, description = ID_PARAM, max_length = 255, pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$")),
    request_body = Preferences,
    responses(
        (status = 200, description = "Stored", body = Preferences),
        (status = 404, description = "No such recipient", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown channel or bad name (each named)", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]))
)]
pub async fn put_preferences(
    State(state): State<ApiState>,
    caller: Authorized<EnqueueScope>,
    ApiPath(id): ApiPath<String>,
    ApiJson(preferences): ApiJson<Preferences>,
) -> Result<Json<Preferences>, ApiError> {
    let id = recipient_id(&id)?;
    store::set_preferences(&state.pool, &caller.actor, id.as_str(), &preferences).await?;
    Ok(Json(preferences))
}

const TOPIC_PARAM: &str = "Topic key: 1-128 characters of [A-Za-z0-9_.:-]";

/// Recipients to add to or remove from a topic.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicMembers {
    /// 1-1,000 recipient ids (each 1-255 characters, no control characters, no white space at either end).
    #[schema(min_items = 1, max_items = 1000, inline)]
    pub recipients: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopicChange {
    /// How many were added (not members yet) or removed (members until now).
    pub changed: u64,
}

/// The ids of a topic request, sorted and deduplicated; `adding` checks each is a valid id (removing ignores ids
/// that could not be members).
fn topic_request(topic: &str, body: &TopicMembers, adding: bool) -> Result<Vec<String>, ApiError> {
    if !store::valid_topic(topic) {
        return Err(ApiError::field(
            "topic",
            "must be 1-128 characters of [A-Za-z0-9_.:-]",
        ));
    }
    if body.recipients.is_empty() || body.recipients.len() > MAX_BATCH {
        return Err(ApiError::field(
            "recipients",
            format!("must hold 1-{MAX_BATCH} ids"),
        ));
    }
    let mut problems = Vec::new();
    for (i, id) in body.recipients.iter().enumerate() {
        if let (true, Err(message)) = (adding, RecipientId::parse(id)) {
            problems.push((format!("recipients[{i}]"), message));
        }
    }
    if !problems.is_empty() {
        return Err(validation(problems));
    }
    let mut ids: Vec<String> = body
        .recipients
        .iter()
        .filter(|id| valid_key(id))
        .cloned()
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Add recipients to a topic (a topic exists while it has members). Every id must have a profile.
#[utoipa::path(
    put, path = "/v1/topics/{key}/recipients", tag = "recipients",
    params(("key" = String, Path, description = TOPIC_PARAM, pattern = "^[A-Za-z0-9_.:-]{1,128}$")),
    request_body = TopicMembers,
    responses(
        (status = 200, description = "Added", body = TopicChange),
        (status = 422, description = "Bad key, bad id, or an id without a profile (named)", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]))
)]
pub async fn add_members(
    State(state): State<ApiState>,
    caller: Authorized<EnqueueScope>,
    ApiPath(topic): ApiPath<String>,
    ApiJson(body): ApiJson<TopicMembers>,
) -> Result<Json<TopicChange>, ApiError> {
    let ids = topic_request(&topic, &body, true)?;
    let changed = store::add_members(&state.pool, &caller.actor, &topic, &ids).await?;
    Ok(Json(TopicChange { changed }))
}

/// Remove recipients from a topic.
#[utoipa::path(
    delete, path = "/v1/topics/{key}/recipients", tag = "recipients",
    params(("key" = String, Path, description = TOPIC_PARAM, pattern = "^[A-Za-z0-9_.:-]{1,128}$")),
    request_body = TopicMembers,
    responses(
        (status = 200, description = "Removed", body = TopicChange),
        (status = 422, description = "Bad key or id", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]))
)]
pub async fn remove_members(
    State(state): State<ApiState>,
    caller: Authorized<EnqueueScope>,
    ApiPath(topic): ApiPath<String>,
    ApiJson(body): ApiJson<TopicMembers>,
) -> Result<Json<TopicChange>, ApiError> {
    let ids = topic_request(&topic, &body, false)?;
    let changed = store::remove_members(&state.pool, &caller.actor, &topic, &ids).await?;
    Ok(Json(TopicChange { changed }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MemberQuery {
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    #[param(
        max_length = 255,
        pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$"
    )]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberPage {
    /// Recipient ids, in id order.
    pub items: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A topic's members.
#[utoipa::path(
    get, path = "/v1/topics/{key}/recipients", tag = "recipients",
    params(("key" = String, Path, description = TOPIC_PARAM, pattern = "^[A-Za-z0-9_.:-]{1,128}$"), MemberQuery),
    responses(
        (status = 200, description = "A page of member ids (empty for a topic without members)", body = MemberPage),
        (status = 400, description = "Unknown or malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad key or page", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn list_members(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(query): ApiQuery<MemberQuery>,
) -> Result<Json<MemberPage>, ApiError> {
    if !store::valid_topic(&topic) {
        return Err(ApiError::field(
            "key",
            "must be 1-128 characters of [A-Za-z0-9_.:-]",
        ));
    }
    let limit = limit(query.limit)?;
    if query.cursor.as_deref().is_some_and(|c| !valid_key(c)) {
        return Err(ApiError::field("cursor", "not a cursor from this API"));
    }
    let mut items = store::members(
        &state.pool,
        &topic,
        query.cursor.as_deref(),
        None,
        limit + 1,
    )
    .await?;
    let next_cursor = page(&mut items, limit, |id| id);
    Ok(Json(MemberPage { items, next_cursor }))
}

/// A topic trigger's progress.
#[utoipa::path(
    get, path = "/v1/fanouts/{id}", tag = "runs",
    params(("id" = i64, Path, description = "Fan-out id")),
    responses(
        (status = 200, description = "Its progress", body = Fanout),
        (status = 400, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such fan-out", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn get_fanout(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Fanout>, ApiError> {
    Ok(Json(state.engine.fanout(id).await?))
}

/// The page an unsubscribe link opens in a browser: a button that sends the `POST`. A `GET` never unsubscribes
/// (mail scanners and link previews follow links); it checks the token, so a bad link says so at once.
#[utoipa::path(
    get, path = "/v1/unsubscribe/{token}", tag = "recipients",
    params(("token" = String, Path, description = "The token from the link", max_length = 4096)),
    responses(
        (status = 200, description = "A confirmation page", body = String, content_type = "text/html"),
        (status = 400, description = "Not a token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The signature does not match", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The link has expired", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn unsubscribe_page(
    State(state): State<ApiState>,
    ApiPath(token): ApiPath<String>,
) -> Result<Response, ApiError> {
    let signer = state
        .engine
        .unsubscribe_signer()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    signer.verify(&token, Utc::now())?;
    // A verified token is base64url and one dot: nothing in it needs escaping.
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Unsubscribe</title></head>\
         <body style=\"font-family: sans-serif; max-width: 32rem; margin: 3rem auto; padding: 0 1rem\">\
         <h1>Unsubscribe</h1><p>Stop receiving these emails?</p>\
         <form method=\"post\" action=\"/v1/unsubscribe/{token}\"><button type=\"submit\">Unsubscribe</button></form>\
         </body></html>"
    );
    let headers = [
        (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (axum::http::header::CACHE_CONTROL, "no-store"),
    ];
    Ok((headers, page).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Unsubscribed {
    pub recipient: String,
    pub channel: String,
    /// The category switched off, if the email's workflow had one; otherwise the workflow's switch.
    pub category: Option<String>,
    pub workflow: String,
}

/// One-click unsubscribe (RFC 8058): the link in an email's `List-Unsubscribe`. No API key: the token is signed
/// and expires. Turns off the email's category (or its workflow, if it has none) for its recipient.
#[utoipa::path(
    post, path = "/v1/unsubscribe/{token}", tag = "recipients",
    params(("token" = String, Path, description = "The token from the link", max_length = 4096)),
    responses(
        (status = 200, description = "Unsubscribed", body = Unsubscribed),
        (status = 400, description = "Not a token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The signature does not match", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The recipient no longer exists", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The link has expired", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn unsubscribe(
    State(state): State<ApiState>,
    ApiPath(token): ApiPath<String>,
) -> Result<Json<Unsubscribed>, ApiError> {
    let signer = state
        .engine
        .unsubscribe_signer()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let claims = signer.verify(&token, Utc::now())?;
    let channel = claims
        .channel()
        .ok_or_else(|| ApiError::bad_request("the unsubscribe link names no channel"))?;
    store::opt_out(
        &state.pool,
        &claims.r,
        channel,
        &claims.w,
        claims.c.as_deref(),
    )
    .await?;
    Ok(Json(Unsubscribed {
        recipient: claims.r,
        channel: claims.ch,
        category: claims.c,
        workflow: claims.w,
    }))
}
