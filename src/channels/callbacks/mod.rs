//! Delivery callbacks: providers report what happened to a message after they accepted it.
//!
//! Each provider's request is authenticated first (its own signature scheme), then parsed into normalized
//! [`CallbackEvent`]s. Applying them to deliveries (dedupe, forward-only status, suppression) is
//! `deliveries::apply_callback`. [`Callbacks::receive`] does all of it for one request (`receive.rs`, with the SNS
//! subscription confirmation); the HTTP endpoint `POST /v1/callbacks/{provider}` only calls it.
//!
//! | provider | authenticity | file |
//! |---|---|---|
//! | SendGrid Event Webhook | ECDSA P-256 signature over timestamp + body | `sendgrid.rs` |
//! | Mailgun webhooks | HMAC-SHA256 of timestamp + token with the webhook signing key | `mailgun.rs` |
//! | Twilio status callbacks | `X-Twilio-Signature`: HMAC-SHA1 over the URL and the sorted form fields | `twilio.rs` |
//! | SES through SNS | the topic in `callbacks.ses_topic_arns`, then the SNS message signature, checked with the certificate from `SigningCertURL` | `ses.rs` |
//!
//! A callback can only suppress the recipient of a delivery herald made (found by the provider's message id):
//! an event about any other message changes nothing, whatever address it names.

mod mailgun;
mod receive;
mod sendgrid;
mod ses;
mod twilio;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::Mutex;

use super::{DeliveryStatus, Secret};

pub use receive::{CallbackReceipt, Callbacks};

/// One normalized event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackEvent {
    /// The provider's own id for the event (deduplication).
    pub event_key: String,
    /// The id the send adapter recorded for the message.
    pub provider_message_id: String,
    /// The status the event implies (opens, clicks and deferrals imply none).
    pub status: Option<DeliveryStatus>,
    pub recipient: Option<String>,
    /// The recipient must not be sent to again.
    pub suppress: bool,
    pub reason: Option<String>,
}

/// What a verified callback carries.
#[derive(Debug, Default)]
pub struct CallbackOutcome {
    pub events: Vec<CallbackEvent>,
    /// An SNS subscription asks to be confirmed by a GET of this URL (already checked to be SNS's).
    pub subscribe_url: Option<String>,
}

/// Why a callback was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("the signature does not match")]
    BadSignature,
    #[error("the callback's timestamp is outside the accepted window (a replay?)")]
    Stale,
    #[error("malformed callback: {0}")]
    Malformed(String),
    #[error("callbacks from {0} are not configured")]
    NotConfigured(String),
    /// An SNS message from a topic not in `callbacks.ses_topic_arns`.
    #[error("the SNS topic is not one this server accepts")]
    ForeignTopic,
    #[error("cannot fetch the signing certificate: {0}")]
    Certificate(String),
    /// SNS asked for a subscription confirmation that could not be made (the message says why).
    #[error("{0}")]
    Subscription(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// `[callbacks]` settings: the keys that authenticate each provider's callbacks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbackSettings {
    /// The URL herald is reached at from the internet (`https://herald.example.com`); Twilio signs the full URL
    /// it called. Without it, the request's Host header is used.
    pub public_url: Option<String>,
    /// SendGrid's verification key (base64 DER, as the Event Webhook settings page shows it).
    pub sendgrid_public_key: Option<Secret>,
    /// Mailgun's HTTP webhook signing key.
    pub mailgun_signing_key: Option<Secret>,
    /// The Twilio account's auth token.
    pub twilio_auth_token: Option<Secret>,
    /// Hosts allowed to serve SNS signing certificates and subscription URLs: `sns.<region>.amazonaws.com` of the
    /// message's topic's region matches by default (https only). An entry such as `http://127.0.0.1:8125` allows
    /// that exact plain-HTTP origin.
    pub sns_hosts: Vec<String>,
    /// The SNS topics whose SES events are accepted (`arn:aws:sns:eu-west-1:123456789012:ses-events`). SES
    /// callbacks are refused while it is empty: anyone can subscribe herald's URL to a topic of their own and
    /// sign messages with SNS's real keys, so the signature alone proves nothing about who sent the events.
    pub ses_topic_arns: Vec<String>,
    /// Timestamps older (or newer) than this are refused as replays (SendGrid, Mailgun).
    #[serde(rename = "max_age_secs", deserialize_with = "crate::setting::secs")]
    pub max_age: Duration,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        Self {
            public_url: None,
            sendgrid_public_key: None,
            mailgun_signing_key: None,
            twilio_auth_token: None,
            sns_hosts: Vec::new(),
            ses_topic_arns: Vec::new(),
            max_age: Duration::from_secs(300),
        }
    }
}

