//! Who is calling: the API key from `Authorization: Bearer <key>` (or `X-Api-Key`), checked against the database
//! (with a short cache, `api.key_cache_secs`), and its per-key rate limit. Failed authentications are limited
//! per client address (`api.auth_failures_per_second`).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};

use super::ApiState;
use super::error::ApiError;
use super::keys::{self, Scope};
use crate::audit::Actor;

/// The authenticated caller of a request. Handlers never take it directly: they take an [`Authorized`] for the
/// scope they need, so a route cannot forget its scope check.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: i64,
    pub key_name: String,
    scopes: Vec<Scope>,
}

/// A scope a handler needs, as a type: `Authorized<AdminScope>`.
pub trait NeedsScope: Send + Sync {
    const SCOPE: Scope;
}

macro_rules! scope_markers {
    ($($(#[$doc:meta])* $marker:ident => $scope:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub struct $marker;
            impl NeedsScope for $marker {
                const SCOPE: Scope = Scope::$scope;
            }
        )*
    };
}

scope_markers! {
    /// `read`: the GET endpoints.
    ReadScope => Read,
    /// `enqueue`: jobs and workflow runs.
    EnqueueScope => Enqueue,
    /// `admin`: pausing, replaying, deleting, saving workflows, suppressions.
    AdminScope => Admin,
    /// `events`: `POST /v1/events` (an event can complete another user's wait, so it is its own right).
    EventsScope => Events,
    /// `metrics`: `GET /metrics`, without any personal data.
    MetricsScope => Metrics,
}

/// Proof that the request's caller is authenticated, within its rate limit, and holds scope `S` (401, 429 or
/// 403 otherwise). It carries the caller as the audit log names it: the key and the request id.
pub struct Authorized<S: NeedsScope> {
    pub actor: Actor,
    scope: PhantomData<S>,
}

impl<S: NeedsScope> FromRequestParts<ApiState> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = authenticate(parts, state).await?;
        if !caller.scopes.contains(&S::SCOPE) {
            return Err(ApiError::forbidden(format!(
                "this endpoint needs the `{}` scope",
                S::SCOPE.as_str()
            )));
        }
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok());
        Ok(Self {
            actor: Actor::key(caller.key_id, &caller.key_name, request_id),
            scope: PhantomData,
        })
    }
}

/// Who is using a recipient's feed: a browser holding that recipient's token (see `feed::tokens`), or a service's
/// API key (`read` to look, and `enqueue` too to mark items).
pub enum FeedCaller {
    Recipient(String),
    Key { write: bool },
}

impl FromRequestParts<ApiState> for FeedCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        if let Some(token) = feed_token(parts) {
            let signer = state.feed.signer(&state.pool).await?;
            return signer
                .verify(token, chrono::Utc::now())
                .map(FeedCaller::Recipient)
                .map_err(|e| ApiError::unauthorized(e.to_string()));
        }
        let caller = authenticate(parts, state).await?;
        if !caller.scopes.contains(&Scope::Read) {
            return Err(ApiError::forbidden(
                "the feed needs the `read` scope, or the recipient's feed token",
            ));
        }
        // The feed's POST (mark) changes it: refused here, before the body is read, like any route's scope.
        if parts.method == axum::http::Method::POST && !caller.scopes.contains(&Scope::Enqueue) {
            return Err(ApiError::forbidden(
                "marking feed items needs the `enqueue` scope, or the recipient's feed token",
            ));
        }
        Ok(FeedCaller::Key {
            write: caller.scopes.contains(&Scope::Enqueue),
        })
    }
}

impl FeedCaller {
    /// May this caller read `recipient`'s feed (403 otherwise)?
    pub fn may_read(&self, recipient: &str) -> Result<(), ApiError> {
        match self {
            FeedCaller::Recipient(own) if own == recipient => Ok(()),
            FeedCaller::Recipient(_) => Err(ApiError::forbidden(
                "this token opens another recipient's feed",
            )),
            FeedCaller::Key { .. } => Ok(()),
        }
    }

    /// May this caller mark items of `recipient`'s feed (403 otherwise)?
    pub fn may_write(&self, recipient: &str) -> Result<(), ApiError> {
        self.may_read(recipient)?;
        match self {
            FeedCaller::Key { write: false, .. } => Err(ApiError::forbidden(
                "marking feed items needs the `enqueue` scope, or the recipient's feed token",
            )),
            _ => Ok(()),
        }
    }
}

