//! Who is calling: the API key from `Authorization: Bearer <key>` (or `X-Api-Key`), checked against the database
//! (with a short cache, `api.key_cache_secs`), and its per-key rate limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};

use super::ApiState;
use super::error::ApiError;
use super::keys::{self, Scope};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: i64,
    scopes: Vec<Scope>,
}

impl Caller {
    /// 403 unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this endpoint needs the `{}` scope",
                scope.as_str()
            )))
        }
    }
}

/// Recently checked keys (valid or not), so most requests cost no lookup.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (Option<Caller>, Instant)>>,
}

impl KeyCache {
    const MAX_ENTRIES: usize = 10_000;

    fn get(&self, key: &str, ttl: Duration) -> Option<Option<Caller>> {
        let entries = self.entries.lock().ok()?;
        let (caller, checked) = entries.get(key)?;
        (checked.elapsed() < ttl).then(|| caller.clone())
    }

    fn put(&self, key: &str, caller: Option<Caller>) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= Self::MAX_ENTRIES {
                entries.clear(); // crude, but bounded: a flood of bad keys cannot grow memory
            }
            entries.insert(key.to_string(), (caller, Instant::now()));
        }
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

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let key = presented_key(parts)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("send an API key as `Authorization: Bearer <key>`")
            })?;
        let ttl = state.settings.key_cache;
        let caller = match state.keys.get(key, ttl) {
            Some(cached) => cached,
            None => {
                let found = keys::lookup(&state.pool, key).await?;
                let caller = found.map(|(key_id, scopes)| Caller { key_id, scopes });
                state.keys.put(key, caller.clone());
                caller
            }
        };
        let caller = caller.ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?;
        if let Err(not_until) = state.limiter.check_key(&caller.key_id) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(ApiError::rate_limited(wait.as_secs().max(1)));
        }
        Ok(caller)
    }
}
