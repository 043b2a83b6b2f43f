//! Channels: how an action node's message leaves herald.
//!
//! The workflow engine calls one trait, [`Channel`]; which implementation sits behind it is `channels.sink`:
//! * `providers`: one [`chain::ProviderChain`] per channel kind over the process's provider fleet
//!   ([`fleet`]): fallback in the configured order, retries of transient answers ([`chain`]), fleet-wide rate
//!   limits ([`limits`]) and circuit breakers ([`breaker`], shared through [`circuits`]);
//! * `log`: [`LogChannel`] logs each message (the default: a local fleet runs the examples without credentials);
//! * `file`: [`OutboxFileChannel`] appends each message as a JSON line (local development, tests that must see
//!   what another process sent); an embedding program or a test may also pass its own ([`Channels::uniform`]).
//!
//! The rest of the room:
//! * [`providers`]: one file per adapter and [`providers::CATALOGUE`], the one table of them; [`provider`]: the
//!   trait and what adapters share; [`aws`]: SigV4 for SES and SNS;
//! * [`deliveries`]: the delivery record written before and after each provider call (no double sends), and the
//!   suppression list; [`callbacks`]: providers' delivery callbacks (verify, then apply); [`daily`]: per-day
//!   delivery aggregates for the clock's rollups;
//! * [`settings`]: `[channels]`, `[providers.*]`; [`metrics`]: provider call counts and latency.
//!
//! Every message carries an idempotency key (`run:<id>:<epoch>:<node>`): an action whose worker died after the
//! send but before recording it is sent again with the same key, which providers that support idempotency use
//! to drop the repeat.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

pub mod aws;
pub mod breaker;
pub mod callbacks;
pub mod chain;
pub mod circuits;
pub mod daily;
pub mod deliveries;
pub mod egress;
pub mod fleet;
pub mod limits;
pub mod metrics;
pub mod outcome;
pub mod provider;
pub mod providers;
pub mod retention;
pub mod settings;
mod sql;
pub mod status;

pub use outcome::{AttemptOutcome, Outcome, RateScope};
pub use provider::{Provider, ProviderConfigError, Secret};
pub use settings::{ChainSettings, ChannelSettings, ProviderTables, Sink};
pub use status::DeliveryStatus;

/// The four kinds of channel an action can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Email,
    Sms,
    Push,
    Chat,
    /// The in-app feed: no provider; the message is stored as a feed item of its recipient (see `feed`).
    InApp,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 5] = [Self::Email, Self::Sms, Self::Push, Self::Chat, Self::InApp];

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Push => "push",
            Self::Chat => "chat",
            Self::InApp => "in_app",
        }
    }

    /// The providers a definition may name for this channel (from [`providers::CATALOGUE`]).
    pub fn provider_names(self) -> impl Iterator<Item = &'static str> {
        providers::CATALOGUE
            .iter()
            .filter(move |entry| entry.channel == self)
            .map(|entry| entry.name)
    }

    /// `name` as the catalogue's `'static` name, if it is a provider of this channel.
    pub fn provider(self, name: &str) -> Option<&'static str> {
        providers::find(name)
            .filter(|entry| entry.channel == self)
            .map(|entry| entry.name)
    }
}

/// A rendered message, ready to send.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub channel: ChannelKind,
    /// Providers in fallback order; empty means the channel's configured default order.
    pub providers: Vec<String>,
    pub to: String,
    /// Rendered content fields (`subject`, `body`, `title`, ...).
    pub content: BTreeMap<String, String>,
    pub idempotency_key: String,
}

/// A message the channel accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sent {
    pub provider: String,
    pub provider_message_id: Option<String>,
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying, after `retry_after` if the provider said so.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// No provider could take the message now (every circuit open, no rate permit in time, or the provider said
    /// to slow down): nothing failed, so waiting it out should not spend the node's attempts.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (bad address, rejected content, missing configuration).
    #[error("{0}")]
    Permanent(String),
    /// The provider said the recipient is gone (bounced, unsubscribed, unregistered): no retry, and the
    /// recipient joins the suppression list.
    #[error("{0}")]
    Suppress(String),
}

