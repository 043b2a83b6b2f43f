//! herald's HTTP API (axum). Every `/v1` handler is documented for the OpenAPI spec (utoipa), so the spec served at
//! `/openapi.json` is generated from the handlers themselves.
//!
//! Which file serves what:
//! * `jobs.rs`: `/v1/jobs`, `/v1/jobs/batch`, `/v1/jobs/{id}` (enqueue, read, cancel); `batcher.rs` coalesces the
//!   single enqueues into batch statements.
//! * `operations.rs`: `/v1/queues` (pause, resume), `/v1/dead-letters` (replay, delete), `/v1/workers`.
//! * `workflows.rs`: `/v1/workflows`, `/v1/runs`, `/v1/events`: definitions, runs and events.
//! * `deliveries.rs`: `/v1/runs/{id}/deliveries`, what the channel layer did for a run.
//! * `providers.rs`: `/v1/providers` and the circuit gauges `/metrics` refreshes.
//! * `suppressions.rs`: `/v1/suppressions`.
//! * `analytics.rs`: `/v1/analytics/daily`, the clock's daily rollups.
//! * `callbacks.rs`: `/v1/callbacks/{provider}`, a thin door to `channels::callbacks::Callbacks`.
//! * this file: the router and its middleware, the state, `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and
//!   `/docs`.
//!
//! And what they share:
//! * `auth.rs`, `keys.rs`: API keys with scopes and a per-key rate limit (the `Caller` extractor).
//! * `error.rs`: [`ApiError`], the one table from every error to an RFC 9457 problem document.
//! * `extract.rs`: extractors that turn bad input into problems naming the field (JSON path, parameter, header).
//! * `responses.rs`: the problem answers many endpoints share, as OpenAPI response groups.
//! * `schemas.rs`: the JSON a request may carry (no U+0000, which `jsonb` cannot store), as OpenAPI schemas.
//! * `settings.rs`: the `[api]` settings section.
//!
//! [`router`] builds the whole application; `herald api`, `herald up` and the tests all serve that same router.

mod analytics;
mod audit;
mod auth;
mod batcher;
mod callbacks;
mod deliveries;
mod error;
mod extract;
mod feed;
mod jobs;
pub mod keys;
mod listener;
mod operations;
mod providers;
mod recipients;
mod responses;
mod schedules;
mod schemas;
mod settings;
mod suppressions;
mod templates;
mod ui;
mod workflows;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::queue::producers::ProducerRules;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

pub use error::{ApiError, Problem};

pub use providers::configured_providers;
pub use settings::ApiSettings;

use crate::channels::callbacks::{CallbackSettings, Callbacks};
use crate::clock::schedules::Schedule;
use crate::metrics::Metrics;
use crate::queue::JobDefaults;
use crate::workflow::Engine;
use auth::{Authorized, FailureLimiter, KeyCache, MetricsScope};
use extract::BodyLimit;
use responses::ReadAuth;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct ApiState(Arc<StateInner>);

pub struct StateInner {
    pub pool: PgPool,
    pub defaults: JobDefaults,
    pub settings: ApiSettings,
    pub metrics: Metrics,
    pub engine: Arc<Engine>,
    /// The providers settings configure (for `GET /v1/providers`).
    pub providers: Vec<providers::ConfiguredProvider>,
    /// Receives delivery callbacks (`[callbacks]` settings).
    pub callbacks: Callbacks,
    /// The clock's schedules (for `GET /v1/schedules`).
    pub schedules: Arc<[Schedule]>,
    /// What callers may enqueue.
    pub producers: ProducerRules,
    /// The in-app feed's settings, token signer and live streams (see `feed.rs`).
    pub feed: feed::FeedState,
    enqueuer: batcher::EnqueueBatcher,
    /// The dashboard overview's last reads, shared by every open tab (see `ui/overview.rs`).
    overview: ui::OverviewCache,
    keys: KeyCache,
    failures: FailureLimiter,
    limiter: DefaultKeyedRateLimiter<i64>,
}

impl std::ops::Deref for ApiState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.0
    }
}

/// What the API serves besides its own section: the database, the engine, and the other modules' views.
pub struct ApiParts {
    pub pool: PgPool,
    pub defaults: JobDefaults,
    pub metrics: Metrics,
    pub engine: Arc<Engine>,
    /// The overview `GET /v1/providers` serves.
    pub providers: Vec<providers::ConfiguredProvider>,
    /// The `[callbacks]` settings.
    pub callbacks: CallbackSettings,
    /// The clock's schedules, for `GET /v1/schedules`.
    pub schedules: Arc<[Schedule]>,
    /// What callers may enqueue (no herald-internal queues or kinds).
    pub producers: ProducerRules,
    /// `[feed]`: recipient tokens, CORS and live streams.
    pub feed: crate::feed::FeedSettings,
}

