//! The provider adapter contract: one [`Provider`] per configured provider, built from its `[providers.<name>]`
//! settings table at start (missing credentials fail the start, not the first send).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{Message, Outcome};

pub type ProviderFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One provider adapter (SendGrid, Twilio, APNs, ...). Adapters translate; they never retry, sleep or fall back.
pub trait Provider: Send + Sync {
    /// The provider's config name (`sendgrid`, `twilio`, ...).
    fn name(&self) -> &'static str;

    /// For providers that limit each destination separately (a Slack webhook, an APNs device), the key that
    /// identifies the destination; `None` when only the account-wide limit applies.
    fn destination_key(&self, _message: &Message) -> Option<String> {
        None
    }

    /// Sends one message and classifies the answer.
    fn send<'a>(&'a self, message: &'a Message) -> ProviderFuture<'a>;
}

/// A provider's settings are missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("provider {provider}: {message}")]
pub struct ProviderConfigError {
    pub provider: String,
    pub message: String,
}

impl ProviderConfigError {
    pub fn new(provider: &str, message: impl Into<String>) -> Self {
        Self {
            provider: provider.to_string(),
            message: message.into(),
        }
    }
}

/// Parses a provider's settings table into its typed settings, naming the provider in the error.
pub fn parse_settings<T: serde::de::DeserializeOwned>(
    provider: &str,
    table: &serde_json::Value,
) -> Result<T, ProviderConfigError> {
    serde_json::from_value(table.clone())
        .map_err(|err| ProviderConfigError::new(provider, format!("invalid settings: {err}")))
}

/// A credential: never printed by `Debug` or `Display`, so it cannot leak into logs or error messages.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself, for building the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// The credential, or a config error naming the missing setting.
    pub fn required(&self, provider: &str, setting: &str) -> Result<&str, ProviderConfigError> {
        if self.is_empty() {
            Err(ProviderConfigError::new(
                provider,
                format!("`{setting}` is not set (providers.{provider}.{setting})"),
            ))
        } else {
            Ok(&self.0)
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A required plain setting (a sender address, an account id).
pub fn required<'a>(
    provider: &str,
    setting: &str,
    value: &'a Option<String>,
) -> Result<&'a str, ProviderConfigError> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ProviderConfigError::new(
            provider,
            format!("`{setting}` is not set (providers.{provider}.{setting})"),
        )),
    }
}

/// The HTTP client adapters share: rustls, a per-request timeout, no redirects (a provider redirecting a send is
/// a misconfiguration, not something to follow silently).
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, ProviderConfigError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| {
            ProviderConfigError::new("http", format!("cannot build an HTTP client: {err}"))
        })
}

/// A transport failure (timeout, refused connection, reset) is always transient: the provider may be fine a
/// moment later, and the chain retries or falls back. The error text never contains the request's headers.
pub fn transport_failure(err: &reqwest::Error) -> Outcome {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    Outcome::transient(format!("{what}: {}", err.without_url_text()))
}

trait WithoutUrl {
    fn without_url_text(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    /// Webhook URLs carry their secret in the path (Slack, Discord, Teams), so errors must not print them.
    fn without_url_text(&self) -> String {
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(self);
        let mut text = String::new();
        while let Some(err) = source {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&err.to_string());
            source = err.source();
        }
        if text.is_empty() {
            "no detail".to_string()
        } else {
            text
        }
    }
}

/// A provider's answer, read whole: what the adapters classify.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    /// An answer with no headers (adapters' unit tests).
    pub fn new(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: reqwest::header::HeaderMap::new(),
            body: body.to_string(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Retry-After` header, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers)
    }
}

/// Sends `request` and classifies the answer with `classify`; a transport failure (timeout, refused
/// connection) is transient, whatever the provider.
pub async fn exchange(
    request: reqwest::RequestBuilder,
    classify: impl FnOnce(Answer) -> Outcome,
) -> Outcome {
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = body_text(response).await;
            classify(Answer {
                status,
                headers,
                body,
            })
        }
        Err(err) => transport_failure(&err),
    }
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return seconds_to_duration(seconds);
    }
    let when = httpdate_parse(value)?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

/// A provider's seconds value (possibly fractional) as a duration; negative or absurd values are ignored.
pub fn seconds_to_duration(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && (0.0..=86_400.0 * 7.0).contains(&seconds))
        .then(|| Duration::from_secs_f64(seconds))
}

fn httpdate_parse(value: &str) -> Option<SystemTime> {
    let parsed = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let secs = u64::try_from(parsed.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Reads a response body as text, capped so a misbehaving provider cannot exhaust memory. A body that fails
/// to arrive reads as empty (the status line already says enough to classify).
pub async fn body_text(response: reqwest::Response) -> String {
    const MAX: usize = 64 * 1024;
    match read_capped(response, MAX).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

/// Reads at most `max` bytes of a response body, chunk by chunk, and drops the rest unread: a huge or endless body
/// costs at most `max` bytes of memory (the client's timeout bounds the time). A body announced larger than `max`
/// (`Content-Length`) is not read at all.
pub async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|announced| announced > max as u64)
    {
        return Ok(Vec::new());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= max {
            break;
        }
    }
    Ok(body)
}

/// The adapter-wide settings every provider table may carry, beside its own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CommonSettings {
    /// The whole fleet's sends per second through this provider (absent: unlimited).
    pub rate_per_sec: Option<f64>,
    /// Sends per second per destination, for providers that limit each destination (Slack: 1).
    pub destination_rate_per_sec: Option<f64>,
    /// Per-request timeout.
    pub timeout_ms: u64,
}

impl Default for CommonSettings {
    fn default() -> Self {
        Self {
            rate_per_sec: None,
            destination_rate_per_sec: None,
            timeout_ms: 10_000,
        }
    }
}

impl CommonSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }
}