/// A recipient token presented as `Authorization: Bearer feed_...` or, for `EventSource` (which cannot set
/// headers), as the `token` query parameter.
fn feed_token(parts: &Parts) -> Option<&str> {
    let prefix = crate::feed::tokens::PREFIX;
    if let Some(bearer) = presented_key(parts).filter(|k| k.starts_with(prefix)) {
        return Some(bearer);
    }
    parts.uri.query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .filter(|token| token.starts_with(prefix))
    })
}

/// Recently accepted keys by digest, so most requests cost no lookup. Only valid keys are cached: an unknown key
/// is never remembered (a flood of made-up keys cannot fill memory or push real keys out); the per-client
/// [`FailureLimiter`] bounds what unknown keys cost the database instead.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
}

impl KeyCache {
    /// Live keys are few; the bound only matters if an installation mints keys by the thousand.
    const MAX_ENTRIES: usize = 10_000;

    fn get(&self, digest: &[u8; 32], ttl: Duration) -> Option<Caller> {
        let entries = self.entries.lock().ok()?;
        let (caller, checked) = entries.get(digest)?;
        (checked.elapsed() < ttl).then(|| caller.clone())
    }

    /// Caches `caller`; when the cache is full of entries younger than `ttl`, the new key is not cached (it is
    /// looked up again next time) rather than pushing out keys in use.
    fn put(&self, digest: [u8; 32], caller: Caller, ttl: Duration) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= Self::MAX_ENTRIES {
                entries.retain(|_, (_, checked)| checked.elapsed() < ttl);
            }
            if entries.len() < Self::MAX_ENTRIES || entries.contains_key(&digest) {
                entries.insert(digest, (caller, Instant::now()));
            }
        }
    }
}

/// Failed authentications per client address: a client that presents one made-up key after another is
/// answered 429 once its budget is spent, and is not looked up again until its wait is over (so it costs the
/// database nothing). Valid keys spend nothing.
pub struct FailureLimiter {
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl FailureLimiter {
    /// Client addresses remembered before idle ones are forgotten.
    const MAX_CLIENTS: usize = 100_000;

    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: governor::RateLimiter::keyed(
                governor::Quota::per_second(per_second).allow_burst(burst),
            ),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds the client must still wait, if it spent its budget.
    fn blocked(&self, client: IpAddr) -> Option<u64> {
        let blocked = self.blocked.lock().ok()?;
        let until = blocked.get(&client)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| left.as_secs().max(1))
    }

    /// Records a failure; the seconds to wait if that spent the budget.
    fn failed(&self, client: IpAddr) -> Option<u64> {
        if self.limiter.len() >= Self::MAX_CLIENTS {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        let not_until = self.limiter.check_key(&client).err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        if let Ok(mut blocked) = self.blocked.lock() {
            if blocked.len() >= Self::MAX_CLIENTS {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            // Full of clients still waiting: this one is not remembered (the rate limiter still refuses it), and
            // no flood of new addresses can make the map forget the clients it holds.
            if blocked.len() < Self::MAX_CLIENTS {
                blocked.insert(client, Instant::now() + wait);
            }
        }
        Some(wait.as_secs().max(1))
    }
}

fn presented_key(parts: &Parts) -> Option<&str> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    bearer
        .or_else(|| parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// The client, for the failure limiter: its address (the TCP peer; behind a proxy, the proxy's), an IPv6 address
/// cut to its /64 (one host holds a whole /64, so each of its addresses must not get a budget of its own), or an
/// unspecified address when the router is called without a connection (tests calling it in-process).
fn client_address(parts: &Parts) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    match peer {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

/// The caller named by the request's key: checked, cached, and within its rate limit.
async fn authenticate(parts: &Parts, state: &ApiState) -> Result<Caller, ApiError> {
    authenticate_key(parts, state, presented_key(parts)).await
}

/// The name of the dashboard's session cookie: the API key the operator logged in with (HttpOnly, SameSite=Strict,
/// path `/ui`), accepted on `/ui` routes only.
pub const UI_COOKIE: &str = "herald_ui";

/// An operator logged in to the dashboard (`/ui`): their key's scopes, the actor the audit log names, and the form
/// token their actions must carry (CSRF; see `ui.rs`).
pub struct UiCaller {
    pub actor: Actor,
    pub admin: bool,
    pub csrf: String,
}

impl FromRequestParts<ApiState> for UiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let key = ui_cookie(parts);
        let caller = authenticate_key(parts, state, key).await?;
        if !caller.scopes.contains(&Scope::Read) {
            return Err(ApiError::forbidden(
                "the dashboard needs a key with the `read` scope",
            ));
        }
        Ok(UiCaller {
            actor: Actor::key(caller.key_id, &caller.key_name, None),
            admin: caller.scopes.contains(&Scope::Admin),
            csrf: ui_csrf(key.unwrap_or_default()),
        })
    }
}

/// Checks a key for the dashboard's login form: the caller it names, if valid.
pub async fn ui_login(parts: &Parts, state: &ApiState, key: &str) -> Result<(), ApiError> {
    let caller = authenticate_key(parts, state, Some(key)).await?;
    if caller.scopes.contains(&Scope::Read) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "the dashboard needs a key with the `read` scope",
        ))
    }
}

