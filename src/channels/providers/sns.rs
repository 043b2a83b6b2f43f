//! Amazon SNS SMS: the Query API `Action=Publish&PhoneNumber=…&Message=…&Version=2010-03-31` as a form POST to
//! `/`, signed with SigV4 (service `sns`). Answers are XML: `<MessageId>` on success, `<Error><Code>` otherwise.
//!
//! `OptedOut` means the recipient replied STOP: the number is suppressed. Optional settings `sender_id` and
//! `sms_type` (`Transactional` or `Promotional`) become message attributes.

use std::sync::Arc;

use serde::Deserialize;

use crate::channels::aws::{AwsSettings, AwsSigner, error_type, xml_text};
use crate::channels::provider::{
    Answer, CommonSettings, Provider, ProviderConfigError, ProviderFuture, exchange, http_client,
    parse_settings,
};
use crate::channels::{Message, Outcome};

const NAME: &str = "sns";

#[derive(Deserialize)]
struct SnsSettings {
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    sender_id: Option<String>,
    #[serde(default)]
    sms_type: Option<String>,
    #[serde(flatten)]
    aws: AwsSettings,
}

pub struct Sns {
    client: reqwest::Client,
    url: String,
    signer: AwsSigner,
    attributes: Vec<(String, String)>,
}

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let parsed: SnsSettings = parse_settings(NAME, settings)?;
    let common: CommonSettings = parse_settings(NAME, settings)?;
    let signer = AwsSigner::new(NAME, "sns", parsed.aws)?;
    let base = parsed
        .base_url
        .unwrap_or_else(|| format!("https://sns.{}.amazonaws.com", signer.region()));
    let mut attributes = Vec::new();
    for (name, value) in [
        ("AWS.SNS.SMS.SenderID", parsed.sender_id),
        ("AWS.SNS.SMS.SMSType", parsed.sms_type),
    ] {
        if let Some(value) = value.filter(|v| !v.trim().is_empty()) {
            attributes.push((name.to_string(), value));
        }
    }
    Ok(Arc::new(Sns {
        client: http_client(common.timeout())?,
        url: format!("{}/", base.trim_end_matches('/')),
        signer,
        attributes,
    }))
}

impl Provider for Sns {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> ProviderFuture<'a> {
        Box::pin(async move {
            let body = self.form(message);
            let form = "application/x-www-form-urlencoded";
            let request =
                match self
                    .signer
                    .signed_post(&self.client, &self.url, form, body.into_bytes())
                {
                    Ok(request) => request,
                    Err(outcome) => return outcome,
                };
            exchange(request, |answer| classify(&answer)).await
        })
    }
}

impl Sns {
    fn form(&self, message: &Message) -> String {
        let text = message.content.get("body").map_or("", String::as_str);
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", "Publish")
            .append_pair("PhoneNumber", &message.to)
            .append_pair("Message", text)
            .append_pair("Version", "2010-03-31");
        for (i, (name, value)) in self.attributes.iter().enumerate() {
            let prefix = format!("MessageAttributes.entry.{}", i + 1);
            form.append_pair(&format!("{prefix}.Name"), name)
                .append_pair(&format!("{prefix}.Value.DataType"), "String")
                .append_pair(&format!("{prefix}.Value.StringValue"), value);
        }
        form.finish()
    }
}

fn classify(answer: &Answer) -> Outcome {
    let (status, body) = (answer.status, answer.body.as_str());
    if (200..300).contains(&status) {
        return match xml_text(body, "MessageId") {
            Some(id) => Outcome::Sent {
                provider_message_id: Some(id),
            },
            // A 2xx without SNS's answer: accepted or not, we cannot tell; re-sending could duplicate.
            None => Outcome::Sent {
                provider_message_id: None,
            },
        };
    }
    let code = error_type(None, body).unwrap_or_default();
    let reason = format!(
        "{status} {code}: {}",
        xml_text(body, "Message").unwrap_or_default()
    );
    match code.as_str() {
        "OptedOut" => Outcome::suppress(reason),
        "Throttling" | "ThrottledException" | "ThrottlingException" => {
            Outcome::rate_limited(Some(std::time::Duration::from_secs(1)), reason)
        }
        "AuthorizationError"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "KMSAccessDenied" => Outcome::config(reason),
        "InvalidParameter" | "InvalidParameterValue" | "ValidationError" => {
            Outcome::permanent(reason)
        }
        "InternalError" | "InternalFailure" | "ServiceUnavailable" => Outcome::transient(reason),
        _ if status >= 500 => Outcome::transient(reason),
        _ if status == 401 || status == 403 => Outcome::config(reason),
        _ => Outcome::permanent(reason),
    }
}