impl ApiState {
    pub fn new(settings: &ApiSettings, parts: ApiParts) -> Self {
        let ApiParts {
            pool,
            defaults,
            metrics,
            engine,
            providers,
            callbacks,
            schedules,
            producers,
            feed,
        } = parts;
        let settings = settings.clone();
        let failures = FailureLimiter::new(
            settings.auth_failures_per_second,
            settings.auth_failures_burst,
        );
        let quota = Quota::per_second(settings.rate_limit_per_second)
            .allow_burst(settings.rate_limit_burst);
        let limiter = RateLimiter::keyed(quota);
        let enqueuer = batcher::EnqueueBatcher::start(pool.clone(), defaults.clone());
        let callbacks = Callbacks::new(callbacks, pool.clone());
        Self(Arc::new(StateInner {
            pool,
            defaults,
            settings,
            metrics,
            engine,
            providers,
            callbacks,
            schedules,
            producers,
            feed: feed::FeedState::new(feed),
            enqueuer,
            overview: ui::OverviewCache::default(),
            keys: KeyCache::default(),
            failures,
            limiter,
        }))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "herald", description = "Durable PostgreSQL job queue and notification workflows: enqueue jobs, trigger workflow runs, send events, and operate it all over HTTP. Errors are RFC 9457 problem documents; see docs/api.md."),
    paths(
        jobs::enqueue_one, jobs::enqueue_batch, jobs::get_job, jobs::cancel_job,
        operations::list_queues, operations::pause_queue, operations::resume_queue,
        operations::list_dead_letters, operations::get_dead_letter, operations::replay_dead_letter,
        operations::replay_dead_letters, operations::delete_dead_letter,
        operations::list_workers,
        schedules::list_schedules, schedules::pause_schedule, schedules::resume_schedule,
        analytics::daily,
        workflows::save_workflow, workflows::list_workflows, workflows::get_workflow, workflows::start_run,
        workflows::get_run, workflows::list_runs, workflows::cancel_run, workflows::retry_run,
        workflows::post_event,
        templates::save_template, templates::list_templates, templates::get_template,
        templates::preview_template,
        providers::list_providers, deliveries::run_deliveries, suppressions::list_suppressions,
        suppressions::add_suppression, suppressions::remove_suppression, callbacks::receive_callback,
        audit::list_audit,
        recipients::put_recipient, recipients::patch_recipient, recipients::get_recipient,
        recipients::delete_recipient, recipients::list_recipients, recipients::batch_recipients,
        recipients::get_preferences, recipients::put_preferences, recipients::add_members,
        recipients::remove_members, recipients::list_members, recipients::get_fanout, recipients::unsubscribe, recipients::unsubscribe_page,
        feed::mint_token, feed::list_feed, feed::feed_counts, feed::mark_feed, feed::stream_feed,
        healthz, readyz, metrics,
    ),
    components(schemas(Problem, error::FieldError)),
    modifiers(&ApiKeyScheme)
)]
pub struct ApiDoc;

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An API key from `herald keys create`"))
            .build();
        components.add_security_scheme("api_key", SecurityScheme::Http(scheme));
        let token = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A recipient token (`feed_...`, from `POST /v1/recipients/{id}/feed/token`): that recipient's feed only; \
                 also accepted as the `token` query parameter",
            ))
            .build();
        components.add_security_scheme("recipient_token", SecurityScheme::Http(token));
    }
}

