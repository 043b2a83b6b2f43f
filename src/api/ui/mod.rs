//! `/ui`: the dashboard, served by `herald api` itself (server-rendered HTML, no script, no CDN: the machines that
//! run herald may have no internet). Every page reads and acts through the same query functions as `/v1` (or
//! `herald status`), never a second copy of their SQL.
//!
//! Log in with an API key: it is kept in an HttpOnly, SameSite=Strict cookie scoped to `/ui` (accepted on `/ui`
//! routes only), so no page script can read it and no other site's request carries it. `read` keys look; `admin`
//! keys act. Every action is a form POST carrying the session's form token (CSRF), and is written to the audit log
//! under the key, as the same action over `/v1` is. Bulk actions show what they would touch and ask first.
//!
//! One file per page family: `overview` (the fleet), `queues` (queues and jobs), `dead_letters`, `runs`
//! (workflow runs, their graph and timeline), `support` (deliveries and recipients), `templates`, `analytics`
//! (the daily rollups as charts), `audit`; `chart` draws the SVG charts and `html` holds the escaping and
//! formatting every page uses.

mod analytics;
mod audit;
mod chart;
mod dead_letters;
mod html;
mod overview;
mod queues;
mod runs;
mod support;
mod templates;

use axum::Form;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::ApiState;
use super::auth::{UI_COOKIE, UiCaller, ui_login};
use super::error::ApiError;
use html::esc;
pub(super) use overview::OverviewCache;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(overview::overview))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/queues/{name}", get(queues::queue_page))
        .route("/ui/queues/{name}/{action}", post(queues::queue_action))
        .route("/ui/jobs/{id}", get(queues::job_page))
        .route("/ui/jobs/{id}/cancel", post(queues::cancel_job))
        .route("/ui/dead-letters", get(dead_letters::list))
        .route(
            "/ui/dead-letters/replay",
            get(dead_letters::confirm_replay_all).post(dead_letters::replay_all),
        )
        .route(
            "/ui/dead-letters/purge",
            get(dead_letters::confirm_purge_all).post(dead_letters::purge_all),
        )
        .route("/ui/dead-letters/{id}", get(dead_letters::letter))
        .route(
            "/ui/dead-letters/{id}/{action}",
            post(dead_letters::letter_action),
        )
        .route("/ui/runs", get(runs::list))
        .route("/ui/runs/{id}", get(runs::run_page))
        .route("/ui/runs/{id}/{action}", post(runs::run_action))
        .route("/ui/deliveries", get(support::deliveries))
        .route("/ui/recipients", get(support::find_recipient))
        .route("/ui/recipients/{id}", get(support::recipient_page))
        .route("/ui/templates", get(templates::list))
        .route("/ui/templates/{name}", get(templates::template_page))
        .route("/ui/analytics", get(analytics::analytics))
        .route("/ui/audit", get(audit::audit))
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

/// A page's query string. One that does not parse (a repeated field, a number that is not one) is refused with
/// a page saying so, never read as "no filter": a list or a bulk action silently widened to everything would act
/// on what nobody asked for.
struct PageQuery<T>(T);

impl<T, S> axum::extract::FromRequestParts<S> for PageQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| PageQuery(q.0))
            .map_err(|rejection| {
                failure(
                    None,
                    ApiError::bad_request(format!(
                        "The address's query cannot be read ({}): each filter may be given once.",
                        rejection.body_text()
                    )),
                )
            })
    }
}

/// The sections of the navigation bar.
const SECTIONS: &[(&str, &str)] = &[
    ("/ui", "Overview"),
    ("/ui/dead-letters", "Dead letters"),
    ("/ui/runs", "Runs"),
    ("/ui/deliveries", "Deliveries"),
    ("/ui/templates", "Templates"),
    ("/ui/analytics", "Analytics"),
    ("/ui/audit", "Audit"),
];