/// One provider call made for a send, as the run's timeline shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub provider: String,
    /// `sent`, `transient`, `rate_limited`, `permanent`, `suppressed`, `config`, or `skipped` (circuit open or
    /// no permit in time: no call was made).
    pub outcome: AttemptOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub latency_ms: u64,
}

/// What a send did: its result, and every provider call on the way.
#[derive(Debug, Clone)]
pub struct SendReport {
    pub result: Result<Sent, SendError>,
    pub attempts: Vec<Attempt>,
}

impl From<Result<Sent, SendError>> for SendReport {
    /// A channel without providers (log, file, a test's recorder): one result, no provider calls.
    fn from(result: Result<Sent, SendError>) -> Self {
        Self {
            result,
            attempts: Vec::new(),
        }
    }
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = SendReport> + Send + 'a>>;

/// Something that delivers messages of one or more channel kinds.
pub trait Channel: Send + Sync {
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a>;
}

/// How the process finds the rest of the sending fleet, to divide each provider's rate among the live workers:
/// the workers serving `queue` (the workflow queue), counted every `every` (the worker heartbeat).
#[derive(Debug, Clone)]
pub struct FleetShare {
    pub queue: String,
    pub every: Duration,
}

/// The channel used for each kind.
#[derive(Clone)]
pub struct Channels {
    by_kind: BTreeMap<&'static str, Arc<dyn Channel>>,
}

impl Channels {
    /// The same channel for every kind.
    pub fn uniform(channel: Arc<dyn Channel>) -> Self {
        let by_kind = ChannelKind::ALL
            .into_iter()
            .map(|kind| (kind.as_str(), Arc::clone(&channel)))
            .collect();
        Self { by_kind }
    }

    /// The channels configured in settings. With `sink = "providers"` this builds every configured provider's
    /// adapter (a missing credential fails here, at start) and starts the two background tasks of a sending
    /// process: the circuit recorder and the fleet-size refresh (see [`FleetShare`]). Must run inside the Tokio
    /// runtime.
    pub fn from_settings(
        settings: &ChannelSettings,
        tables: &ProviderTables,
        share: FleetShare,
        pool: &sqlx::PgPool,
    ) -> Result<Self, ProviderConfigError> {
        match settings.sink {
            Sink::File => Ok(Self::uniform(Arc::new(OutboxFileChannel::new(
                settings.outbox_file.clone(),
            )))),
            Sink::Providers => Self::providers(settings, tables, share, pool),
            Sink::Log => Ok(Self::uniform(Arc::new(LogChannel {
                personal_data: settings.log_personal_data,
            }))),
        }
    }

    fn providers(
        settings: &ChannelSettings,
        tables: &ProviderTables,
        share: FleetShare,
        pool: &sqlx::PgPool,
    ) -> Result<Self, ProviderConfigError> {
        let fleet = fleet::build(settings, tables)?
            .with_transitions(circuits::spawn_recorder(pool.clone(), uuid::Uuid::new_v4()))
            .with_observer(Arc::new(|provider, outcome, latency| {
                use metrics::{PROVIDER_CALL_SECONDS, PROVIDER_CALLS};
                PROVIDER_CALLS
                    .with_label_values(&[provider, outcome.label()])
                    .inc();
                PROVIDER_CALL_SECONDS
                    .with_label_values(&[provider])
                    .observe(latency.as_secs_f64());
            }));
        let fleet = Arc::new(fleet);
        circuits::spawn_fleet_refresh(pool.clone(), Arc::clone(&fleet), share.queue, share.every);
        Ok(Self::chains(&settings.chains, &fleet))
    }