/// The application: routes, limits, request ids, metrics and tracing.
pub fn router(state: ApiState) -> Router {
    let settings = state.settings.clone();
    let v1 = Router::new()
        .route("/jobs", post(jobs::enqueue_one))
        .route("/jobs/batch", post(jobs::enqueue_batch))
        .route("/jobs/{id}", get(jobs::get_job).delete(jobs::cancel_job))
        .route("/queues", get(operations::list_queues))
        .route("/queues/{name}/pause", post(operations::pause_queue))
        .route("/queues/{name}/resume", post(operations::resume_queue))
        .route("/dead-letters", get(operations::list_dead_letters))
        .route(
            "/dead-letters/replay",
            post(operations::replay_dead_letters),
        )
        .route(
            "/dead-letters/{id}",
            get(operations::get_dead_letter).delete(operations::delete_dead_letter),
        )
        .route(
            "/dead-letters/{id}/replay",
            post(operations::replay_dead_letter),
        )
        .route("/workers", get(operations::list_workers))
        .route("/schedules", get(schedules::list_schedules))
        .route("/analytics/daily", get(analytics::daily))
        .route("/schedules/{name}/pause", post(schedules::pause_schedule))
        .route("/schedules/{name}/resume", post(schedules::resume_schedule))
        .route(
            "/workflows",
            get(workflows::list_workflows).post(workflows::save_workflow),
        )
        .route("/workflows/{name}", get(workflows::get_workflow))
        .route(
            "/templates",
            get(templates::list_templates).post(templates::save_template),
        )
        .route("/templates/{name}", get(templates::get_template))
        .route(
            "/templates/{name}/preview",
            post(templates::preview_template),
        )
        .route("/workflows/{name}/runs", post(workflows::start_run))
        .route("/runs", get(workflows::list_runs))
        .route("/runs/{id}", get(workflows::get_run))
        .route("/runs/{id}/cancel", post(workflows::cancel_run))
        .route("/runs/{id}/retry", post(workflows::retry_run))
        .route("/events", post(workflows::post_event))
        .route("/audit", get(audit::list_audit))
        .route("/runs/{id}/deliveries", get(deliveries::run_deliveries))
        .route("/providers", get(providers::list_providers))
        .route(
            "/suppressions",
            get(suppressions::list_suppressions).post(suppressions::add_suppression),
        )
        .route("/callbacks/{provider}", post(callbacks::receive_callback))
        .route("/recipients", get(recipients::list_recipients))
        .route("/recipients/batch", post(recipients::batch_recipients))
        .route(
            "/recipients/{id}",
            get(recipients::get_recipient)
                .put(recipients::put_recipient)
                .patch(recipients::patch_recipient)
                .delete(recipients::delete_recipient),
        )
        .route(
            "/recipients/{id}/preferences",
            get(recipients::get_preferences).put(recipients::put_preferences),
        )
        .route(
            "/topics/{key}/recipients",
            get(recipients::list_members)
                .put(recipients::add_members)
                .delete(recipients::remove_members),
        )
        .route("/fanouts/{id}", get(recipients::get_fanout))
        .route(
            "/unsubscribe/{token}",
            get(recipients::unsubscribe_page).post(recipients::unsubscribe),
        )
        .route(
            "/suppressions/{channel}/{address}",
            axum::routing::delete(suppressions::remove_suppression),
        )
        .merge(feed::routes(&state.feed.settings));
    Router::new()
        .nest("/v1", v1)
        .merge(ui::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs_page))
        .route("/docs/redoc.standalone.js", get(redoc_script))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout,
        ))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes.get()))
        .layer(Extension(BodyLimit(settings.max_body_bytes.get())))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // Outermost: a client's id that is not a short visible-ASCII token is dropped, so the layer above
        // generates one. The id is copied onto every job a request creates; unbounded, one batch request with a
        // 300,000-character id wrote 312 MB.
        .layer(middleware::map_request(drop_unfit_request_id))
        .with_state(state)
}

/// The longest client-supplied `X-Request-Id` kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether a client's `X-Request-Id` is kept: 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII characters.
pub fn fit_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.iter().all(|b| b.is_ascii_graphic())
}

async fn drop_unfit_request_id(mut request: Request) -> Request {
    let headers = request.headers_mut();
    let fit = headers
        .get_all("x-request-id")
        .iter()
        .map(|v| fit_request_id(v.as_bytes()))
        .collect::<Vec<_>>();
    // Exactly one fit value is kept; none, several or an unfit one: a fresh id.
    if fit != [true] {
        headers.remove("x-request-id");
    }
    request
}

/// Serves until `shutdown`, then stops accepting and gives in-flight requests `api.shutdown_grace_secs`
/// (`listener.rs`: the connection cap and the header-read timeout).
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Live feed streams end when the API stops, so the graceful shutdown does not wait for them.
    let feed_shutdown = state.feed.shutdown.clone();
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        feed_shutdown.cancel();
    });
    let limits = listener::ConnectionLimits {
        max_connections: state.settings.max_connections.get(),
        header_read_timeout: state.settings.header_read_timeout,
        idle_timeout: state.settings.idle_timeout,
        shutdown_grace: state.settings.shutdown_grace,
    };
    listener::serve(listener, router(state), limits, shutdown).await
}

/// One span per request (method, route, request id) and the request metrics.
async fn observe(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let route = route.unwrap_or_else(|| "unmatched".into());
    let method = request.method().clone();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let span = tracing::info_span!("request", %method, route = %route, request_id = %request_id);
    // A caller's W3C trace (checked: a malformed header is ignored) becomes this request's parent, so the trace
    // continues through the jobs and runs it starts (see `telemetry`).
    if let Some(parent) = request.headers().get("traceparent") {
        crate::telemetry::set_parent(&span, parent.as_bytes());
    }
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    state
        .metrics
        .http_requests
        .with_label_values(&[&route, method.as_str(), status.as_str()])
        .inc();
    state
        .metrics
        .http_duration
        .with_label_values(&[&route])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                latency_ms = elapsed.as_secs_f64() * 1e3,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                latency_ms = elapsed.as_secs_f64() * 1e3,
                "request"
            );
        }
    });
    response
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The database answers and its migrations are current.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "Database unreachable or not migrated", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn readyz(State(state): State<ApiState>) -> Result<Json<Health>, ApiError> {
    crate::db::readiness(&state.pool)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(Health {
        status: "ready".into(),
    }))
}

