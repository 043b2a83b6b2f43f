//! `GET /v1/audit`: the audit log (admin), newest first with cursor paging. The log itself is `crate::audit`.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::{AdminScope, Authorized};
use super::error::{ApiError, Problem};
use super::extract::{ApiQuery, finish_page, page_params};
use super::responses::AdminAuth;
use crate::audit::{self, AuditEntry, AuditFilter};

/// Longest action name a filter may name (actions are short dotted words such as `dead_letter.replay`).
const MAX_ACTION: usize = 64;

/// Filters for reading the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this action, e.g. `queue.pause` or `key.revoke`.
    #[param(pattern = "^[a-z_.]{1,64}$")]
    pub action: Option<String>,
    /// Only actions by this API key.
    #[param(minimum = 1)]
    pub key_id: Option<i64>,
    /// Only actions at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub items: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Who did what, newest first: keys created or revoked, queues and schedules paused or resumed, dead letters
/// replayed or deleted, suppressions changed, workflows saved, jobs and runs cancelled, runs retried.
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of the audit log", body = AuditPage),
        (status = 400, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad action, limit or cursor", body = Problem, content_type = "application/problem+json"),
        AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn list_audit(
    State(state): State<ApiState>,
    _: Authorized<AdminScope>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let (limit, before_id) = page_params(query.limit, query.cursor.as_deref())?;
    if let Some(action) = &query.action
        && (action.is_empty()
            || action.len() > MAX_ACTION
            || !action
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.'))
    {
        return Err(ApiError::field(
            "action",
            "must be 1-64 characters of a-z, `_` and `.`",
        ));
    }
    if query.key_id.is_some_and(|id| id < 1) {
        return Err(ApiError::field("key_id", "must be a key id (1 or more)"));
    }
    let filter = AuditFilter {
        action: query.action,
        actor_key_id: query.key_id,
        since: query.since,
        before_id,
    };
    // One extra row tells whether there is a next page.
    let mut items = audit::list(&state.pool, &filter, limit + 1).await?;
    let next_cursor = finish_page(&mut items, limit, |entry| entry.id);
    Ok(Json(AuditPage { items, next_cursor }))
}
