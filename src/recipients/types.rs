//! The parsed types of a profile. Each `parse` returns a value that can only be valid, with a message that says
//! what a valid one looks like; the API names the field.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Longest recipient id, topic key and device label.
pub const MAX_ID_CHARS: usize = 255;
/// Most devices one profile holds.
pub const MAX_DEVICES: usize = 20;
/// Most chat handles one profile holds.
pub const MAX_CHAT_HANDLES: usize = 10;
/// Largest `data` object, as compact JSON.
pub const MAX_DATA_BYTES: usize = 16 * 1024;
/// Longest device token (an FCM token is about 160 characters; a Web Push subscription a few hundred).
pub const MAX_TOKEN_CHARS: usize = 4096;

/// A caller's id for a recipient (or a topic key): 1-255 characters, no control characters, not blank at either
/// end. Used in URLs, so the API's paths percent-decode it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RecipientId(String);

impl RecipientId {
    pub fn parse(value: &str) -> Result<Self, String> {
        if valid_key(value) {
            Ok(Self(value.to_string()))
        } else {
            Err(format!(
                "must be 1-{MAX_ID_CHARS} characters, without control characters or white space at either end"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RecipientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `value` can be a recipient id or topic key.
pub fn valid_key(value: &str) -> bool {
    let chars = value.chars().count();
    (1..=MAX_ID_CHARS).contains(&chars)
        && !value.chars().any(char::is_control)
        && !value.starts_with(char::is_whitespace)
        && !value.ends_with(char::is_whitespace)
}

/// An email address: `local@domain`, at most 254 characters, a local part of 1-64 characters without white space,
/// quotes or angle brackets, and a domain of dot-separated labels (letters, digits, hyphens; at least two labels).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(value: &str) -> Result<Self, String> {
        const SHAPE: &str = "must be an email address (local@example.com)";
        if value.chars().count() > 254 {
            return Err(format!("{SHAPE}, at most 254 characters"));
        }
        let (local, domain) = value.rsplit_once('@').ok_or(SHAPE)?;
        let local_ok = (1..=64).contains(&local.chars().count())
            && !local
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "\"<>()[]\\,;:@".contains(c))
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..");
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|label| {
                (1..=63).contains(&label.chars().count())
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if local_ok && domain_ok {
            Ok(Self(value.to_string()))
        } else {
            Err(SHAPE.into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number in E.164: `+`, then 7-15 digits, the first not 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(value: &str) -> Result<Self, String> {
        let digits = value.strip_prefix('+').unwrap_or("");
        let ok = (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(Self(value.to_string()))
        } else {
            Err("must be an E.164 phone number: + and 7-15 digits, e.g. +14155550123".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IANA time zone name (`Europe/Paris`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(pub chrono_tz::Tz);

impl TimeZone {
    pub fn parse(value: &str) -> Result<Self, String> {
        chrono_tz::Tz::from_str(value)
            .map(Self)
            .map_err(|_| "must be an IANA time zone name, e.g. Europe/Paris".to_string())
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

/// A BCP 47 language tag (`en`, `pt-BR`, `zh-Hant-TW`): a 2-3 letter (or 5-8 letter) language, then subtags of
/// 1-8 letters or digits, separated by `-`; at most 35 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Locale(String);

impl Locale {
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut parts = value.split('-');
        let language = parts.next().unwrap_or("");
        let language_ok = matches!(language.len(), 2 | 3 | 5..=8)
            && language.bytes().all(|b| b.is_ascii_alphabetic());
        let rest_ok = parts
            .all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
        if value.len() <= 35 && language_ok && rest_ok {
            Ok(Self(value.to_string()))
        } else {
            Err("must be a BCP 47 language tag, e.g. en or pt-BR".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which push provider a device token is for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceProvider {
    Fcm,
    Apns,
    Webpush,
}

impl DeviceProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fcm => "fcm",
            Self::Apns => "apns",
            Self::Webpush => "webpush",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Fcm, Self::Apns, Self::Webpush]
            .into_iter()
            .find(|p| p.as_str() == value)
    }
}

/// A push device: which provider, its token, and a label of the caller's (`Alice's iPhone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub provider: DeviceProvider,
    /// As the push adapter takes it: an FCM token, APNs hex, or a Web Push subscription as compact JSON.
    pub token: String,
    pub label: Option<String>,
}

impl Device {
    /// The device as a profile document lists it (a Web Push subscription as its object again).
    pub fn to_json(&self) -> Value {
        let token = match self.provider {
            DeviceProvider::Webpush => serde_json::from_str(&self.token)
                .unwrap_or_else(|_| Value::String(self.token.clone())),
            _ => Value::String(self.token.clone()),
        };
        let mut device = serde_json::json!({"provider": self.provider.as_str(), "token": token});
        if let Some(label) = &self.label {
            device["label"] = Value::String(label.clone());
        }
        device
    }

    /// A device from its JSON: `{"provider": "fcm"|"apns"|"webpush", "token": …, "label": …}`. A Web Push token is
    /// the subscription object (`{"endpoint": "https://…", "keys": {"p256dh", "auth"}}`) or that object as a string.
    pub fn parse(value: &Value) -> Result<Self, (String, String)> {
        let field = |name: &str, message: String| (name.to_string(), message);
        let object = value
            .as_object()
            .ok_or_else(|| field("", "must be an object with provider and token".into()))?;
        for key in object.keys() {
            if !matches!(key.as_str(), "provider" | "token" | "label") {
                return Err(field(
                    key,
                    "is not a device field (provider, token, label)".into(),
                ));
            }
        }
        let provider = object
            .get("provider")
            .and_then(Value::as_str)
            .and_then(DeviceProvider::parse)
            .ok_or_else(|| field("provider", "must be one of fcm, apns, webpush".into()))?;
        let token = match (provider, object.get("token")) {
            (DeviceProvider::Webpush, Some(Value::Object(_))) => {
                web_push_subscription(&object["token"]).map_err(|m| field("token", m))?
            }
            (DeviceProvider::Webpush, Some(Value::String(text))) => {
                let parsed: Value = serde_json::from_str(text).map_err(|_| {
                    field(
                        "token",
                        "must be a Web Push subscription (object or its JSON)".into(),
                    )
                })?;
                web_push_subscription(&parsed).map_err(|m| field("token", m))?
            }
            (_, Some(Value::String(text))) => {
                device_token(provider, text).map_err(|m| field("token", m))?
            }
            _ => return Err(field("token", "is required: a string".into())),
        };
        let label = match object.get("label") {
            None | Some(Value::Null) => None,
            Some(Value::String(label)) if valid_key(label) => Some(label.clone()),
            Some(_) => {
                return Err(field(
                    "label",
                    format!("must be 1-{MAX_ID_CHARS} characters without control characters"),
                ));
            }
        };
        Ok(Self {
            provider,
            token,
            label,
        })
    }
}

/// An FCM registration token (letters, digits, `_:.-`) or an APNs device token (an even number of hex digits,
/// 32 to 200).
fn device_token(provider: DeviceProvider, token: &str) -> Result<String, String> {
    match provider {
        DeviceProvider::Fcm => {
            let ok = (1..=MAX_TOKEN_CHARS).contains(&token.len())
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b));
            ok.then(|| token.to_string()).ok_or_else(|| {
                format!(
                    "must be an FCM registration token: 1-{MAX_TOKEN_CHARS} of A-Z a-z 0-9 _ : . -"
                )
            })
        }
        DeviceProvider::Apns => {
            let ok = (32..=200).contains(&token.len())
                && token.len().is_multiple_of(2)
                && token.bytes().all(|b| b.is_ascii_hexdigit());
            ok.then(|| token.to_ascii_lowercase())
                .ok_or_else(|| "must be an APNs device token: 32-200 hex digits".to_string())
        }
        DeviceProvider::Webpush => Err("must be a Web Push subscription".into()),
    }
}

/// A Web Push subscription, checked and stored as compact JSON (what the webpush adapter reads as `to`).
fn web_push_subscription(value: &Value) -> Result<String, String> {
    const SHAPE: &str = "must be a Web Push subscription: {\"endpoint\": \"https://…\", \"keys\": {\"p256dh\", \"auth\"}}";
    let endpoint = value.get("endpoint").and_then(Value::as_str).ok_or(SHAPE)?;
    let keys = value.get("keys").ok_or(SHAPE)?;
    let p256dh = keys.get("p256dh").and_then(Value::as_str).ok_or(SHAPE)?;
    let auth = keys.get("auth").and_then(Value::as_str).ok_or(SHAPE)?;
    let base64url = |s: &str| {
        (1..=256).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b))
    };
    if !endpoint.starts_with("https://")
        || endpoint.len() > 2048
        || endpoint
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        || !base64url(p256dh)
        || !base64url(auth)
    {
        return Err(SHAPE.into());
    }
    let compact =
        serde_json::json!({"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}});
    Ok(compact.to_string())
}

/// Direct-message handles by chat provider (`{"slack": "U024BE7LH"}`): at most [`MAX_CHAT_HANDLES`], each 1-255
/// characters.
pub fn parse_chat(value: &Value) -> Result<BTreeMap<String, String>, String> {
    const SHAPE: &str = "must be an object of chat provider name to handle (1-255 characters each)";
    let object = value.as_object().ok_or(SHAPE)?;
    if object.len() > MAX_CHAT_HANDLES {
        return Err(format!("at most {MAX_CHAT_HANDLES} handles"));
    }
    object
        .iter()
        .map(|(provider, handle)| match handle.as_str() {
            Some(h) if valid_key(h) && valid_name(provider) => {
                Ok((provider.clone(), h.to_string()))
            }
            _ => Err(SHAPE.to_string()),
        })
        .collect()
}

/// A workflow, category or provider name: 1-64 characters of `[A-Za-z0-9_.-]` (the shape `workflow::definition`
/// gives names; preferences name workflows and categories before any is defined).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Whether a JSON value holds U+0000 anywhere (in a string or a key): `jsonb` cannot store it.
pub fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(fields) => fields
            .iter()
            .any(|(name, value)| name.contains('\0') || contains_nul(value)),
        _ => false,
    }
}
