//! A recipient's profile document, as `PUT /v1/recipients/{id}`, the batch endpoint and the Kafka bridge take it:
//!
//! ```json
//! { "email": "ada@example.com", "phone": "+14155550123", "locale": "en-GB", "timezone": "Europe/London",
//!   "devices": [{ "provider": "fcm", "token": "…", "label": "Pixel" }],
//!   "chat": { "slack": "U024BE7LH" }, "data": { "plan": "pro" } }
//! ```
//! Every field is optional; a PUT replaces the whole profile (an absent field is cleared), a PATCH is a JSON
//! merge patch (RFC 7396) over it. Each value is parsed into its type here, once, and every problem is reported
//! with its field path (`devices[1].token`), so a 422 names them all.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::types::{
    Device, EmailAddress, Locale, MAX_DATA_BYTES, MAX_DEVICES, PhoneNumber, TimeZone, parse_chat,
};

/// The fields a profile document may have (besides `id`, which the batch endpoint and the bridge use).
pub const FIELDS: [&str; 7] = [
    "email", "phone", "locale", "timezone", "devices", "chat", "data",
];

/// A parsed profile: each address as its type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub email: Option<EmailAddress>,
    pub phone: Option<PhoneNumber>,
    pub locale: Option<Locale>,
    pub timezone: Option<TimeZone>,
    pub devices: Vec<Device>,
    pub chat: BTreeMap<String, String>,
    pub data: Map<String, Value>,
}

impl Profile {
    /// Parses a document; `allow_id` lets an `id` field through (its value is the caller's to check).
    pub fn parse(value: &Value, allow_id: bool) -> Result<Self, Vec<(String, String)>> {
        let Some(object) = value.as_object() else {
            return Err(vec![("".into(), "must be a JSON object".into())]);
        };
        let mut problems = Vec::new();
        let mut profile = Profile::default();
        for (key, value) in object {
            let present = !value.is_null();
            let text = || value.as_str().ok_or_else(|| "must be a string".to_string());
            let result = match key.as_str() {
                "id" if allow_id => Ok(()),
                "email" if present => text()
                    .and_then(EmailAddress::parse)
                    .map(|v| profile.email = Some(v)),
                "phone" if present => text()
                    .and_then(PhoneNumber::parse)
                    .map(|v| profile.phone = Some(v)),
                "locale" if present => text()
                    .and_then(Locale::parse)
                    .map(|v| profile.locale = Some(v)),
                "timezone" if present => text()
                    .and_then(TimeZone::parse)
                    .map(|v| profile.timezone = Some(v)),
                "devices" if present => {
                    profile.devices = parse_devices(value, &mut problems);
                    Ok(())
                }
                "chat" if present => parse_chat(value).map(|v| profile.chat = v),
                "data" if present => parse_data(value).map(|v| profile.data = v),
                field if FIELDS.contains(&field) => Ok(()),
                _ => Err(not_a_field()),
            };
            if let Err(message) = result {
                problems.push((key.clone(), message));
            }
        }
        if problems.is_empty() {
            Ok(profile)
        } else {
            Err(problems)
        }
    }

    /// The document this profile was parsed from (devices as stored), so a PATCH can merge into it.
    pub fn to_document(&self) -> Value {
        let mut doc = Map::new();
        let mut put = |key: &str, value: Option<&str>| {
            if let Some(value) = value {
                doc.insert(key.into(), Value::String(value.into()));
            }
        };
        put("email", self.email.as_ref().map(EmailAddress::as_str));
        put("phone", self.phone.as_ref().map(PhoneNumber::as_str));
        put("locale", self.locale.as_ref().map(Locale::as_str));
        put("timezone", self.timezone.as_ref().map(TimeZone::name));
        if !self.devices.is_empty() {
            let devices = self.devices.iter().map(Device::to_json).collect();
            doc.insert("devices".into(), Value::Array(devices));
        }
        if !self.chat.is_empty() {
            let chat = self
                .chat
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())));
            doc.insert("chat".into(), Value::Object(chat.collect()));
        }
        if !self.data.is_empty() {
            doc.insert("data".into(), Value::Object(self.data.clone()));
        }
        Value::Object(doc)
    }
}

