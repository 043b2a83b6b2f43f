//! The dead letters: the newest 100 (filter by queue and kind), one letter's page (job, attempts, every error,
//! payload), replay one, delete one (after a ticked confirmation), and replay or purge every match after a page
//! showing how many it would take. Through `queue::dead_letters`, the functions `/v1/dead-letters` uses, so the
//! same audit rows (`dead_letter.replay`, `dead_letter.delete`).

use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::html::{esc, esc_short, notice, pretty, query, table, time};
use super::{ApiState, PageQuery, Session, failure, page, refuse_action};
use crate::api::auth::UiCaller;
use crate::api::error::ApiError;
use crate::api::extract::ApiPath;
use crate::queue::QueueName;
use crate::queue::dead_letters::{self, DeadLetterFilter};

/// A dead-letter list's filter (the query string, or a bulk action's form).
#[derive(Deserialize, Default)]
pub(super) struct LetterQuery {
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    n: Option<String>,
}

/// Longest kind a filter may name.
const MAX_KIND: usize = 200;

/// The filter the query names; a queue that is not a queue name or an over-long kind is refused (never dropped:
/// a bulk action whose filter silently widened would take every queue's letters).
fn filter_of(queue: Option<&str>, kind: Option<&str>) -> Result<DeadLetterFilter, ApiError> {
    let queue = queue.map(str::trim).filter(|q| !q.is_empty());
    let kind = kind.map(str::trim).filter(|k| !k.is_empty());
    if let Some(queue) = queue
        && QueueName::parse(queue).is_err()
    {
        return Err(ApiError::field(
            "queue",
            format!("{queue:?} is not a queue name"),
        ));
    }
    if kind.is_some_and(|k| k.chars().count() > MAX_KIND) {
        return Err(ApiError::field(
            "kind",
            format!("is longer than {MAX_KIND} characters"),
        ));
    }
    Ok(DeadLetterFilter {
        queue: queue.map(str::to_string),
        kind: kind.map(str::to_string),
        ..DeadLetterFilter::default()
    })
}

/// `?queue=…&kind=…` for links that keep the filter.
fn filter_query(filter: &DeadLetterFilter) -> String {
    query(&[
        ("queue", filter.queue.as_deref()),
        ("kind", filter.kind.as_deref()),
    ])
}

/// Back to the list, with what was done as a code and a number (the page words it: a link cannot put words of
/// its own on the page).
fn done_redirect(filter: &DeadLetterFilter, done: &str, n: i64) -> Response {
    let n = n.to_string();
    let url = format!(
        "/ui/dead-letters{}",
        query(&[
            ("queue", filter.queue.as_deref()),
            ("kind", filter.kind.as_deref()),
            ("done", Some(done)),
            ("n", Some(&n)),
        ])
    );
    Redirect::to(&url).into_response()
}

/// What a `done` code and its number say.
fn done_text(done: Option<&str>, n: Option<&str>) -> Option<String> {
    let n: i64 = n.and_then(|n| n.parse().ok()).unwrap_or(0);
    Some(match done? {
        "replayed" => format!("Replayed {n} dead letters."),
        "deleted" => format!("Deleted {n} dead letters."),
        "deleted-one" => format!("Deleted dead letter {n}."),
        "gone" => format!("Dead letter {n} was not there any more."),
        "already" => format!("Dead letter {n} was already replayed."),
        "unconfirmed" => "Not deleted: tick the confirmation box.".to_string(),
        _ => return None,
    })
}