/// A whole page: the frame (title, navigation, logout) around `body`, with headers that keep it from being framed
/// or running anything but itself.
fn page(title: &str, caller: Option<&UiCaller>, body: &str) -> Response {
    let nav = match caller {
        Some(caller) => {
            let links: String = SECTIONS
                .iter()
                .map(|(href, label)| format!(r#"<a href="{href}">{label}</a>"#))
                .collect();
            format!(
                r#"<nav aria-label="Sections">{links}</nav><form method="post" action="/ui/logout" class="inline who"><input type="hidden" name="csrf" value="{}"><span>{}</span> <button>Log out</button></form>"#,
                esc(&caller.csrf),
                if caller.admin { "admin" } else { "read only" }
            )
        }
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
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

const STYLE: &str = concat!(
    "body{font-family:system-ui,sans-serif;margin:0;color:#1d2330}",
    "header{display:flex;gap:.4rem 1rem;align-items:center;padding:.6rem 1rem;background:#1d2330;color:#fff;flex-wrap:wrap}",
    "header a{color:#fff}nav{display:flex;gap:.3rem 1rem;flex-wrap:wrap;flex:1}.who{margin-left:auto;opacity:.9}",
    "a:focus,button:focus,input:focus,select:focus{outline:3px solid #f5a623;outline-offset:1px}",
    "main{padding:1rem;max-width:80rem}h2{margin-top:1.6rem}",
    ".scroll{overflow-x:auto}table{border-collapse:collapse;width:100%}",
    "th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #dde;vertical-align:top}",
    "th{white-space:nowrap}td{overflow-wrap:anywhere;min-width:3.5rem}",
    "td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}",
    ".paused,.warn{color:#b35a00;font-weight:600}.bad{color:#a00;font-weight:600}.good{color:#176b2c}",
    ".inline{display:inline}button{font:inherit;padding:.2rem .7rem;cursor:pointer}.error{color:#a00}",
    ".notice{background:#eef6ee;padding:.4rem .6rem}",
    "a.button{display:inline-block;padding:.2rem .7rem;border:1px solid #889;border-radius:3px;text-decoration:none;color:inherit}",
    "dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dd{margin:0;overflow-wrap:anywhere}",
    "pre{background:#f4f5f8;padding:.6rem;overflow:auto;max-height:30rem;white-space:pre-wrap;overflow-wrap:anywhere}",
    "form.filters{display:flex;flex-wrap:wrap;gap:.4rem .8rem;align-items:end;margin:.6rem 0}",
    "form.filters label{display:flex;flex-direction:column;font-size:.85rem}",
    ".tabs a{margin-right:1rem}.tabs a[aria-current]{font-weight:700;text-decoration:none}",
    "svg{max-width:100%;height:auto}figure{margin:.6rem 0}figure svg{max-width:min(100%,48rem)}",
    "#graph svg{max-width:none}.legend span{margin-right:1rem;white-space:nowrap}",
    ".swatch{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}",
    ".actions{margin:.8rem 0;display:flex;gap:.6rem;flex-wrap:wrap}",
    "@media(max-width:40rem){.wide{display:none}main{padding:.6rem}nav{order:3;flex-basis:100%}}"
);

/// A page saying why something could not be shown or done, with the status the API would answer.
fn failure(caller: Option<&UiCaller>, error: impl Into<ApiError>) -> Response {
    let error = error.into();
    let mut response = page(
        error.title(),
        caller,
        &format!(
            r#"<p class="error" role="alert">{}</p><p><a href="/ui">Back to the overview</a></p>"#,
            esc(error.detail())
        ),
    );
    *response.status_mut() = error.status();
    response
}

/// Compares two tokens in time that does not depend on where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A refusal page when the form is not from this session or the key may not act; `None` if it may.
fn refuse_action(caller: &UiCaller, csrf: &str) -> Option<Response> {
    if !same_token(csrf, &caller.csrf) {
        return Some(failure(
            Some(caller),
            ApiError::forbidden(
                "This form is not from this session: reload the page and try again.",
            ),
        ));
    }
    if !caller.admin {
        return Some(failure(
            Some(caller),
            ApiError::forbidden("Acting needs a key with the admin scope."),
        ));
    }
    None
}

/// The form of an action button: the session's token and nothing else.
#[derive(Deserialize)]
struct ActionForm {
    csrf: String,
}

/// A POST form with one button, carrying the session's token.
fn action_button(caller: &UiCaller, action: &str, id: &str, label: &str) -> String {
    format!(
        r#"<form method="post" action="{action}" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" id="{id}">{label}</button></form>"#,
        action = esc(action),
        csrf = esc(&caller.csrf),
        id = esc(id),
        label = esc(label),
    )
}

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
            r#"{error}<form method="post" action="/ui/login"><label for="key">API key</label> <input id="key" name="key" type="password" autocomplete="off" required autofocus> <button type="submit">Log in</button></form><p>A key with the <code>read</code> scope looks; <code>admin</code> acts.</p>"#
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
    // A login form posted from another site would sign this browser in with someone else's key.
    if !same_origin(&parts) {
        let mut response = login_form(Some("Log in from this page."));
        *response.status_mut() = axum::http::StatusCode::FORBIDDEN;
        return response;
    }
    let key = form.key.trim();
    if let Err(error) = ui_login(&parts, &state, key).await {
        let status = error.status();
        let mut response = login_form(Some("That key is not valid, or has no read scope."));
        *response.status_mut() = status;
        return response;
    }
    // A working day's session; `Secure` when the request came over TLS (directly or through a proxy that says so).
    let tls = parts.uri.scheme_str() == Some("https")
        || parts
            .headers
            .get("x-forwarded-proto")
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let secure = if tls { "; Secure" } else { "" };
    let cookie = format!(
        "{UI_COOKIE}={key}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{secure}"
    );
    let mut response = Redirect::to("/ui").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// How long a dashboard session lasts (seconds).
const SESSION_SECS: u32 = 12 * 3600;

/// Whether a form came from a page of this server. Browsers say so in `Sec-Fetch-Site` (`same-origin`, or `none`
/// for an address typed in); without it, the `Origin` must name the host the request was addressed to (`Host`,
/// the HTTP/2 authority, or `X-Forwarded-Host` from a proxy that rewrites `Host`). A request with neither header
/// (not a browser) passes: the session token guards every action.
fn same_origin(parts: &axum::http::request::Parts) -> bool {
    if let Some(site) = parts.headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = parts.headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(origin_host) = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest)
    else {
        // `Origin: null` (a sandboxed or privacy-sensitive context): not this server's page.
        return false;
    };
    let header_host = |name: &str| parts.headers.get(name).and_then(|h| h.to_str().ok());
    [
        header_host("x-forwarded-host"),
        header_host(header::HOST.as_str()),
        parts.uri.authority().map(|a| a.as_str()),
    ]
    .into_iter()
    .flatten()
    .any(|host| host.eq_ignore_ascii_case(origin_host))
}

async fn logout() -> Response {
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("herald_ui=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}