/// The dashboard's form token for a session: derived from its key, so a page on another site (which cannot read
/// the cookie) cannot make one.
pub fn ui_csrf(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(format!("herald-ui-csrf:{key}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ui_cookie(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(UI_COOKIE)?.strip_prefix('='))
}

async fn authenticate_key(
    parts: &Parts,
    state: &ApiState,
    key: Option<&str>,
) -> Result<Caller, ApiError> {
    let client = client_address(parts);
    let refused = |message: &str| match state.failures.failed(client) {
        Some(wait) => ApiError::rate_limited(wait),
        None => ApiError::unauthorized(message.to_string()),
    };
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Err(ApiError::unauthorized(
            "send an API key as `Authorization: Bearer <key>`",
        ));
    };
    // A key cached as valid is served without touching the failure limiter (the common request); anything
    // else first checks that its client is not waiting out a run of failures.
    let digest = keys::well_formed(key).then(|| keys::digest(key));
    let cached = digest.and_then(|digest| state.keys.get(&digest, state.settings.key_cache));
    if cached.is_none()
        && let Some(wait) = state.failures.blocked(client)
    {
        return Err(ApiError::rate_limited(wait));
    }
    let Some(digest) = digest else {
        return Err(refused("unknown or revoked API key"));
    };
    let caller = match cached {
        Some(cached) => cached,
        None => {
            let Some(key) = keys::lookup(&state.pool, &digest).await? else {
                return Err(refused("unknown or revoked API key"));
            };
            let caller = Caller {
                key_id: key.id,
                key_name: key.name,
                scopes: key.scopes,
            };
            // `last_used_at`, off the request's path: a slow or locked row must not delay the request.
            let pool = state.pool.clone();
            tokio::spawn(async move {
                if let Err(error) = keys::note_use(&pool, key.id).await {
                    tracing::debug!(%error, "could not note the key's use");
                }
            });
            state
                .keys
                .put(digest, caller.clone(), state.settings.key_cache);
            caller
        }
    };
    if let Err(not_until) = state.limiter.check_key(&caller.key_id) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return Err(ApiError::rate_limited(wait.as_secs().max(1)));
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_from(peer: &str) -> Parts {
        let address: SocketAddr = peer.parse().unwrap();
        let (parts, ()) = axum::http::Request::builder()
            .extension(ConnectInfo(address))
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    /// Every address of one IPv6 /64 is one client for the failure limiter; IPv4 (mapped or not) is itself.
    #[test]
    fn ipv6_clients_are_counted_by_their_slash_64() {
        let one = client_address(&parts_from("[2001:db8:1:2:aaaa::1]:4000"));
        let other = client_address(&parts_from("[2001:db8:1:2:ffff:1:2:3]:4001"));
        let elsewhere = client_address(&parts_from("[2001:db8:1:3::1]:4000"));
        assert_eq!(one, other);
        assert_ne!(one, elsewhere);
        assert_eq!(one.to_string(), "2001:db8:1:2::");
        let mapped = client_address(&parts_from("[::ffff:192.0.2.7]:80"));
        assert_eq!(mapped.to_string(), "192.0.2.7");
    }

    /// A full cache keeps the keys it holds: a new key is not cached (it is looked up again), and nothing a
    /// caller does can flush the cache.
    #[test]
    fn a_full_key_cache_keeps_its_keys() {
        let cache = KeyCache::default();
        let ttl = Duration::from_secs(60);
        let caller = |id| Caller {
            key_id: id,
            key_name: "k".into(),
            scopes: Vec::new(),
        };
        for i in 0..KeyCache::MAX_ENTRIES {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.put(digest, caller(i as i64), ttl);
        }
        let newcomer = [0xff; 32];
        cache.put(newcomer, caller(-1), ttl);
        assert!(cache.get(&newcomer, ttl).is_none(), "not cached while full");
        assert_eq!(
            cache.get(&[0u8; 32], ttl).map(|c| c.key_id),
            Some(0),
            "old keys stay"
        );
    }
}
