//! `/ui`: the dashboard, served by `herald api` itself (server-rendered HTML, no script, no CDN: the machines that
//! run herald may have no internet). It reads and acts through the same query functions as `/v1`, never a second
//! copy of their SQL.
//!
//! Log in with an API key: it is kept in an HttpOnly, SameSite=Strict cookie scoped to `/ui` (accepted on `/ui`
//! routes only), so no page script can read it and no other site's request carries it. `read` keys look; `admin`
//! keys act. Every action is a form POST carrying the session's form token (CSRF), and is written to the audit log
//! under the key, as the same action over `/v1` is.
//!
//! Pages so far: the overview (queues: depth, running, scheduled, oldest age, paused; pause and resume) and the dead
//! letters (filter by queue, inspect one, replay one, replay every match after a confirmation showing the count,
//! delete one after a confirmation).

use axum::Form;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::ApiState;
use super::auth::{UI_COOKIE, UiCaller, ui_login};
use super::error::ApiError;
use super::extract::ApiPath;
use crate::queue::dead_letters::{self, DeadLetterFilter};
use crate::queue::{QueueName, admin};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/queues/{name}/{action}", post(queue_action))
        .route("/ui/dead-letters", get(dead_letters_page))
        .route(
            "/ui/dead-letters/replay",
            get(confirm_replay_all).post(replay_all),
        )
        .route("/ui/dead-letters/{id}", get(dead_letter_page))
        .route("/ui/dead-letters/{id}/{action}", post(dead_letter_action))
}

/// A logged-in operator; a request without a valid session is sent to the login page instead.
struct Session(UiCaller);

impl axum::extract::FromRequestParts<ApiState> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &ApiState,
    ) -> Result<Self, Response> {
        UiCaller::from_request_parts(parts, state)
            .await
            .map(Session)
            .map_err(|_| Redirect::to("/ui/login").into_response())
    }
}

/// Escapes text for HTML (element content and quoted attributes).
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: the frame (title, navigation, logout) around `body`, with headers that keep it from being framed
/// or running anything but itself.
fn page(title: &str, caller: Option<&UiCaller>, body: &str) -> Response {
    let nav = match caller {
        Some(caller) => format!(
            r#"<nav><a href="/ui">Overview</a><a href="/ui/dead-letters">Dead letters</a><form method="post" action="/ui/logout" class="inline"><input type="hidden" name="csrf" value="{}"><button>Log out</button></form><span class="who">{}</span></nav>"#,
            esc(&caller.csrf),
            if caller.admin { "admin" } else { "read only" }
        ),
        None => String::new(),
    };
    let html = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{title} · herald</title><style>{STYLE}</style></head><body><header><strong>herald</strong>{nav}</header><main><h1>{title}</h1>{body}</main></body></html>"#,
        title = esc(title),
    );
    let mut response = Html(html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d2330}header{display:flex;gap:1rem;align-items:center;padding:.6rem 1rem;background:#1d2330;color:#fff;flex-wrap:wrap}header a{color:#fff}nav{display:flex;gap:1rem;align-items:center;flex:1}.who{margin-left:auto;opacity:.8}main{padding:1rem;max-width:70rem}table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #dde;overflow-wrap:anywhere}td.n{text-align:right;font-variant-numeric:tabular-nums}.paused{color:#b35a00;font-weight:600}.inline{display:inline}button{font:inherit;padding:.2rem .7rem;cursor:pointer}.error{color:#a00}.notice{background:#eef6ee;padding:.4rem .6rem}a.button{display:inline-block;padding:.2rem .7rem;border:1px solid #889;border-radius:3px;text-decoration:none;color:inherit}dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dd{margin:0;overflow-wrap:anywhere}pre{background:#f4f5f8;padding:.6rem;overflow:auto;max-height:30rem}@media(max-width:40rem){th:nth-child(5),td:nth-child(5){display:none}}";

/// The login form (and where a request without a session lands).
async fn login_page() -> Response {
    login_form(None)
}

fn login_form(error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, esc(e)))
        .unwrap_or_default();
    page(
        "Log in",
        None,
        &format!(
            r#"{error}<form method="post" action="/ui/login"><label for="key">API key</label> <input id="key" name="key" type="password" autocomplete="off" required> <button type="submit">Log in</button></form><p>A key with the <code>read</code> scope looks; <code>admin</code> acts.</p>"#
        ),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    key: String,
}

