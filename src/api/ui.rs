//! `/ui`: the dashboard, served by `herald api` itself (server-rendered HTML, no script, no CDN: the machines that
//! run herald may have no internet). It reads and acts through the same query functions as `/v1`, never a second
//! copy of their SQL.
//!
//! Log in with an API key: it is kept in an HttpOnly, SameSite=Strict cookie scoped to `/ui` (accepted on `/ui`
//! routes only), so no page script can read it and no other site's request carries it. `read` keys look; `admin`
//! keys act. Every action is a form POST carrying the session's form token (CSRF), and is written to the audit log
//! under the key, as the same action over `/v1` is.
//!
//! This first part serves the overview (queues: depth, running, scheduled, oldest age, paused) with pause and
//! resume.

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
use crate::queue::{QueueName, admin};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/queues/{name}/{action}", post(queue_action))
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
            r#"<nav><a href="/ui">Overview</a><form method="post" action="/ui/logout" class="inline"><input type="hidden" name="csrf" value="{}"><button>Log out</button></form><span class="who">{}</span></nav>"#,
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

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d2330}header{display:flex;gap:1rem;align-items:center;padding:.6rem 1rem;background:#1d2330;color:#fff;flex-wrap:wrap}header a{color:#fff}nav{display:flex;gap:1rem;align-items:center;flex:1}.who{margin-left:auto;opacity:.8}main{padding:1rem;max-width:70rem}table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #dde;overflow-wrap:anywhere}td.n{text-align:right;font-variant-numeric:tabular-nums}.paused{color:#b35a00;font-weight:600}.inline{display:inline}button{font:inherit;padding:.2rem .7rem;cursor:pointer}.error{color:#a00}@media(max-width:40rem){th:nth-child(5),td:nth-child(5){display:none}}";

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
async fn overview(State(state): State<ApiState>, caller: Result<UiCaller, ApiError>) -> Response {
    let Ok(caller) = caller else {
        return Redirect::to("/ui/login").into_response();
    };
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
    caller: Result<UiCaller, ApiError>,
    ApiPath((name, action)): ApiPath<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let Ok(caller) = caller else {
        return Redirect::to("/ui/login").into_response();
    };
    let refuse = |status: StatusCode, message: &str| {
        let mut response = page(
            "Not done",
            Some(&caller),
            &format!(
                r#"<p class="error" role="alert">{}</p><p><a href="/ui">Back</a></p>"#,
                esc(message)
            ),
        );
        *response.status_mut() = status;
        response
    };
    if form.csrf != caller.csrf {
        return refuse(StatusCode::FORBIDDEN, "This form is not from this session.");
    }
    if !caller.admin {
        return refuse(
            StatusCode::FORBIDDEN,
            "Acting needs a key with the admin scope.",
        );
    }
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return refuse(StatusCode::NOT_FOUND, "No such action."),
    };
    let Ok(queue) = QueueName::parse(&name) else {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "No such queue name.");
    };
    match admin::set_paused(&state.pool, &caller.actor, &queue, paused).await {
        Ok(_) => Redirect::to("/ui").into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}