/// The newest 100 dead letters (of one queue and kind, when filtered).
pub(super) async fn list(
    State(state): State<ApiState>,
    Session(caller): Session,
    PageQuery(query_string): PageQuery<LetterQuery>,
) -> Response {
    let filter = match filter_of(query_string.queue.as_deref(), query_string.kind.as_deref()) {
        Ok(filter) => filter,
        Err(error) => return failure(Some(&caller), error),
    };
    let letters = match dead_letters::list(&state.pool, &filter, None, 100).await {
        Ok(letters) => letters,
        Err(error) => return failure(Some(&caller), error),
    };
    let mut rows = String::new();
    for letter in &letters {
        rows.push_str(&format!(
            r#"<tr data-id="{id}"><td><a href="/ui/dead-letters/{id}">{id}</a></td><td>{queue}</td><td>{kind}</td><td class="n">{attempt}</td><td>{reason}</td><td class="wide">{failed}</td><td class="state">{state}</td></tr>"#,
            id = letter.id,
            queue = esc(&letter.queue),
            kind = esc(&letter.kind),
            attempt = letter.attempt,
            reason = esc_short(&letter.reason, 120),
            failed = time(letter.failed_at),
            state = letter.replayed_as.map_or("dead".to_string(), |job| format!(
                r#"replayed as <a href="/ui/jobs/{job}">job {job}</a>"#
            )),
        ));
    }
    let bulk = if caller.admin && !letters.is_empty() {
        format!(
            r#"<div class="actions"><a class="button" id="replay-all" href="/ui/dead-letters/replay{q}">Replay all that match…</a><a class="button" id="purge-all" href="/ui/dead-letters/purge{q}">Delete all that match…</a></div>"#,
            q = filter_query(&filter)
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"{notice}<form class="filters" method="get" action="/ui/dead-letters"><label>Queue<input id="queue" name="queue" value="{queue}"></label><label>Kind<input name="kind" value="{kind}"></label><button type="submit">Filter</button></form>{bulk}{table}"#,
        notice =
            notice(done_text(query_string.done.as_deref(), query_string.n.as_deref()).as_deref()),
        queue = esc(filter.queue.as_deref().unwrap_or("")),
        kind = esc(filter.kind.as_deref().unwrap_or("")),
        table = table(
            "dead-letters",
            &[
                "Id",
                "Queue",
                "Kind",
                "#Attempts",
                "Reason",
                "~Failed",
                "State"
            ],
            &rows,
            "No dead letters."
        ),
    );
    page("Dead letters", Some(&caller), &body)
}

/// What a filter covers, in words.
fn describe(filter: &DeadLetterFilter) -> String {
    match (&filter.queue, &filter.kind) {
        (None, None) => "of every queue".to_string(),
        (Some(q), None) => format!("of queue <strong>{}</strong>", esc(q)),
        (None, Some(k)) => format!("of kind <strong>{}</strong>", esc(k)),
        (Some(q), Some(k)) => format!(
            "of queue <strong>{}</strong> and kind <strong>{}</strong>",
            esc(q),
            esc(k)
        ),
    }
}

/// Which bulk action a confirmation is for.
#[derive(Clone, Copy)]
enum Bulk {
    Replay,
    Purge,
}

/// The confirmation of a bulk action: how many dead letters it would take, counted up to the database's clock
/// now. The form carries that time, so letters that fail after the operator saw the count are left alone.
async fn confirm(
    state: &ApiState,
    caller: &UiCaller,
    query_string: &LetterQuery,
    bulk: Bulk,
) -> Response {
    if let Some(refused) = refuse_action(caller, &caller.csrf) {
        return refused;
    }
    let mut filter = match filter_of(query_string.queue.as_deref(), query_string.kind.as_deref()) {
        Ok(filter) => filter,
        Err(error) => return failure(Some(caller), error),
    };
    let now = match dead_letters::database_now(&state.pool).await {
        Ok(now) => now,
        Err(error) => return failure(Some(caller), error),
    };
    filter.failed_before = Some(now);
    let counted = match bulk {
        Bulk::Replay => dead_letters::count_replayable(&state.pool, &filter).await,
        Bulk::Purge => dead_letters::count(&state.pool, &filter).await,
    };
    let count = match counted {
        Ok(count) => count,
        Err(error) => return failure(Some(caller), error),
    };
    let (title, action, text, button) = match bulk {
        Bulk::Replay => (
            "Replay dead letters",
            "replay",
            format!(
                r#"Replay <strong id="count">{count}</strong> dead letters {}? Each becomes a new job with its attempts reset."#,
                describe(&filter)
            ),
            format!("Replay {count}"),
        ),
        Bulk::Purge => (
            "Delete dead letters",
            "purge",
            format!(
                r#"Delete <strong id="count">{count}</strong> dead letters {} for good (replayed ones included)? Their payloads cannot be replayed afterwards."#,
                describe(&filter)
            ),
            format!("Delete {count}"),
        ),
    };
    let body = format!(
        r#"<p id="confirm-text">{text}</p><form method="post" action="/ui/dead-letters/{action}"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="queue" value="{queue}"><input type="hidden" name="kind" value="{kind}"><input type="hidden" name="before" value="{before}"><button type="submit" id="confirm">{button}</button> <a href="/ui/dead-letters{back}">Cancel</a></form>"#,
        csrf = esc(&caller.csrf),
        queue = esc(filter.queue.as_deref().unwrap_or("")),
        kind = esc(filter.kind.as_deref().unwrap_or("")),
        before = esc(&now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        back = filter_query(&filter),
    );
    page(title, Some(caller), &body)
}

pub(super) async fn confirm_replay_all(
    State(state): State<ApiState>,
    Session(caller): Session,
    PageQuery(query_string): PageQuery<LetterQuery>,
) -> Response {
    confirm(&state, &caller, &query_string, Bulk::Replay).await
}

pub(super) async fn confirm_purge_all(
    State(state): State<ApiState>,
    Session(caller): Session,
    PageQuery(query_string): PageQuery<LetterQuery>,
) -> Response {
    confirm(&state, &caller, &query_string, Bulk::Purge).await
}

#[derive(Deserialize)]
pub(super) struct BulkForm {
    csrf: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    kind: String,
    /// The confirmation's time: only letters that failed before it.
    before: String,
}

impl BulkForm {
    fn filter(&self) -> Result<DeadLetterFilter, ApiError> {
        let mut filter = filter_of(Some(&self.queue), Some(&self.kind))?;
        let before = chrono::DateTime::parse_from_rfc3339(&self.before)
            .map_err(|_| ApiError::field("before", "is not the confirmation's time"))?;
        filter.failed_before = Some(before.with_timezone(&chrono::Utc));
        Ok(filter)
    }
}

/// Replay or delete every dead letter the confirmation counted (admin, the session's token), audited as over
/// `/v1`.
async fn bulk(state: &ApiState, caller: &UiCaller, form: &BulkForm, bulk: Bulk) -> Response {
    if let Some(refused) = refuse_action(caller, &form.csrf) {
        return refused;
    }
    let filter = match form.filter() {
        Ok(filter) => filter,
        Err(error) => return failure(Some(caller), error),
    };
    let done = match bulk {
        Bulk::Replay => {
            let aging = state.defaults.priority_aging;
            dead_letters::replay(&state.pool, &caller.actor, &filter, aging)
                .await
                .map(|jobs| ("replayed", jobs.len() as i64))
        }
        Bulk::Purge => dead_letters::purge(&state.pool, &caller.actor, &filter)
            .await
            .map(|deleted| ("deleted", deleted)),
    };
    state.overview.forget();
    match done {
        Ok((done, n)) => {
            // Back to the list the operator filtered, without the confirmation's time.
            let shown = DeadLetterFilter {
                failed_before: None,
                ..filter
            };
            done_redirect(&shown, done, n)
        }
        Err(error) => failure(Some(caller), error),
    }
}

pub(super) async fn replay_all(
    State(state): State<ApiState>,
    Session(caller): Session,
    Form(form): Form<BulkForm>,
) -> Response {
    bulk(&state, &caller, &form, Bulk::Replay).await
}

pub(super) async fn purge_all(
    State(state): State<ApiState>,
    Session(caller): Session,
    Form(form): Form<BulkForm>,
) -> Response {
    bulk(&state, &caller, &form, Bulk::Purge).await
}

/// One dead letter: its job, every attempt's error, its payload; replay and delete for admins.
pub(super) async fn letter(
    State(state): State<ApiState>,
    Session(caller): Session,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let letter = match dead_letters::get(&state.pool, id).await {
        Ok(Some(letter)) => letter,
        Ok(None) => {
            return failure(
                Some(&caller),
                ApiError::not_found(format!("dead letter {id} not found")),
            );
        }
        Err(error) => return failure(Some(&caller), error),
    };
    let actions = if caller.admin {
        let replay = if letter.replayed_as.is_none() {
            format!(
                r#"<form method="post" action="/ui/dead-letters/{id}/replay" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" id="replay">Replay</button></form>"#,
                csrf = esc(&caller.csrf)
            )
        } else {
            String::new()
        };
        format!(
            r#"<div class="actions">{replay}<form method="post" action="/ui/dead-letters/{id}/delete" class="inline"><input type="hidden" name="csrf" value="{csrf}"><label><input type="checkbox" name="confirm" value="yes" required> I am sure</label> <button type="submit" id="delete">Delete</button></form></div>"#,
            csrf = esc(&caller.csrf)
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"<dl><dt>Queue</dt><dd>{queue}</dd><dt>Kind</dt><dd>{kind}</dd><dt>Job</dt><dd><a href="/ui/jobs/{job}">{job}</a></dd><dt>Attempts</dt><dd>{attempt} of {max}</dd><dt>Reason</dt><dd>{reason}</dd><dt>Failed</dt><dd>{failed} UTC</dd><dt>State</dt><dd id="state">{state}</dd></dl>{actions}<h2>Errors</h2><pre>{errors}</pre><h2>Payload</h2><pre>{payload}</pre>"#,
        queue = esc(&letter.queue),
        kind = esc(&letter.kind),
        job = letter.job_id,
        attempt = letter.attempt,
        max = letter.max_attempts,
        reason = esc(&letter.reason),
        failed = time(letter.failed_at),
        state = letter.replayed_as.map_or("dead".to_string(), |job| format!(
            r#"replayed as <a href="/ui/jobs/{job}">job {job}</a>"#
        )),
        errors = pretty(&letter.errors),
        payload = pretty(&letter.payload),
    );
    page(&format!("Dead letter {id}"), Some(&caller), &body)
}

#[derive(Deserialize)]
pub(super) struct LetterActionForm {
    csrf: String,
    confirm: Option<String>,
}

/// Replay or delete one dead letter (admin, the session's token; delete needs its confirmation box).
pub(super) async fn letter_action(
    State(state): State<ApiState>,
    Session(caller): Session,
    ApiPath((id, action)): ApiPath<(i64, String)>,
    Form(form): Form<LetterActionForm>,
) -> Response {
    if let Some(refused) = refuse_action(&caller, &form.csrf) {
        return refused;
    }
    let one = DeadLetterFilter::by_id(id);
    let everything = DeadLetterFilter::default();
    match action.as_str() {
        "replay" => {
            let aging = state.defaults.priority_aging;
            match dead_letters::replay(&state.pool, &caller.actor, &one, aging).await {
                // The letter's page shows the job it became.
                Ok(jobs) if !jobs.is_empty() => {
                    Redirect::to(&format!("/ui/dead-letters/{id}")).into_response()
                }
                Ok(_) => done_redirect(&everything, "already", id),
                Err(error) => failure(Some(&caller), error),
            }
        }
        "delete" if form.confirm.as_deref() == Some("yes") => {
            match dead_letters::purge(&state.pool, &caller.actor, &one).await {
                Ok(0) => done_redirect(&everything, "gone", id),
                Ok(_) => done_redirect(&everything, "deleted-one", id),
                Err(error) => failure(Some(&caller), error),
            }
        }
        "delete" => done_redirect(&everything, "unconfirmed", 0),
        _ => failure(Some(&caller), ApiError::not_found("no such action")),
    }
}