/// The request as the provider sent it.
pub struct CallbackRequest<'a> {
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
    /// The full URL the provider called (for Twilio's signature).
    pub url: &'a str,
}

impl CallbackRequest<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Verifies callbacks; holds the SNS certificates already fetched.
pub struct CallbackVerifier {
    settings: CallbackSettings,
    mailgun_tokens: mailgun::SeenTokens,
    http: reqwest::Client,
    certificates: Mutex<HashMap<String, openssl::x509::X509>>,
}

impl CallbackVerifier {
    pub fn new(settings: CallbackSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            settings,
            mailgun_tokens: mailgun::SeenTokens::default(),
            http,
            certificates: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &CallbackSettings {
        &self.settings
    }

    /// Checks the request's authenticity and parses its events.
    pub async fn verify(
        &self,
        provider: &str,
        request: &CallbackRequest<'_>,
    ) -> Result<CallbackOutcome, CallbackError> {
        let key = |secret: &Option<Secret>| {
            secret
                .as_ref()
                .filter(|s| !s.is_empty())
                .map(|s| s.expose().to_string())
                .ok_or_else(|| CallbackError::NotConfigured(provider.to_string()))
        };
        let events = match provider {
            "sendgrid" => sendgrid::verify(
                request,
                &key(&self.settings.sendgrid_public_key)?,
                self.max_age(),
            )?,
            "mailgun" => mailgun::verify(
                request,
                &key(&self.settings.mailgun_signing_key)?,
                self.max_age(),
                &self.mailgun_tokens,
            )?,
            "twilio" => twilio::verify(request, &key(&self.settings.twilio_auth_token)?)?,
            "ses" if self.settings.ses_topic_arns.is_empty() => {
                return Err(CallbackError::NotConfigured(provider.to_string()));
            }
            "ses" => return ses::verify(self, request).await,
            other => return Err(CallbackError::NotConfigured(other.to_string())),
        };
        Ok(CallbackOutcome {
            events,
            subscribe_url: None,
        })
    }

    fn max_age(&self) -> Duration {
        self.settings.max_age
    }

    /// Whether `url` is an SNS origin we trust (signing certificates, subscription confirmations): an endpoint of
    /// `region`, the region of the topic the message names (SNS signs and confirms from the topic's own region, so
    /// a certificate from any other region is not fetched), or a host listed in `callbacks.sns_hosts`.
    pub fn is_sns_url(&self, url: &str, region: &str) -> bool {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return false;
        };
        let origin = parsed.origin().ascii_serialization();
        if self.settings.sns_hosts.contains(&origin) {
            return true;
        }
        let host = parsed.host_str().unwrap_or("");
        let listed = self
            .settings
            .sns_hosts
            .iter()
            .any(|allowed| allowed == host);
        let amazon = !region.is_empty() && host == format!("sns.{region}.amazonaws.com");
        parsed.scheme() == "https" && (listed || amazon)
    }
}

/// Refuses a timestamp (Unix seconds) outside `max_age` of now.
fn check_fresh(timestamp: &str, max_age: Duration) -> Result<(), CallbackError> {
    let then: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| CallbackError::Malformed("the timestamp is not a number".into()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(then) > max_age.as_secs() {
        return Err(CallbackError::Stale);
    }
    Ok(())
}
