//! The dead letters: the newest 100 (filter by queue and kind), one letter's page (job, attempts, every error,
//! payload), replay one, delete one (after a ticked confirmation), and replay or purge every match after a page
//! showing how many it would take. Through `queue::dead_letters`, the functions `/v1/dead-letters` uses, so the
//! same audit rows (`dead_letter.replay`, `dead_letter.delete`).

use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::html::{esc, esc_short, notice, pretty, query, table, time};
use super::{ApiState, Lenient, Session, failure, page, refuse_action};
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
}

/// The filter the query names: a queue that is not a queue name, or an over-long kind, filters nothing.
fn filter_of(query: &LetterQuery) -> DeadLetterFilter {
    DeadLetterFilter {
        queue: query
            .queue
            .as_deref()
            .filter(|q| QueueName::parse(q).is_ok())
            .map(str::to_string),
        kind: query
            .kind
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 200)
            .map(str::to_string),
        ..DeadLetterFilter::default()
    }
}

/// `?queue=…&kind=…` for links that keep the filter.
fn filter_query(filter: &DeadLetterFilter) -> String {
    query(&[
        ("queue", filter.queue.as_deref()),
        ("kind", filter.kind.as_deref()),
    ])
}

/// Back to the list, with what was done.
fn done_redirect(filter: &DeadLetterFilter, done: &str) -> Response {
    let url = format!(
        "/ui/dead-letters{}",
        query(&[
            ("queue", filter.queue.as_deref()),
            ("kind", filter.kind.as_deref()),
            ("done", Some(done)),
        ])
    );
    Redirect::to(&url).into_response()
}

/// The newest 100 dead letters (of one queue and kind, when filtered).
pub(super) async fn list(
    State(state): State<ApiState>,
    Session(caller): Session,
    Lenient(query_string): Lenient<LetterQuery>,
) -> Response {
    let filter = filter_of(&query_string);
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
            state = letter
                .replayed_as
                .map_or("dead".to_string(), |job| format!(r#"replayed as <a href="/ui/jobs/{job}">job {job}</a>"#)),
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
        notice = notice(query_string.done.as_deref()),
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

/// The confirmation form of a bulk action: the count, the filter carried as hidden fields, a cancel link.
fn confirm_form(
    caller: &crate::api::auth::UiCaller,
    action: &str,
    filter: &DeadLetterFilter,
    text: &str,
    button: &str,
) -> String {
    format!(
        r#"<p id="confirm-text">{text}</p><form method="post" action="/ui/dead-letters/{action}"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="queue" value="{queue}"><input type="hidden" name="kind" value="{kind}"><button type="submit" id="confirm">{button}</button> <a href="/ui/dead-letters{back}">Cancel</a></form>"#,
        csrf = esc(&caller.csrf),
        queue = esc(filter.queue.as_deref().unwrap_or("")),
        kind = esc(filter.kind.as_deref().unwrap_or("")),
        back = filter_query(filter),
    )
}

/// The confirmation of a bulk replay: how many dead letters it would take.
pub(super) async fn confirm_replay_all(
    State(state): State<ApiState>,
    Session(caller): Session,
    Lenient(query_string): Lenient<LetterQuery>,
) -> Response {
    let filter = filter_of(&query_string);
    let count = match dead_letters::count_replayable(&state.pool, &filter).await {
        Ok(count) => count,
        Err(error) => return failure(Some(&caller), error),
    };
    let text = format!(
        r#"Replay <strong id="count">{count}</strong> dead letters {}? Each becomes a new job with its attempts reset."#,
        describe(&filter)
    );
    let body = confirm_form(
        &caller,
        "replay",
        &filter,
        &text,
        &format!("Replay {count}"),
    );
    page("Replay dead letters", Some(&caller), &body)
}

/// The confirmation of a bulk delete: how many dead letters it would remove.
pub(super) async fn confirm_purge_all(
    State(state): State<ApiState>,
    Session(caller): Session,
    Lenient(query_string): Lenient<LetterQuery>,
) -> Response {
    let filter = filter_of(&query_string);
    let count = match dead_letters::count(&state.pool, &filter).await {
        Ok(count) => count,
        Err(error) => return failure(Some(&caller), error),
    };
    let text = format!(
        r#"Delete <strong id="count">{count}</strong> dead letters {} for good (replayed ones included)? Their payloads cannot be replayed afterwards."#,
        describe(&filter)
    );
    let body = confirm_form(&caller, "purge", &filter, &text, &format!("Delete {count}"));
    page("Delete dead letters", Some(&caller), &body)
}

#[derive(Deserialize)]
pub(super) struct BulkForm {
    csrf: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    kind: String,
}

impl BulkForm {
    fn filter(&self) -> DeadLetterFilter {
        filter_of(&LetterQuery {
            queue: Some(self.queue.clone()).filter(|q| !q.is_empty()),
            kind: Some(self.kind.clone()).filter(|k| !k.is_empty()),
            done: None,
        })
    }
}

/// Replay every matching dead letter (admin, with the session's token), audited as over `/v1`.
pub(super) async fn replay_all(
    State(state): State<ApiState>,
    Session(caller): Session,
    Form(form): Form<BulkForm>,
) -> Response {
    if let Some(refused) = refuse_action(&caller, &form.csrf) {
        return refused;
    }
    let filter = form.filter();
    let aging = state.defaults.priority_aging;
    match dead_letters::replay(&state.pool, &caller.actor, &filter, aging).await {
        Ok(jobs) => done_redirect(&filter, &format!("Replayed {} dead letters.", jobs.len())),
        Err(error) => failure(Some(&caller), error),
    }
}

/// Delete every matching dead letter (admin, with the session's token), audited as over `/v1`.
pub(super) async fn purge_all(
    State(state): State<ApiState>,
    Session(caller): Session,
    Form(form): Form<BulkForm>,
) -> Response {
    if let Some(refused) = refuse_action(&caller, &form.csrf) {
        return refused;
    }
    let filter = form.filter();
    match dead_letters::purge(&state.pool, &caller.actor, &filter).await {
        Ok(deleted) => done_redirect(&filter, &format!("Deleted {deleted} dead letters.")),
        Err(error) => failure(Some(&caller), error),
    }
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
                Ok(_) => done_redirect(
                    &everything,
                    &format!("Dead letter {id} was already replayed."),
                ),
                Err(error) => failure(Some(&caller), error),
            }
        }
        "delete" if form.confirm.as_deref() == Some("yes") => {
            match dead_letters::purge(&state.pool, &caller.actor, &one).await {
                Ok(_) => done_redirect(&everything, &format!("Deleted dead letter {id}.")),
                Err(error) => failure(Some(&caller), error),
            }
        }
        "delete" => done_redirect(&everything, "Not deleted: tick the confirmation box."),
        _ => failure(Some(&caller), ApiError::not_found("no such action")),
    }
}
