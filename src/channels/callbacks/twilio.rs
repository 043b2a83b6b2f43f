//! Twilio status callbacks: a form POST (`MessageSid`, `MessageStatus`, `ErrorCode`, …) signed in
//! `X-Twilio-Signature` = base64(HMAC-SHA1(auth token, URL + every form field's name and value, sorted by name)).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::{CallbackError, CallbackEvent, CallbackRequest};
use crate::channels::DeliveryStatus;

/// Error codes after which the number should not be texted again: 21610 (the recipient replied STOP), 30003
/// (unreachable), 30005 (unknown number), 30006 (landline or unreachable carrier).
const SUPPRESSING_ERRORS: [&str; 4] = ["21610", "30003", "30005", "30006"];

pub fn verify(
    request: &CallbackRequest<'_>,
    auth_token: &str,
) -> Result<Vec<CallbackEvent>, CallbackError> {
    let signature = request
        .header("x-twilio-signature")
        .ok_or(CallbackError::BadSignature)?;
    let expected = STANDARD
        .decode(signature.trim())
        .map_err(|_| CallbackError::BadSignature)?;
    let mut fields: Vec<(String, String)> =
        form_urlencoded::parse(request.body).into_owned().collect();
    fields.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .map_err(|_| CallbackError::NotConfigured("twilio".into()))?;
    mac.update(request.url.as_bytes());
    for (name, value) in &fields {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac.verify_slice(&expected)
        .map_err(|_| CallbackError::BadSignature)?;

    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let sid =
        field("MessageSid").ok_or_else(|| CallbackError::Malformed("no MessageSid".into()))?;
    let state = field("MessageStatus")
        .ok_or_else(|| CallbackError::Malformed("no MessageStatus".into()))?;
    let error = field("ErrorCode").filter(|code| !code.is_empty());
    let status = match state.as_str() {
        "sent" => Some(DeliveryStatus::Sent),
        "delivered" => Some(DeliveryStatus::Delivered),
        "undelivered" | "failed" => Some(DeliveryStatus::Failed),
        _ => None,
    };
    let suppress = error
        .as_deref()
        .is_some_and(|code| SUPPRESSING_ERRORS.contains(&code));
    Ok(vec![CallbackEvent {
        event_key: format!("{sid}:{state}"),
        provider_message_id: sid,
        status,
        recipient: field("To"),
        suppress,
        reason: Some(match error {
            Some(code) => format!("{state} (error {code})"),
            None => state,
        }),
    }])
}
