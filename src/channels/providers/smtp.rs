//! SMTP submission with lettre: STARTTLS (port 587), implicit TLS (465) or plain (`tls = "none"`, for a local
//! relay), with AUTH when a username is set.
//!
//! SMTP reply codes decide the outcome: 2xx sent; 421/454 (the server is throttling us) rate-limited; other 4xx
//! transient; 535 (authentication failed) config; 550/551/553 (no such mailbox) permanent and suppressed; other
//! 5xx permanent. Every message carries a `Message-ID` derived from its idempotency key, so a repeat is
//! recognisable downstream; that id is the provider message id.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

use crate::channels::provider::{
    CommonSettings, Provider, ProviderConfigError, ProviderFuture, Secret, parse_settings, required,
};
use crate::channels::{Message, Outcome, unsubscribe_headers};

const NAME: &str = "smtp";

#[derive(Deserialize)]
struct SmtpSettings {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    /// `starttls` (default), `tls` (implicit, port 465) or `none`.
    #[serde(default = "default_tls")]
    tls: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Secret,
    #[serde(default)]
    from: Option<String>,
    /// Accept self-signed certificates (test and internal relays only).
    #[serde(default)]
    accept_invalid_certs: bool,
}

fn default_tls() -> String {
    "starttls".into()
}

pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The domain part of `from`, for Message-IDs.
    domain: String,
}

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let parsed: SmtpSettings = parse_settings(NAME, settings)?;
    let common: CommonSettings = parse_settings(NAME, settings)?;
    let host = required(NAME, "host", &parsed.host)?.to_string();
    let from: Mailbox = required(NAME, "from", &parsed.from)?
        .parse()
        .map_err(|_| ProviderConfigError::new(NAME, "`from` is not an email address"))?;
    let domain = from.email.domain().to_string();
    let tls_parameters = || {
        TlsParameters::builder(host.clone())
            .dangerous_accept_invalid_certs(parsed.accept_invalid_certs)
            .build()
            .map_err(|e| ProviderConfigError::new(NAME, format!("TLS settings: {e}")))
    };
    let (tls, default_port) = match parsed.tls.as_str() {
        "starttls" => (Tls::Required(tls_parameters()?), 587),
        "tls" => (Tls::Wrapper(tls_parameters()?), 465),
        "none" => (Tls::None, 25),
        other => {
            return Err(ProviderConfigError::new(
                NAME,
                format!("`tls = \"{other}\"`: use starttls, tls or none"),
            ));
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
        .port(parsed.port.unwrap_or(default_port))
        .tls(tls)
        .timeout(Some(common.timeout()));
    if let Some(username) = parsed.username.filter(|u| !u.is_empty()) {
        let password = parsed.password.required(NAME, "password")?;
        builder = builder.credentials(Credentials::new(username, password.to_string()));
    }
    Ok(Arc::new(Smtp {
        transport: builder.build(),
        from,
        domain,
    }))
}

impl Provider for Smtp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> ProviderFuture<'a> {
        Box::pin(async move {
            let (email, message_id) = match self.email(message) {
                Ok(built) => built,
                Err(reason) => return Outcome::permanent(reason),
            };
            match self.transport.send(email).await {
                Ok(response) if response.is_positive() => Outcome::Sent {
                    provider_message_id: Some(message_id),
                },
                Ok(response) => classify(
                    u16::from(response.code()),
                    &response.message().collect::<Vec<_>>().join(" "),
                ),
                Err(error) => classify_error(&error),
            }
        })
    }
}

impl Smtp {
    /// The email, and its Message-ID (without angle brackets).
    fn email(&self, message: &Message) -> Result<(lettre::Message, String), String> {
        let to: Mailbox = message
            .to
            .parse()
            .map_err(|_| format!("`{}` is not an email address", message.to))?;
        let field = |name: &str| message.content.get(name).cloned().unwrap_or_default();
        let message_id = format!(
            "{}@{}",
            message_id_local_part(&message.idempotency_key),
            self.domain
        );
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(field("subject"))
            .message_id(Some(format!("<{message_id}>")));
        for (name, value) in unsubscribe_headers(message).into_iter().flatten() {
            let name = HeaderName::new_from_ascii_str(name);
            builder = builder.raw_header(HeaderValue::new(name, value));
        }
        let email = match message.content.get("html") {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                field("body"),
                html.clone(),
            )),
            None => builder.header(ContentType::TEXT_PLAIN).body(field("body")),
        };
        email
            .map(|email| (email, message_id))
            .map_err(|e| format!("cannot build the email: {e}"))
    }
}

/// `run:12:1:welcome` becomes `herald.run.12.1.welcome` (Message-ID local parts allow only some characters).
fn message_id_local_part(key: &str) -> String {
    let safe: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '.'
            }
        })
        .collect();
    format!("herald.{safe}")
}

fn classify_error(error: &lettre::transport::smtp::Error) -> Outcome {
    match error.status() {
        Some(code) => classify(u16::from(code), &error.to_string()),
        // No reply code: the connection failed, timed out, or TLS could not be set up.
        None => Outcome::transient(format!("SMTP connection: {error}")),
    }
}

fn classify(code: u16, text: &str) -> Outcome {
    let reason = format!("{code} {}", text.trim());
    match code {
        200..=399 => Outcome::Sent {
            provider_message_id: None,
        },
        421 | 454 => Outcome::rate_limited(Some(Duration::from_secs(60)), reason),
        400..=499 => Outcome::transient(reason),
        530 | 534 | 535 => Outcome::config(reason),
        550 | 551 | 553 => Outcome::suppress(reason),
        _ => Outcome::permanent(reason),
    }
}
