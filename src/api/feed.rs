//! `/v1/recipients/{id}/feed…`: the in-app feed of one recipient: list, counts, mark, a live stream (Server-Sent
//! Events), and the recipient tokens a browser uses instead of an API key. These routes alone answer CORS (the
//! origins of `feed.cors_origins`).

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use chrono::Utc;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::{Authorized, EnqueueScope, FeedCaller};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::responses::{EnqueueAuth, JsonBody, ReadAuth};
use crate::feed::live::{Live, Subscription};
use crate::feed::store::{self, FeedCounts, FeedPage, FeedQuery, Mark};
use crate::feed::tokens::TokenSigner;
use crate::feed::{FeedError, FeedSettings};
use crate::recipients::RecipientId;

/// The feed's part of the API state: settings, the token signer (its key read on first use), and this process's
/// live streams (listening from the first stream on).
pub struct FeedState {
    pub settings: FeedSettings,
    signer: tokio::sync::OnceCell<TokenSigner>,
    live: OnceLock<Arc<Live>>,
}

impl FeedState {
    pub fn new(settings: FeedSettings) -> Self {
        Self {
            settings,
            signer: tokio::sync::OnceCell::new(),
            live: OnceLock::new(),
        }
    }

    pub async fn signer(&self, pool: &sqlx::PgPool) -> Result<&TokenSigner, ApiError> {
        self.signer
            .get_or_try_init(|| TokenSigner::load(pool))
            .await
            .map_err(|e| ApiError::unavailable(format!("the feed key cannot be read: {e}")))
    }

    fn live(&self, pool: &sqlx::PgPool) -> &Arc<Live> {
        self.live.get_or_init(|| {
            Live::start(
                pool.clone(),
                self.settings.max_streams,
                tokio_util::sync::CancellationToken::new(),
            )
        })
    }
}

impl From<FeedError> for ApiError {
    fn from(error: FeedError) -> Self {
        match error {
            FeedError::Database(e) => {
                super::error::ApiError::from(crate::queue::QueueError::from(e))
            }
            FeedError::Invalid(message) => ApiError::validation(vec![super::error::FieldError {
                field: "query".into(),
                message,
            }]),
        }
    }
}

