//! Amazon SES v2: `POST /v2/email/outbound-emails`, signed with SigV4 (service `ses`), JSON body with
//! `FromEmailAddress`, `Destination.ToAddresses` and `Content.Simple`.
//!
//! 200 answers `{"MessageId"}`. Errors are classified by their **type name** (header `x-amzn-ErrorType` or the
//! body), not the status: `TooManyRequestsException` is a rate limit, but "Daily message quota exceeded" means
//! waiting hours, and `AccountSuspendedException` is a configuration problem no retry will fix.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::channels::aws::{AwsSettings, AwsSigner, error_type};
use crate::channels::provider::{
    Answer, CommonSettings, Provider, ProviderConfigError, ProviderFuture, exchange, http_client,
    parse_settings, required,
};
use crate::channels::{Message, Outcome, unsubscribe_headers};

const NAME: &str = "ses";

#[derive(Deserialize)]
struct SesSettings {
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    configuration_set: Option<String>,
    #[serde(flatten)]
    aws: AwsSettings,
}

pub struct Ses {
    client: reqwest::Client,
    url: String,
    signer: AwsSigner,
    from: String,
    configuration_set: Option<String>,
}

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let parsed: SesSettings = parse_settings(NAME, settings)?;
    let common: CommonSettings = parse_settings(NAME, settings)?;
    let from = required(NAME, "from", &parsed.from)?.to_string();
    let signer = AwsSigner::new(NAME, "ses", parsed.aws)?;
    let base = parsed
        .base_url
        .unwrap_or_else(|| format!("https://email.{}.amazonaws.com", signer.region()));
    Ok(Arc::new(Ses {
        client: http_client(common.timeout())?,
        url: format!("{}/v2/email/outbound-emails", base.trim_end_matches('/')),
        signer,
        from,
        configuration_set: parsed.configuration_set,
    }))
}

impl Provider for Ses {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> ProviderFuture<'a> {
        Box::pin(async move {
            let body = match serde_json::to_vec(&self.email(message)) {
                Ok(body) => body,
                Err(err) => return Outcome::permanent(format!("cannot encode the email: {err}")),
            };
            let request =
                match self
                    .signer
                    .signed_post(&self.client, &self.url, "application/json", body)
                {
                    Ok(request) => request,
                    Err(outcome) => return outcome,
                };
            exchange(request, |answer| classify(&answer)).await
        })
    }
}

impl Ses {
    fn email(&self, message: &Message) -> serde_json::Value {
        let field = |name: &str| message.content.get(name).map_or("", String::as_str);
        let mut body = json!({ "Text": { "Data": field("body"), "Charset": "UTF-8" } });
        if let Some(html) = message.content.get("html") {
            body["Html"] = json!({ "Data": html, "Charset": "UTF-8" });
        }
        let mut email = json!({
            "FromEmailAddress": self.from,
            "Destination": { "ToAddresses": [message.to] },
            "Content": { "Simple": { "Subject": { "Data": field("subject"), "Charset": "UTF-8" }, "Body": body } },
            "EmailTags": [{ "Name": "herald_key", "Value": tag_value(&message.idempotency_key) }],
        });
        if let Some(headers) = unsubscribe_headers(message) {
            let headers = headers.map(|(name, value)| json!({ "Name": name, "Value": value }));
            email["Content"]["Simple"]["Headers"] = json!(headers);
        }
        if let Some(set) = &self.configuration_set {
            email["ConfigurationSetName"] = json!(set);
        }
        email
    }
}

/// SES tag values allow only letters, digits, `_`, `-`, `.` and `@`.
fn tag_value(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Deserialize, Default)]
struct SesAnswer {
    #[serde(rename = "MessageId")]
    message_id: Option<String>,
    #[serde(alias = "Message")]
    message: Option<String>,
}

fn classify(answer: &Answer) -> Outcome {
    let (status, body, error_header) = (
        answer.status,
        answer.body.as_str(),
        answer.header("x-amzn-errortype"),
    );
    let answer: SesAnswer = serde_json::from_str(body).unwrap_or_default();
    if (200..300).contains(&status) {
        return Outcome::Sent {
            provider_message_id: answer.message_id,
        };
    }
    let kind = error_type(error_header, body).unwrap_or_default();
    let text = answer.message.unwrap_or_default();
    let reason = format!("{status} {kind}: {text}");
    match kind.as_str() {
        "TooManyRequestsException" | "ThrottlingException" | "Throttling" => {
            let wait = if text.contains("Daily message quota") {
                Duration::from_secs(3600)
            } else {
                Duration::from_secs(1)
            };
            Outcome::rate_limited(Some(wait), reason)
        }
        "AccountSuspendedException"
        | "SendingPausedException"
        | "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "MissingAuthenticationTokenException"
        | "SignatureDoesNotMatch" => Outcome::config(reason),
        "MessageRejected"
        | "MailFromDomainNotVerifiedException"
        | "BadRequestException"
        | "NotFoundException" => Outcome::permanent(reason),
        "InternalFailure" | "ServiceUnavailable" | "InternalServerError" => {
            Outcome::transient(reason)
        }
        _ if status >= 500 => Outcome::transient(reason),
        _ if status == 429 => Outcome::rate_limited(Some(Duration::from_secs(1)), reason),
        _ if status == 401 || status == 403 => Outcome::config(reason),
        _ => Outcome::permanent(reason),
    }
}