fn parse_devices(value: &Value, problems: &mut Vec<(String, String)>) -> Vec<Device> {
    let Some(items) = value.as_array() else {
        problems.push(("devices".into(), "must be an array of devices".into()));
        return Vec::new();
    };
    if items.len() > MAX_DEVICES {
        problems.push(("devices".into(), format!("at most {MAX_DEVICES} devices")));
        return Vec::new();
    }
    let mut devices: Vec<Device> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match Device::parse(item) {
            // The same token twice is one device (the last label wins).
            Ok(device) => match devices
                .iter_mut()
                .find(|d| d.provider == device.provider && d.token == device.token)
            {
                Some(existing) => existing.label = device.label,
                None => devices.push(device),
            },
            Err((field, message)) if field.is_empty() => {
                problems.push((format!("devices[{i}]"), message))
            }
            Err((field, message)) => problems.push((format!("devices[{i}].{field}"), message)),
        }
    }
    devices
}

fn parse_data(value: &Value) -> Result<Map<String, Value>, String> {
    let Some(object) = value.as_object() else {
        return Err("must be a JSON object".into());
    };
    if value.to_string().len() > MAX_DATA_BYTES {
        return Err(format!("must be at most {MAX_DATA_BYTES} bytes as JSON"));
    }
    if crate::recipients::types::contains_nul(value) {
        return Err("must not contain U+0000 (stored as jsonb)".into());
    }
    Ok(object.clone())
}

/// The problems of a merge patch's own fields: each must be a profile field, even one set to null (removing a
/// field a profile cannot have is a mistake worth naming, not a no-op).
pub fn check_patch(patch: &Value) -> Result<(), Vec<(String, String)>> {
    let unknown: Vec<(String, String)> = patch
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| !FIELDS.contains(&key.as_str()))
        .map(|(key, _)| (key.clone(), not_a_field()))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(unknown)
    }
}

fn not_a_field() -> String {
    format!("is not a profile field (one of: {})", FIELDS.join(", "))
}

/// RFC 7396: `patch` merged into `target` (a null removes a key; objects merge; anything else replaces).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_bad_field_is_named() {
        let problems = Profile::parse(
            &json!({
                "email": "not-an-address", "phone": "555-1234", "timezone": "Mars/Olympus",
                "locale": "english!", "devices": [{"provider": "fcm", "token": "ok-token"},
                {"provider": "apns", "token": "zz"}], "nickname": "x", "data": [1]
            }),
            false,
        )
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        for field in [
            "email",
            "phone",
            "timezone",
            "locale",
            "devices[1].token",
            "nickname",
            "data",
        ] {
            assert!(fields.contains(&field), "{field} not named in {problems:?}");
        }
        assert!(!fields.contains(&"devices[0].token"));
    }

    #[test]
    fn a_document_round_trips_through_a_merge_patch() {
        let doc = json!({"email": "a@example.com", "timezone": "Europe/Paris",
                         "devices": [{"provider": "apns", "token": "AB".repeat(32), "label": "phone"}],
                         "data": {"plan": "pro", "seats": 3}});
        let profile = Profile::parse(&doc, false).unwrap();
        let mut stored = profile.to_document();
        merge_patch(
            &mut stored,
            &json!({"email": null, "data": {"seats": null, "team": "x"}}),
        );
        let patched = Profile::parse(&stored, false).unwrap();
        assert_eq!(patched.email, None);
        assert_eq!(patched.timezone.map(|t| t.name()), Some("Europe/Paris"));
        assert_eq!(
            patched.devices, profile.devices,
            "APNs tokens are kept lowercased as parsed"
        );
        assert_eq!(
            Value::Object(patched.data),
            json!({"plan": "pro", "team": "x"})
        );
    }
}