/// Prometheus metrics (text exposition format). Needs the `read` scope.
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Metrics", body = String, content_type = "text/plain"),
        ReadAuth,
    ),
    security(("api_key" = ["metrics"]))
)]
async fn metrics(
    State(state): State<ApiState>,
    _: Authorized<MetricsScope>,
) -> Result<Response, ApiError> {
    providers::refresh_circuit_gauges(&state).await?;
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

async fn openapi_json() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => ApiError::internal(error.to_string()).into_response(),
    }
}

/// A human-readable rendering of `/openapi.json`: Redoc, served from the binary (`assets/`, version 2.5.0, MIT),
/// so the page works offline and loads no third-party code.
/// The API reference page: the vendored Redoc script renders `/openapi.json`. Its policy lets only that script
/// run (no inline script, nothing from elsewhere): the page shares its origin with `/ui`, so a script injected
/// into it (a description rendered as HTML, say) must not run.
async fn docs_page() -> Response {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; \
             base-uri 'none'; form-action 'none'",
        )],
        Html(
            r#"<!doctype html><html><head><meta charset="utf-8"><title>herald API</title></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="/docs/redoc.standalone.js"></script></body></html>"#,
        ),
    )
        .into_response()
}

/// Redoc 2.5.0 (`npm pack redoc@2.5.0`, `bundles/redoc.standalone.js`; its licence is next to it in `assets/`).
static REDOC: &[u8] = include_bytes!("../../assets/redoc.standalone.js");

async fn redoc_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        REDOC,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::ApiDoc;
    use crate::channels::ChannelKind;
    use crate::channels::deliveries::MAX_ADDRESS_CHARS;
    use crate::clock::rollups::MAX_FILTER_CHARS;
    use crate::workflow::definition::MAX_NODES;
    use crate::workflow::{MAX_EVENT_KEY_CHARS, MAX_EVENT_NAME_CHARS, RunStatus};
    use utoipa::OpenApi;

    /// utoipa's validation attributes take literals only, so the limits the handlers enforce are written twice:
    /// as Rust constants and in the attributes. This holds the document to the constants.
    #[test]
    fn the_document_states_the_limits_the_server_enforces() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schema = |name: &str| doc["components"]["schemas"][name].clone();
        let param = |path: &str, name: &str| {
            let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
            let param = params.iter().find(|p| p["name"] == name).unwrap();
            param["schema"].clone()
        };
        let page = super::extract::MAX_PAGE;
        for path in ["/v1/runs", "/v1/dead-letters", "/v1/audit"] {
            assert_eq!(param(path, "limit")["maximum"], json!(page), "{path}");
            assert_eq!(param(path, "limit")["minimum"], json!(1), "{path}");
            assert_eq!(param(path, "cursor")["pattern"], "^[0-9]{1,18}$", "{path}");
        }
        for name in ["workflow", "channel", "provider"] {
            let filter = param("/v1/analytics/daily", name);
            assert_eq!(filter["maxLength"], json!(MAX_FILTER_CHARS), "{name}");
        }
        let event = schema("EventRequest");
        assert_eq!(
            event["properties"]["name"]["maxLength"],
            json!(MAX_EVENT_NAME_CHARS)
        );
        for field in ["key", "id"] {
            let max = &event["properties"][field]["maxLength"];
            assert_eq!(max, &json!(MAX_EVENT_KEY_CHARS), "{field}");
        }
        let address = &schema("NewSuppression")["properties"]["address"];
        assert_eq!(address["maxLength"], json!(MAX_ADDRESS_CHARS));
        let nodes = &schema("WorkflowDocument")["properties"]["nodes"];
        assert_eq!(nodes["maxItems"], json!(MAX_NODES));
        let names = |values: &mut dyn Iterator<Item = &'static str>| -> Value {
            values.map(Value::from).collect()
        };
        assert_eq!(
            schema("RunStatus")["enum"],
            names(&mut RunStatus::ALL.iter().map(|s| s.as_str()))
        );
        assert_eq!(
            schema("ChannelKind")["enum"],
            names(&mut ChannelKind::ALL.iter().map(|c| c.as_str()))
        );
    }
}
