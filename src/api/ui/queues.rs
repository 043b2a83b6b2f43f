//! A queue's jobs (ready, scheduled, running; search by id, kind or idempotency key), a job's page (state,
//! attempts and each error, payload) and the queue and job actions (pause, resume, cancel), through
//! `queue::admin` as `/v1/queues` and `/v1/jobs` use it.

use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::html::{done, encode, esc, esc_short, given, pretty, query, table, time, time_or_dash};
use super::{
    ActionForm, ApiState, PageQuery, Session, action_button, failure, page, refuse_action,
};
use crate::api::error::ApiError;
use crate::api::extract::ApiPath;
use crate::queue::admin::{self, JobSearch, LiveState};
use crate::queue::{JobState, QueueName};

/// Rows a job list shows.
const PAGE: i64 = 100;

/// Longest kind or idempotency key a search may name (bytes).
const MAX_TERM: usize = 1000;

/// Pause or resume a queue (admin keys; the form's token must be the session's).
pub(super) async fn queue_action(
    State(state): State<ApiState>,
    Session(caller): Session,
    ApiPath((name, action)): ApiPath<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refused) = refuse_action(&caller, &form.csrf) {
        return refused;
    }
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return failure(Some(&caller), ApiError::not_found("no such action")),
    };
    let Ok(queue) = QueueName::parse(&name) else {
        return failure(Some(&caller), ApiError::not_found("no such queue"));
    };
    match admin::set_paused(&state.pool, &caller.actor, &queue, paused).await {
        Ok(_) => {
            state.overview.forget();
            Redirect::to("/ui").into_response()
        }
        Err(error) => failure(Some(&caller), error),
    }
}

/// A job list's tab and search (the query string).
#[derive(Deserialize, Default)]
pub(super) struct JobQuery {
    state: Option<String>,
    id: Option<String>,
    kind: Option<String>,
    key: Option<String>,
    done: Option<String>,
}

