//! The audit log, newest first, filterable by action and key; admin keys only, as `GET /v1/audit` is. Through
//! `crate::audit::list`.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::html::{esc, esc_short, given, query, table, time};
use super::{ApiState, PageQuery, Session, failure, page};
use crate::api::error::ApiError;
use crate::audit::{self, AuditFilter};

/// Entries a page shows.
const PAGE: i64 = 100;

#[derive(Deserialize, Default)]
pub(super) struct AuditQuery {
    action: Option<String>,
    key_id: Option<String>,
    /// Read as a number here, so that a bad one is ignored alone (not the whole query).
    before: Option<String>,
}

pub(super) async fn audit(
    State(state): State<ApiState>,
    Session(caller): Session,
    PageQuery(q): PageQuery<AuditQuery>,
) -> Response {
    if !caller.admin {
        return failure(
            Some(&caller),
            ApiError::forbidden("The audit log needs a key with the admin scope."),
        );
    }
    // The same bounds as `/v1/audit`: an action is a short dotted word, a key an id. A filter that breaks them is
    // refused, never dropped (the whole log would pass for the filtered one).
    let action = given(&q.action);
    if let Some(a) = action.filter(|a| {
        a.len() > 64
            || !a
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
    }) {
        return failure(
            Some(&caller),
            ApiError::field(
                "action",
                format!("{a:?} is not an action (a-z, `_` and `.`)"),
            ),
        );
    }
    let key_id = match given(&q.key_id).map(str::parse::<i64>) {
        Some(Ok(id)) if id >= 1 => Some(id),
        Some(_) => return failure(Some(&caller), ApiError::field("key_id", "is not a key id")),
        None => None,
    };
    let filter = AuditFilter {
        action: action.map(str::to_string),
        actor_key_id: key_id,
        since: None,
        before_id: q.before.as_deref().and_then(|b| b.trim().parse().ok()),
    };
    // One more than a page tells whether there is an older page.
    let mut entries = match audit::list(&state.pool, &filter, PAGE + 1).await {
        Ok(entries) => entries,
        Err(error) => return failure(Some(&caller), error),
    };
    let more = entries.len() as i64 > PAGE;
    entries.truncate(PAGE as usize);
    let rows: String = entries
        .iter()
        .map(|e| {
            format!(
                r#"<tr><td class="wide">{at}</td><td>{actor}</td><td>{action}</td><td>{target}</td><td><code>{details}</code></td></tr>"#,
                at = time(e.at),
                actor = match e.actor_key_id {
                    Some(key) => format!("{} (key {key})", esc(&e.actor_name)),
                    None => format!("{} ({})", esc(&e.actor_name), esc(&e.actor_kind)),
                },
                action = esc(&e.action),
                target = esc(&e.target),
                details = esc_short(&e.details.to_string(), 300),
            )
        })
        .collect();
    let key_text = key_id.map(|k| k.to_string());
    let older = match entries.last() {
        Some(last) if more => format!(
            r#"<p><a href="/ui/audit{}">Older entries →</a></p>"#,
            query(&[
                ("action", action),
                ("key_id", key_text.as_deref()),
                ("before", Some(&last.id.to_string()))
            ])
        ),
        _ => String::new(),
    };
    let body = format!(
        r#"<form class="filters" method="get" action="/ui/audit"><label>Action<input name="action" value="{action}" placeholder="queue.pause"></label><label>Key id<input name="key_id" inputmode="numeric" value="{key}"></label><button type="submit">Filter</button></form>{table}{older}"#,
        action = esc(action.unwrap_or("")),
        key = key_text.as_deref().unwrap_or(""),
        table = table(
            "audit",
            &["~At", "Who", "Action", "Target", "Details"],
            &rows,
            "No entries."
        ),
    );
    page("Audit log", Some(&caller), &body)
}