    /// One chain per channel over `fleet`, in the configured orders.
    pub fn chains(chains: &ChainSettings, fleet: &Arc<chain::ProviderFleet>) -> Self {
        let by_kind = ChannelKind::ALL
            .into_iter()
            .map(|kind| {
                let order = fleet::static_names(chains.get(kind));
                let chain = chain::ProviderChain::new(kind, order, Arc::clone(fleet));
                (kind.as_str(), Arc::new(chain) as Arc<dyn Channel>)
            })
            .collect();
        Self { by_kind }
    }

    pub fn get(&self, kind: ChannelKind) -> Option<&Arc<dyn Channel>> {
        self.by_kind.get(kind.as_str())
    }

    /// These channels with `kind` sent through `channel` instead (the in-app feed, which no sink replaces).
    pub fn with(mut self, kind: ChannelKind, channel: Arc<dyn Channel>) -> Self {
        self.by_kind.insert(kind.as_str(), channel);
        self
    }
}

/// Logs the message at INFO and reports it sent. Logs go to log stacks that many people read, so by default the
/// recipient is masked ([`mask_recipient`]) and only the names of the content fields are logged;
/// `channels.log_personal_data = true` logs both whole (local development).
pub struct LogChannel {
    pub personal_data: bool,
}

impl Channel for LogChannel {
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            if self.personal_data {
                tracing::info!(
                    channel = message.channel.as_str(),
                    to = %message.to,
                    content = ?message.content,
                    idempotency_key = %message.idempotency_key,
                    "message (log channel: nothing sent)"
                );
            } else {
                let fields: Vec<&str> = message.content.keys().map(String::as_str).collect();
                tracing::info!(
                    channel = message.channel.as_str(),
                    to = %mask_recipient(&message.to),
                    fields = ?fields,
                    idempotency_key = %message.idempotency_key,
                    "message (log channel: nothing sent)"
                );
            }
            Ok(Sent {
                provider: "log".into(),
                provider_message_id: None,
            })
            .into()
        })
    }
}

/// The content field holding an email's one-click unsubscribe link (RFC 8058). The engine sets it on every email
/// to a recipient (and a template may set it on a raw send); the email adapters turn it into headers.
pub const UNSUBSCRIBE_URL: &str = "unsubscribe_url";

/// The `List-Unsubscribe` and `List-Unsubscribe-Post` headers for a message with an [`UNSUBSCRIBE_URL`]: only an
/// `https://` or `http://` URL of at most 2,048 visible ASCII characters (no `<`, `>` or `,`), so rendered content
/// cannot inject headers.
pub fn unsubscribe_headers(message: &Message) -> Option<[(&'static str, String); 2]> {
    let url = message.content.get(UNSUBSCRIBE_URL)?;
    let fit = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 2048
        && url
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>,".contains(&b));
    fit.then(|| {
        [
            ("List-Unsubscribe", format!("<{url}>")),
            (
                "List-Unsubscribe-Post",
                "List-Unsubscribe=One-Click".to_string(),
            ),
        ]
    })
}

/// A recipient as logs show it: enough to tell two apart, not enough to contact anyone. `ada@example.com` →
/// `a***@example.com`, `+15551234567` → `+1*******567`, anything else (device tokens, subscriptions, webhook
/// URLs) → its first 4 characters and its length.
pub fn mask_recipient(to: &str) -> String {
    let chars: Vec<char> = to.chars().collect();
    if let Some((local, domain)) = to.split_once('@')
        && !domain.contains('@')
        && !local.is_empty()
    {
        let first: String = local.chars().take(1).collect();
        return format!("{first}***@{domain}");
    }
    let phone =
        to.starts_with('+') && chars.len() >= 8 && chars[1..].iter().all(char::is_ascii_digit);
    if phone {
        let head: String = chars[..2].iter().collect();
        let tail: String = chars[chars.len() - 3..].iter().collect();
        return format!("{head}{}{tail}", "*".repeat(chars.len() - 5));
    }
    let head: String = chars.iter().take(4).collect();
    format!("{head}…({} chars)", chars.len())
}

/// Appends each message as one JSON line. Writes are serialised within the process and each line is written
/// with one `write` call on an `O_APPEND` file, so lines from several processes do not interleave.
pub struct OutboxFileChannel {
    path: PathBuf,
    lock: Mutex<()>,
}

impl OutboxFileChannel {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    fn append(&self, message: &Message) -> Result<(), String> {
        let mut line = serde_json::to_vec(message).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let _guard = self
            .lock
            .lock()
            .map_err(|_| "outbox lock poisoned".to_string())?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("cannot open outbox {}: {e}", self.path.display()))?;
        file.write_all(&line)
            .map_err(|e| format!("cannot write outbox {}: {e}", self.path.display()))
    }
}