async fn login(
    State(state): State<ApiState>,
    parts: axum::http::request::Parts,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return login_form(Some("Send the form with a key."));
    };
    let key = form.key.trim();
    if let Err(error) = ui_login(&parts, &state, key).await {
        let status = error.status();
        let mut response = login_form(Some("That key is not valid, or has no read scope."));
        *response.status_mut() = status;
        return response;
    }
    let cookie = format!("{UI_COOKIE}={key}; Path=/ui; HttpOnly; SameSite=Strict");
    let mut response = Redirect::to("/ui").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
struct ActionForm {
    csrf: String,
}

async fn logout() -> Response {
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("herald_ui=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// The overview: every queue's depth and state, refreshed every 5 seconds.
async fn overview(State(state): State<ApiState>, Session(caller): Session) -> Response {
    let queues = match admin::queue_stats(&state.pool).await {
        Ok(queues) => queues,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let mut rows = String::new();
    for queue in &queues {
        let actions = if caller.admin {
            let (action, label) = if queue.paused {
                ("resume", "Resume")
            } else {
                ("pause", "Pause")
            };
            format!(
                r#"<form method="post" action="/ui/queues/{name}/{action}" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" data-queue="{name}">{label}</button></form>"#,
                name = esc(&queue.name),
                csrf = esc(&caller.csrf),
            )
        } else {
            String::new()
        };
        rows.push_str(&format!(
            r#"<tr data-queue="{name}"><td>{name}</td><td class="n depth">{available}</td><td class="n">{running}</td><td class="n">{scheduled}</td><td class="n">{oldest}</td><td class="state">{paused}</td><td>{actions}</td></tr>"#,
            name = esc(&queue.name),
            available = queue.available,
            running = queue.running,
            scheduled = queue.scheduled,
            oldest = queue
                .oldest_age_secs
                .map_or("–".to_string(), |s| format!("{s:.0} s")),
            paused = if queue.paused {
                r#"<span class="paused">paused</span>"#
            } else {
                "running"
            },
        ));
    }
    if queues.is_empty() {
        rows.push_str(r#"<tr><td colspan="7">No queue has jobs yet.</td></tr>"#);
    }
    let body = format!(
        r#"<meta http-equiv="refresh" content="5"><h2>Queues</h2><table id="queues"><thead><tr><th>Queue</th><th>Ready</th><th>Running</th><th>Scheduled</th><th>Oldest ready</th><th>State</th><th></th></tr></thead><tbody>{rows}</tbody></table>"#
    );
    page("Overview", Some(&caller), &body)
}

/// Pause or resume a queue (admin keys; the form's token must be the session's).
async fn queue_action(
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
        _ => return ApiError::not_found("no such action").into_response(),
    };
    let Ok(queue) = QueueName::parse(&name) else {
        return ApiError::not_found("no such queue").into_response();
    };
    match admin::set_paused(&state.pool, &caller.actor, &queue, paused).await {
        Ok(_) => Redirect::to("/ui").into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// A dead-letter list's filter (the query string).
#[derive(Deserialize, Default)]
struct DeadLetterQuery {
    queue: Option<String>,
    done: Option<String>,
}

/// The queue filter, when it names a queue (anything else filters nothing).
fn queue_filter(query: &DeadLetterQuery) -> DeadLetterFilter {
    DeadLetterFilter {
        queue: query
            .queue
            .as_deref()
            .filter(|q| QueueName::parse(q).is_ok())
            .map(str::to_string),
        ..DeadLetterFilter::default()
    }
}

/// `?queue=` for links that keep the filter.
fn queue_query(filter: &DeadLetterFilter) -> String {
    filter
        .queue
        .as_deref()
        .map_or(String::new(), |q| format!("?queue={}", esc(q)))
}

/// The newest 100 dead letters (of one queue, with `?queue=`).
async fn dead_letters_page(
    State(state): State<ApiState>,
    Session(caller): Session,
    query: Result<axum::extract::Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = query.map(|q| q.0).unwrap_or_default();
    let filter = queue_filter(&query);
    let letters = match dead_letters::list(&state.pool, &filter, None, 100).await {
        Ok(letters) => letters,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let notice = query
        .done
        .as_deref()
        .map(|done| format!(r#"<p role="status" class="notice">{}</p>"#, esc(done)))
        .unwrap_or_default();
    let mut rows = String::new();
    for letter in &letters {
        rows.push_str(&format!(
            r#"<tr data-id="{id}"><td><a href="/ui/dead-letters/{id}">{id}</a></td><td>{queue}</td><td>{kind}</td><td class="n">{attempt}</td><td>{reason}</td><td>{failed}</td><td class="state">{state}</td></tr>"#,
            id = letter.id,
            queue = esc(&letter.queue),
            kind = esc(&letter.kind),
            attempt = letter.attempt,
            reason = esc(&letter.reason.chars().take(120).collect::<String>()),
            failed = letter.failed_at.format("%Y-%m-%d %H:%M:%S"),
            state = letter
                .replayed_as
                .map_or("dead".to_string(), |job| format!("replayed as job {job}")),
        ));
    }
    if letters.is_empty() {
        rows.push_str(r#"<tr><td colspan="7">No dead letters.</td></tr>"#);
    }
    let replay = if caller.admin && !letters.is_empty() {
        format!(
            r#"<p><a class="button" id="replay-all" href="/ui/dead-letters/replay{}">Replay all that match…</a></p>"#,
            queue_query(&filter)
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"{notice}<form method="get" action="/ui/dead-letters"><label for="queue">Queue</label> <input id="queue" name="queue" value="{queue}"> <button type="submit">Filter</button></form>{replay}<table id="dead-letters"><thead><tr><th>Id</th><th>Queue</th><th>Kind</th><th>Attempts</th><th>Reason</th><th>Failed</th><th>State</th></tr></thead><tbody>{rows}</tbody></table>"#,
        queue = esc(filter.queue.as_deref().unwrap_or("")),
    );
    page("Dead letters", Some(&caller), &body)
}

/// The confirmation of a bulk replay: how many dead letters it would take.
async fn confirm_replay_all(
    State(state): State<ApiState>,
    Session(caller): Session,
    query: Result<axum::extract::Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let filter = queue_filter(&query.map(|q| q.0).unwrap_or_default());
    let count = match dead_letters::count_replayable(&state.pool, &filter).await {
        Ok(count) => count,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let of = filter
        .queue
        .as_deref()
        .map_or("of every queue".to_string(), |q| {
            format!("of queue {}", esc(q))
        });
    let body = format!(
        r#"<p id="confirm-text">Replay <strong id="count">{count}</strong> dead letters {of}? Each becomes a new job with its attempts reset.</p><form method="post" action="/ui/dead-letters/replay"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="queue" value="{queue}"><button type="submit" id="confirm">Replay {count}</button> <a href="/ui/dead-letters{back}">Cancel</a></form>"#,
        csrf = esc(&caller.csrf),
        queue = esc(filter.queue.as_deref().unwrap_or("")),
        back = queue_query(&filter),
    );
    page("Replay dead letters", Some(&caller), &body)
}

#[derive(Deserialize)]
struct ReplayAllForm {
    csrf: String,
    #[serde(default)]
    queue: String,
}

/// Replay every matching dead letter (admin, with the session's token), audited as over `/v1`.
async fn replay_all(
    State(state): State<ApiState>,
    Session(caller): Session,
    Form(form): Form<ReplayAllForm>,
) -> Response {
    if let Some(refused) = refuse_action(&caller, &form.csrf) {
        return refused;
    }
    let query = DeadLetterQuery {
        queue: Some(form.queue).filter(|q| !q.is_empty()),
        done: None,
    };
    let filter = queue_filter(&query);
    let aging = state.defaults.priority_aging;
    match dead_letters::replay(&state.pool, &caller.actor, &filter, aging).await {
        Ok(jobs) => done_redirect(&filter, &format!("Replayed {} dead letters.", jobs.len())),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// Back to the list, with what was done (as `?done=`).
fn done_redirect(filter: &DeadLetterFilter, done: &str) -> Response {
    let mut url = url_with_queue(filter);
    url.push_str(if url.contains('?') { "&" } else { "?" });
    url.push_str("done=");
    url.push_str(&encode(done));
    Redirect::to(&url).into_response()
}

fn url_with_queue(filter: &DeadLetterFilter) -> String {
    match &filter.queue {
        Some(queue) => format!("/ui/dead-letters?queue={}", encode(queue)),
        None => "/ui/dead-letters".to_string(),
    }
}

/// Percent-encodes a query value (queue names and fixed messages: letters, digits, `_.-` pass).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A refusal page when the form is not from this session or the key may not act; `None` if it may.
fn refuse_action(caller: &UiCaller, csrf: &str) -> Option<Response> {
    let message = if csrf != caller.csrf {
        "This form is not from this session."
    } else if !caller.admin {
        "Acting needs a key with the admin scope."
    } else {
        return None;
    };
    let mut response = page(
        "Not done",
        Some(caller),
        &format!(
            r#"<p class="error" role="alert">{}</p><p><a href="/ui">Back</a></p>"#,
            esc(message)
        ),
    );
    *response.status_mut() = StatusCode::FORBIDDEN;
    Some(response)
}

/// One dead letter: its job, every attempt's error, its payload; replay and delete for admins.
async fn dead_letter_page(
    State(state): State<ApiState>,
    Session(caller): Session,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let letter = match dead_letters::get(&state.pool, id).await {
        Ok(Some(letter)) => letter,
        Ok(None) => {
            return ApiError::not_found(format!("dead letter {id} not found")).into_response();
        }
        Err(error) => return ApiError::from(error).into_response(),
    };
    let pretty =
        |value: &serde_json::Value| esc(&serde_json::to_string_pretty(value).unwrap_or_default());
    let actions = if caller.admin {
        let replay = if letter.replayed_as.is_none() {
            format!(
                r#"<form method="post" action="/ui/dead-letters/{id}/replay" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" id="replay">Replay</button></form> "#,
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
        r#"<dl><dt>Queue</dt><dd>{queue}</dd><dt>Kind</dt><dd>{kind}</dd><dt>Job</dt><dd>{job}</dd><dt>Attempts</dt><dd>{attempt} of {max}</dd><dt>Reason</dt><dd>{reason}</dd><dt>Failed</dt><dd>{failed}</dd><dt>State</dt><dd id="state">{state}</dd></dl>{actions}<h2>Errors</h2><pre>{errors}</pre><h2>Payload</h2><pre>{payload}</pre>"#,
        queue = esc(&letter.queue),
        kind = esc(&letter.kind),
        job = letter.job_id,
        attempt = letter.attempt,
        max = letter.max_attempts,
        reason = esc(&letter.reason),
        failed = letter.failed_at.format("%Y-%m-%d %H:%M:%S UTC"),
        state = letter
            .replayed_as
            .map_or("dead".to_string(), |job| format!("replayed as job {job}")),
        errors = pretty(&letter.errors),
        payload = pretty(&letter.payload),
    );
    page(&format!("Dead letter {id}"), Some(&caller), &body)
}

#[derive(Deserialize)]
struct LetterActionForm {
    csrf: String,
    confirm: Option<String>,
}

/// Replay or delete one dead letter (admin, the session's token; delete needs its confirmation box).
async fn dead_letter_action(
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
                Err(error) => ApiError::from(error).into_response(),
            }
        }
        "delete" if form.confirm.as_deref() == Some("yes") => {
            match dead_letters::purge(&state.pool, &caller.actor, &one).await {
                Ok(_) => done_redirect(&everything, &format!("Deleted dead letter {id}.")),
                Err(error) => ApiError::from(error).into_response(),
            }
        }
        "delete" => done_redirect(&everything, "Not deleted: tick the confirmation box."),
        _ => ApiError::not_found("no such action").into_response(),
    }
}