/// One queue's live jobs in one state, with a search.
pub(super) async fn queue_page(
    State(state): State<ApiState>,
    Session(caller): Session,
    ApiPath(name): ApiPath<String>,
    PageQuery(query_string): PageQuery<JobQuery>,
) -> Response {
    let Ok(queue) = QueueName::parse(&name) else {
        return failure(Some(&caller), ApiError::not_found("no such queue"));
    };
    let (live, tab) = match query_string.state.as_deref() {
        Some("scheduled") => (LiveState::Scheduled, "scheduled"),
        Some("running") => (LiveState::Running, "running"),
        _ => (LiveState::Ready, "ready"),
    };
    // Terms are matched exactly, as typed (trimmed); one longer than any stored value is refused, never dropped
    // (a search silently widened to the whole queue would mislead).
    let (id_text, kind, key) = (
        given(&query_string.id),
        given(&query_string.kind),
        given(&query_string.key),
    );
    let id = match id_text.map(str::parse::<i64>) {
        Some(Err(_)) => return failure(Some(&caller), ApiError::field("id", "is not a job id")),
        Some(Ok(id)) => Some(id),
        None => None,
    };
    if kind.is_some_and(|k| k.len() > MAX_TERM) || key.is_some_and(|k| k.len() > MAX_TERM) {
        return failure(
            Some(&caller),
            ApiError::field(
                "kind",
                format!("a search term is longer than {MAX_TERM} bytes"),
            ),
        );
    }
    let search = JobSearch {
        queue: queue.as_str(),
        state: live,
        id,
        kind,
        idempotency_key: key,
        limit: PAGE,
    };
    let (jobs, problem) = match admin::list_jobs(&state.pool, &search).await {
        Ok(Some(jobs)) => (jobs, String::new()),
        Ok(None) => (
            Vec::new(),
            r#"<p class="warn" role="alert">The search read for longer than its budget (5 s): search by job id, or look at a smaller state.</p>"#.to_string(),
        ),
        Err(error) => return failure(Some(&caller), error),
    };
    let path = encode(queue.as_str());
    let tabs: String = ["ready", "scheduled", "running"]
        .iter()
        .map(|t| {
            let current = if *t == tab {
                r#" aria-current="page""#
            } else {
                ""
            };
            format!(
                r#"<a href="/ui/queues/{path}{q}"{current}>{t}</a>"#,
                q = query(&[
                    ("state", Some(t)),
                    ("id", id_text),
                    ("kind", kind),
                    ("key", key)
                ])
            )
        })
        .collect();
    let mut rows = String::new();
    for job in &jobs {
        rows.push_str(&format!(
            r#"<tr data-id="{id}"><td><a href="/ui/jobs/{id}">{id}</a></td><td>{kind}</td><td class="n">{priority}</td><td class="n">{attempt}/{max}</td><td>{when}</td><td class="wide">{key}</td><td>{error}</td></tr>"#,
            id = job.id,
            kind = esc(&job.kind),
            priority = job.priority,
            attempt = job.attempt,
            max = job.max_attempts,
            when = match live {
                LiveState::Ready => time(job.run_at),
                LiveState::Scheduled => time(job.run_at),
                LiveState::Running => time_or_dash(job.claimed_at),
            },
            key = esc_short(job.idempotency_key.as_deref().unwrap_or(""), 60),
            error = esc_short(job.error.as_deref().unwrap_or(""), 120),
        ));
    }
    let when = match live {
        LiveState::Ready => "Due",
        LiveState::Scheduled => "Runs at",
        LiveState::Running => "Claimed",
    };
    let more = if jobs.len() as i64 == PAGE {
        format!(
            "<p>The first {PAGE} in the order the queue takes them; search to find one further back.</p>"
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"{notice}{problem}<p class="tabs">{tabs}</p><form class="filters" method="get" action="/ui/queues/{path}"><input type="hidden" name="state" value="{tab}"><label>Job id<input name="id" inputmode="numeric" value="{id}"></label><label>Kind<input name="kind" value="{kind}"></label><label>Idempotency key<input name="key" value="{key}"></label><button type="submit">Search</button></form>{table}{more}"#,
        notice = done(query_string.done.as_deref()),
        id = esc(id_text.unwrap_or("")),
        kind = esc(kind.unwrap_or("")),
        key = esc(key.unwrap_or("")),
        table = table(
            "jobs",
            &[
                "Id",
                "Kind",
                "#Priority",
                "#Attempt",
                when,
                "~Idempotency key",
                "Last error"
            ],
            &rows,
            "No job here."
        ),
    );
    page(&format!("Queue {}", queue.as_str()), Some(&caller), &body)
}

/// One job, wherever it is now (the hot table or its history): state, attempts, each error, payload; cancel for
/// admins while it waits.
pub(super) async fn job_page(
    State(state): State<ApiState>,
    Session(caller): Session,
    ApiPath(id): ApiPath<i64>,
    PageQuery(query_string): PageQuery<JobQuery>,
) -> Response {
    let job = match admin::find_job(&state.pool, id).await {
        Ok(Some(job)) => job,
        Ok(None) => {
            return failure(
                Some(&caller),
                ApiError::not_found(format!("job {id} not found")),
            );
        }
        Err(error) => return failure(Some(&caller), error),
    };
    let waiting = matches!(job.state, JobState::Available | JobState::Scheduled);
    let actions = if caller.admin && waiting {
        format!(
            r#"<div class="actions">{}</div>"#,
            action_button(
                &caller,
                &format!("/ui/jobs/{id}/cancel"),
                "cancel",
                "Cancel this job"
            )
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"{notice}<dl><dt>Queue</dt><dd><a href="/ui/queues/{path}">{queue}</a></dd><dt>Kind</dt><dd>{kind}</dd><dt>State</dt><dd id="state">{state}</dd><dt>Attempts</dt><dd>{attempt} of {max}</dd><dt>Priority</dt><dd>{priority}</dd><dt>Idempotency key</dt><dd>{key}</dd><dt>Request</dt><dd>{request}</dd><dt>Created</dt><dd>{created}</dd><dt>Runs at</dt><dd>{run_at}</dd><dt>Claimed</dt><dd>{claimed}</dd><dt>Finished</dt><dd>{finished}</dd></dl>{actions}<h2>Errors</h2><pre>{errors}</pre><h2>Payload</h2><pre>{payload}</pre>"#,
        notice = done(query_string.done.as_deref()),
        path = encode(&job.queue),
        queue = esc(&job.queue),
        kind = esc(&job.kind),
        state = job.state.as_str(),
        attempt = job.attempt,
        max = job.max_attempts,
        priority = job.priority,
        key = esc(job.idempotency_key.as_deref().unwrap_or("–")),
        request = esc(job.request_id.as_deref().unwrap_or("–")),
        created = time(job.created_at),
        run_at = time_or_dash(job.run_at),
        claimed = time_or_dash(job.claimed_at),
        finished = time_or_dash(job.finished_at),
        errors = pretty(&job.errors),
        payload = pretty(&job.payload),
    );
    page(&format!("Job {id}"), Some(&caller), &body)
}

/// Cancel a waiting job (admin, the session's token), audited as `job.cancel` as over `/v1`.
pub(super) async fn cancel_job(
    State(state): State<ApiState>,
    Session(caller): Session,
    ApiPath(id): ApiPath<i64>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refused) = refuse_action(&caller, &form.csrf) {
        return refused;
    }
    let cancelled = admin::cancel_job(&state.pool, &caller.actor, id).await;
    state.overview.forget();
    match cancelled {
        Ok(()) => Redirect::to(&format!("/ui/jobs/{id}?done=cancelled")).into_response(),
        Err(error) => failure(Some(&caller), error),
    }
}