impl Channel for OutboxFileChannel {
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            let result = self
                .append(message)
                .map(|()| Sent {
                    provider: "outbox".into(),
                    provider_message_id: Some(message.idempotency_key.clone()),
                })
                .map_err(|message| SendError::Transient {
                    message,
                    retry_after: None,
                });
            result.into()
        })
    }
}

/// The channel tables whose rows are updated or deleted all day, for the clock's housekeeping vacuum.
pub const CHURNED_TABLES: &[&str] = &["herald_deliveries", "herald_provider_circuits"];

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_plain_http_url_becomes_unsubscribe_headers() {
        let with = |url: &str| super::Message {
            channel: super::ChannelKind::Email,
            providers: Vec::new(),
            to: "a@example.com".into(),
            content: [(super::UNSUBSCRIBE_URL.to_string(), url.to_string())].into(),
            idempotency_key: "k".into(),
        };
        let headers =
            super::unsubscribe_headers(&with("https://h.test/v1/unsubscribe/a.b")).unwrap();
        assert_eq!(headers[0].1, "<https://h.test/v1/unsubscribe/a.b>");
        for hostile in [
            "https://h.test/x\r\nBcc: all@example.com",
            "javascript:alert(1)",
            "https://h.test/>, <mailto:x>",
        ] {
            assert!(
                super::unsubscribe_headers(&with(hostile)).is_none(),
                "{hostile}"
            );
        }
    }

    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut buffer) = self.0.lock() {
                buffer.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged_send(channel: LogChannel, message: &Message) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::INFO)
            .finish();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| e.to_string());
        tracing::subscriber::with_default(subscriber, || {
            if let Ok(runtime) = &runtime {
                let _ = runtime.block_on(channel.send(message));
            }
        });
        let bytes = captured.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Security finding 17: the default log sink printed recipients and message bodies at INFO.
    #[test]
    fn the_log_sink_masks_recipients_and_omits_bodies_unless_asked() {
        let message = Message {
            channel: ChannelKind::Email,
            providers: Vec::new(),
            to: "ada.lovelace@example.com".into(),
            content: BTreeMap::from([
                ("subject".to_string(), "Your code".to_string()),
                ("body".to_string(), "one-time code 482913".to_string()),
            ]),
            idempotency_key: "k1".into(),
        };
        let masked = logged_send(
            LogChannel {
                personal_data: false,
            },
            &message,
        );
        assert!(masked.contains("a***@example.com"), "{masked}");
        assert!(!masked.contains("ada.lovelace"), "{masked}");
        assert!(!masked.contains("482913"), "{masked}");
        assert!(
            masked.contains("body") && masked.contains("subject"),
            "{masked}"
        );
        let whole = logged_send(
            LogChannel {
                personal_data: true,
            },
            &message,
        );
        assert!(
            whole.contains("ada.lovelace@example.com") && whole.contains("482913"),
            "{whole}"
        );
    }

    #[test]
    fn recipients_are_masked_by_kind() {
        assert_eq!(mask_recipient("ada@example.com"), "a***@example.com");
        assert_eq!(mask_recipient("+15551234567"), "+1*******567");
        assert_eq!(mask_recipient("fcm-token-abcdef"), "fcm-…(16 chars)");
    }
}