/// The feed routes, with CORS when `feed.cors_origins` names any origin.
pub fn routes(settings: &FeedSettings) -> Router<ApiState> {
    let cors = !settings.cors_origins.is_empty();
    // With CORS, each route takes OPTIONS too, so a browser's preflight reaches the CORS layer (which answers it)
    // instead of the method check (405).
    let preflight = |route: axum::routing::MethodRouter<ApiState>| {
        if cors {
            route.options(|| async { axum::http::StatusCode::NO_CONTENT })
        } else {
            route
        }
    };
    let router = Router::new()
        .route("/recipients/{id}/feed", preflight(get(list_feed)))
        .route("/recipients/{id}/feed/counts", preflight(get(feed_counts)))
        .route("/recipients/{id}/feed/mark", preflight(post(mark_feed)))
        .route("/recipients/{id}/feed/stream", preflight(get(stream_feed)))
        .route("/recipients/{id}/feed/token", preflight(post(mint_token)));
    if !cors {
        return router;
    }
    let origins = if settings.cors_origins.iter().any(|o| o == "*") {
        tower_http::cors::AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = settings
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
            .collect();
        tower_http::cors::AllowOrigin::list(list)
    };
    router.layer(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

fn recipient(id: &str) -> Result<RecipientId, ApiError> {
    RecipientId::parse(id).map_err(|e| ApiError::field("id", e))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// How long the token works, in seconds (60 to `feed.token_max_ttl_secs`, default that maximum).
    #[schema(minimum = 60, maximum = 86400)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeedToken {
    /// Send it as `Authorization: Bearer <token>`, or as `?token=<token>` on the stream.
    pub token: String,
    pub recipient: String,
    pub expires_at: chrono::DateTime<Utc>,
}

/// Mint a recipient token: it opens this recipient's feed routes (and nothing else) from a browser, until it expires.
#[utoipa::path(
    post, path = "/v1/recipients/{id}/feed/token", tag = "feed",
    params(("id" = String, Path, description = "Recipient id")),
    request_body(content = TokenRequest, description = "`{}` or `{\"ttl_secs\": 600}`"),
    responses(
        (status = 200, description = "The token", body = FeedToken),
        (status = 422, description = "A bad id or lifetime", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]))
)]
pub async fn mint_token(
    State(state): State<ApiState>,
    _: Authorized<EnqueueScope>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<Json<FeedToken>, ApiError> {
    let id = recipient(&id)?;
    let max = state.feed.settings.token_max_ttl_secs;
    let ttl = request.ttl_secs.unwrap_or(max);
    if !(60..=max).contains(&ttl) {
        return Err(ApiError::field(
            "ttl_secs",
            format!("must be from 60 to {max}"),
        ));
    }
    let signer = state.feed.signer(&state.pool).await?;
    let expires_at = Utc::now() + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(3600));
    Ok(Json(FeedToken {
        token: signer.mint(id.as_str(), expires_at),
        recipient: id.as_str().to_string(),
        expires_at,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FeedParams {
    /// `all` (default: every item not archived), `unseen`, `unread`, `read`, `archived`.
    #[param(pattern = "^(all|unseen|unread|read|archived)$")]
    pub state: Option<String>,
    /// Only items of this workflow category.
    #[param(max_length = 64)]
    pub category: Option<String>,
    /// The previous page's `next_cursor`.
    #[param(max_length = 32)]
    pub cursor: Option<String>,
    /// 1-100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// A recipient token, instead of the `Authorization` header (read by the authentication, not here).
    #[allow(dead_code)]
    pub token: Option<String>,
}

/// A page of the recipient's feed, newest first, with the unseen and unread counts.
#[utoipa::path(
    get, path = "/v1/recipients/{id}/feed", tag = "feed",
    params(("id" = String, Path, description = "Recipient id"), FeedParams),
    responses(
        (status = 200, description = "The page", body = FeedPage),
        (status = 422, description = "A bad filter or cursor", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]), ("recipient_token" = []))
)]
pub async fn list_feed(
    State(state): State<ApiState>,
    caller: FeedCaller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<FeedParams>,
) -> Result<Json<FeedPage>, ApiError> {
    let id = recipient(&id)?;
    caller.may_read(id.as_str())?;
    let query = FeedQuery {
        state: params.state,
        category: params.category,
        cursor: params.cursor,
        limit: params.limit,
    };
    Ok(Json(store::list(&state.pool, id.as_str(), &query).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TokenParam {
    /// A recipient token, instead of the `Authorization` header (read by the authentication, not here).
    #[allow(dead_code)]
    pub token: Option<String>,
}

/// The recipient's unseen and unread counts (a badge).
#[utoipa::path(
    get, path = "/v1/recipients/{id}/feed/counts", tag = "feed",
    params(("id" = String, Path, description = "Recipient id"), TokenParam),
    responses((status = 200, description = "The counts", body = FeedCounts), ReadAuth),
    security(("api_key" = ["read"]), ("recipient_token" = []))
)]
pub async fn feed_counts(
    State(state): State<ApiState>,
    caller: FeedCaller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(_token): ApiQuery<TokenParam>,
) -> Result<Json<FeedCounts>, ApiError> {
    let id = recipient(&id)?;
    caller.may_read(id.as_str())?;
    Ok(Json(store::counts(&state.pool, id.as_str()).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRequest {
    /// The items (1-1,000 ids); or `all`.
    #[schema(min_items = 1, max_items = 1000)]
    pub ids: Option<Vec<i64>>,
    /// Every item of the recipient.
    pub all: Option<bool>,
    /// `seen`, `read` (also seen), `unread`, `archived`, `unarchived`.
    #[serde(rename = "as")]
    #[schema(pattern = "^(seen|read|unread|archived|unarchived)$")]
    pub mark: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Marked {
    /// Items whose state changed.
    pub changed: i64,
}

/// Mark one, several or all of the recipient's items seen, read, unread, archived or unarchived.
#[utoipa::path(
    post, path = "/v1/recipients/{id}/feed/mark", tag = "feed",
    params(("id" = String, Path, description = "Recipient id"), TokenParam),
    request_body(content = MarkRequest, description = "`{\"ids\": [12, 13], \"as\": \"read\"}` or `{\"all\": true, \"as\": \"seen\"}`"),
    responses(
        (status = 200, description = "How many changed", body = Marked),
        (status = 422, description = "Neither or both of `ids` and `all`, or an unknown mark", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]), ("recipient_token" = []))
)]
pub async fn mark_feed(
    State(state): State<ApiState>,
    caller: FeedCaller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(_token): ApiQuery<TokenParam>,
    ApiJson(request): ApiJson<MarkRequest>,
) -> Result<Json<Marked>, ApiError> {
    let id = recipient(&id)?;
    caller.may_write(id.as_str())?;
    let Some(mark) = Mark::parse(&request.mark) else {
        return Err(ApiError::field("as", format!("is one of {}", Mark::NAMES)));
    };
    let ids = match (&request.ids, request.all) {
        (Some(ids), None | Some(false)) => Some(ids.as_slice()),
        (None, Some(true)) => None,
        _ => {
            return Err(ApiError::field(
                "ids",
                "give either `ids` (1-1,000 items) or `\"all\": true`",
            ));
        }
    };
    let changed = store::mark(&state.pool, id.as_str(), ids, mark).await?;
    Ok(Json(Marked { changed }))
}

/// What a live stream remembers between wake-ups.
struct Following {
    pool: sqlx::PgPool,
    recipient: String,
    /// The newest item id sent.
    last: i64,
    subscription: Subscription,
    started: bool,
}

/// The most items one wake-up sends (more wait for the next look, which follows at once).
const STREAM_BATCH: i64 = 100;

/// Follow the recipient's feed live: Server-Sent Events `item` (a new item, `id:` its id) and `counts` (after every
/// change, and first on connecting). A reconnecting client's `Last-Event-ID` resumes after that item.
#[utoipa::path(
    get, path = "/v1/recipients/{id}/feed/stream", tag = "feed",
    params(("id" = String, Path, description = "Recipient id"), TokenParam),
    responses(
        (status = 200, description = "An event stream (text/event-stream)", content_type = "text/event-stream", body = String),
        (status = 503, description = "This process has `feed.max_streams` streams open", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]), ("recipient_token" = []))
)]
pub async fn stream_feed(
    State(state): State<ApiState>,
    caller: FeedCaller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(_token): ApiQuery<TokenParam>,
    headers: HeaderMap,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = recipient(&id)?;
    caller.may_read(id.as_str())?;
    // Subscribed before the starting point is read: a write in between wakes this stream, which then finds it.
    let subscription = state
        .feed
        .live(&state.pool)
        .subscribe(id.as_str())
        .ok_or_else(|| {
            ApiError::unavailable("too many feed streams on this API process; try again")
        })?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|id| *id >= 0);
    let last = match resume {
        Some(last) => last,
        None => store::newest_id(&state.pool, id.as_str()).await?,
    };
    let following = Following {
        pool: state.pool.clone(),
        recipient: id.as_str().to_string(),
        last,
        subscription,
        started: false,
    };
    let events = futures::stream::unfold(following, |mut f| async move {
        if f.started {
            // Woken by a write to this recipient's feed (or the listener reconnecting); ends with the process.
            f.subscription.changes.changed().await.ok()?;
        }
        f.started = true;
        let mut events = Vec::new();
        loop {
            let Ok(items) = store::items_after(&f.pool, &f.recipient, f.last, STREAM_BATCH).await
            else {
                break;
            };
            let full = items.len() as i64 == STREAM_BATCH;
            for item in items {
                f.last = f.last.max(item.id);
                if let Ok(event) = Event::default()
                    .event("item")
                    .id(item.id.to_string())
                    .json_data(&item)
                {
                    events.push(event);
                }
            }
            if !full {
                break;
            }
        }
        if let Ok(counts) = store::counts(&f.pool, &f.recipient).await
            && let Ok(event) = Event::default().event("counts").json_data(counts)
        {
            events.push(event);
        }
        Some((events, f))
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)));
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new().interval(Duration::from_secs(state.feed.settings.keepalive_secs)),
    ))
}
