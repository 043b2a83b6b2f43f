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
use super::auth::{Authorized, EnqueueScope, FeedCaller, ReadScope};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::responses::{EnqueueAuth, JsonBody, ReadAuth};
use crate::feed::live::{Live, Refused, Subscription};
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
    /// Cancelled when the API shuts down: streams end, and the listener lets its connection go.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl FeedState {
    pub fn new(settings: FeedSettings) -> Self {
        Self {
            settings,
            signer: tokio::sync::OnceCell::new(),
            live: OnceLock::new(),
            shutdown: tokio_util::sync::CancellationToken::new(),
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
                self.settings.max_streams_per_recipient,
                self.shutdown.clone(),
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
    let browser = Router::new()
        .route("/recipients/{id}/feed", preflight(get(list_feed)))
        .route("/recipients/{id}/feed/counts", preflight(get(feed_counts)))
        .route("/recipients/{id}/feed/mark", preflight(post(mark_feed)))
        .route("/recipients/{id}/feed/stream", preflight(get(stream_feed)));
    // Minting takes an API key: a backend's call, never a browser's, so it answers no CORS.
    let backend = Router::new().route("/recipients/{id}/feed/token", post(mint_token));
    if !cors {
        return browser.merge(backend);
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
    let browser = browser.layer(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ])
            .max_age(Duration::from_secs(600)),
    );
    browser.merge(backend)
}

fn recipient(id: &str) -> Result<RecipientId, ApiError> {
    RecipientId::parse(id).map_err(|e| ApiError::field("id", e))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// How long the token works, in seconds: 60 to `feed.token_max_ttl_secs` (3600 unless configured), default
    /// that maximum.
    #[schema(minimum = 60, maximum = 3600)]
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
    params(("id" = String, Path, description = "Your id for the recipient: 1-255 characters, no control characters, no white space at either end", max_length = 255, pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$")),
    request_body(content = TokenRequest, description = "`{}` or `{\"ttl_secs\": 600}`"),
    responses(
        (status = 200, description = "The token", body = FeedToken),
        (status = 422, description = "A bad id or lifetime", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue", "read"]))
)]
pub async fn mint_token(
    State(state): State<ApiState>,
    // A token reads the feed: minting one needs what reading it with a key needs too.
    _: Authorized<ReadScope>,
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
    /// Only items of this workflow category (1-64 characters of `[A-Za-z0-9_.-]`).
    #[param(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub category: Option<String>,
    /// The previous page's `next_cursor`.
    #[param(pattern = "^[1-9][0-9]{0,17}$")]
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
    params(("id" = String, Path, description = "Your id for the recipient: 1-255 characters, no control characters, no white space at either end", max_length = 255, pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$"), FeedParams),
    responses(
        (status = 200, description = "The page", body = FeedPage),
        (status = 400, description = "A malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad id, filter or cursor", body = Problem, content_type = "application/problem+json"),
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
    params(("id" = String, Path, description = "Your id for the recipient: 1-255 characters, no control characters, no white space at either end", max_length = 255, pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$"), TokenParam),
    responses(
        (status = 200, description = "The counts", body = FeedCounts),
        (status = 400, description = "A malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad id, filter or cursor", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
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
    params(("id" = String, Path, description = "Your id for the recipient: 1-255 characters, no control characters, no white space at either end", max_length = 255, pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$"), TokenParam),
    request_body(content = MarkRequest, description = "`{\"ids\": [12, 13], \"as\": \"read\"}` or `{\"all\": true, \"as\": \"seen\"}`"),
    responses(
        (status = 200, description = "How many changed", body = Marked),
        (status = 400, description = "A malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad id, neither or both of `ids` and `all`, or an unknown mark", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue", "read"]), ("recipient_token" = []))
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

/// A stream's query: the token, and where to start.
#[derive(Debug, Deserialize, IntoParams)]
pub struct StreamParams {
    /// A recipient token, instead of the `Authorization` header (read by the authentication, not here).
    #[allow(dead_code)]
    pub token: Option<String>,
    /// Send the items after this id first (the newest id a listing showed), so nothing written between the
    /// listing and the stream is missed; `Last-Event-ID` wins. Other parameters (a cache-buster) are ignored.
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

/// What a live stream remembers between wake-ups.
struct Following {
    pool: sqlx::PgPool,
    recipient: String,
    /// The newest item id sent.
    last: i64,
    subscription: Subscription,
    /// Read again before waiting: the first turn, and after a full batch.
    pending: bool,
    shutdown: tokio_util::sync::CancellationToken,
}

/// The most items one wake-up sends (more wait for the next look, which follows at once).
const STREAM_BATCH: i64 = 100;

/// Follow the recipient's feed live: Server-Sent Events `item` (a new item, `id:` its id) and `counts` (after every
/// change, and first on connecting). A reconnecting client's `Last-Event-ID` resumes after that item.
#[utoipa::path(
    get, path = "/v1/recipients/{id}/feed/stream", tag = "feed",
    params(("id" = String, Path, description = "Your id for the recipient: 1-255 characters, no control characters, no white space at either end", max_length = 255, pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]([^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$"), StreamParams),
    responses(
        (status = 200, description = "An event stream (text/event-stream)", content_type = "text/event-stream", body = String),
        (status = 400, description = "A malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad id", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The recipient has `feed.max_streams_per_recipient` streams open here", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "This process has `feed.max_streams` streams open", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]), ("recipient_token" = []))
)]
pub async fn stream_feed(
    State(state): State<ApiState>,
    caller: FeedCaller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<StreamParams>,
    headers: HeaderMap,
    streaming: Option<axum::Extension<super::listener::Streaming>>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = recipient(&id)?;
    caller.may_read(id.as_str())?;
    // Subscribed before the starting point is read: a write in between wakes this stream, which then finds it.
    let subscription = state
        .feed
        .live(&state.pool)
        .subscribe(id.as_str())
        .map_err(|refused| match refused {
            Refused::Full => {
                ApiError::unavailable("too many feed streams on this API process; try again")
            }
            Refused::RecipientFull => {
                ApiError::too_many("this recipient has too many feed streams open; close one")
            }
        })?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(params.after)
        .filter(|id| *id >= 0);
    let last = match resume {
        Some(last) => last,
        None => store::newest_id(&state.pool, id.as_str()).await?,
    };
    // The client has nothing more to send: its connection's reads must not time out while it listens.
    if let Some(axum::Extension(streaming)) = streaming {
        streaming.mark();
    }
    let following = Following {
        pool: state.pool.clone(),
        recipient: id.as_str().to_string(),
        last,
        subscription,
        pending: true,
        shutdown: state.feed.shutdown.clone(),
    };
    let events = futures::stream::unfold(following, |mut f| async move {
        if !f.pending {
            // Woken by a write to this recipient's feed (or the listener reconnecting); ends when the API stops.
            tokio::select! {
                changed = f.subscription.changes.changed() => changed.ok()?,
                () = f.shutdown.cancelled() => return None,
            }
        }
        let mut events = Vec::new();
        // One batch per turn (the stream writes it before reading more): a resume from long ago is sent in
        // pieces, not read whole into memory. A full batch means more: the next turn reads on without waiting.
        f.pending = match store::items_after(&f.pool, &f.recipient, f.last, STREAM_BATCH).await {
            Ok(items) => {
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
                full
            }
            // The database is away: wait for the next wake-up (the listener's reconnection brings one).
            Err(_) => false,
        };
        if !f.pending
            && let Ok(counts) = store::counts(&f.pool, &f.recipient).await
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
