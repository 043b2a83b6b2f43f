//! The template file format and its validation. One document per file in `templates/` (`.yaml`, `.yml` or
//! `.json`), or per `POST /v1/templates`:
//!
//! ```yaml
//! name: order-shipped
//! version: 1
//! layout: brand                 # optional: the layout wrapping the email parts
//! sample: { trigger: { order_id: "A-1" } }   # data for preview and `herald templates check`
//! channels:
//!   email: { subject: "Order {{ trigger.order_id }} shipped", html: "<p>...</p>" }   # text made from html
//!   sms: { text: "Order {{ trigger.order_id }} shipped" }
//! locales:
//!   pt-BR:
//!     email: { subject: "Pedido {{ trigger.order_id }} enviado" }
//! ```
//!
//! Layouts (`kind: layout`) have an `html` and/or `text` part that places `{{ content }}`; partials
//! (`kind: partial`) have an `html` and/or `text` part that templates and layouts `{% include "name" %}`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// The fields of each channel's variant, and the message content field each one fills.
pub const FIELDS: &[(&str, &[(&str, &str)])] = &[
    (
        "email",
        &[("subject", "subject"), ("html", "html"), ("text", "body")],
    ),
    ("sms", &[("text", "body")]),
    ("push", &[("title", "title"), ("body", "body")]),
    ("chat", &[("text", "body")]),
    (
        "in_app",
        &[
            ("title", "title"),
            ("body", "body"),
            ("action_url", "action_url"),
        ],
    ),
];

/// The largest document (as JSON), the most locales one may have, and the longest field source.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
pub const MAX_LOCALES: usize = 32;
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Content for actions: a variant per channel, per-locale overrides.
    Template,
    /// A wrapper for a template's email parts.
    Layout,
    /// A fragment included by templates and layouts.
    Partial,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Template => "template",
            Kind::Layout => "layout",
            Kind::Partial => "partial",
        }
    }
}

/// channel -> field -> template source.
pub type Variants = BTreeMap<String, BTreeMap<String, String>>;

/// A validated document.
#[derive(Debug, Clone)]
pub struct Document {
    pub name: String,
    pub version: i32,
    pub kind: Kind,
    pub description: Option<String>,
    /// A template's layout, by name.
    pub layout: Option<String>,
    /// The language of a template's default variants (what its format filters use; `en` if unset).
    pub locale: Option<String>,
    /// Preview data: the context the template sees (`trigger`, `recipient`, ...).
    pub sample: Value,
    /// A template's default variants.
    pub channels: Variants,
    /// A template's per-locale overrides, by locale tag as written.
    pub locales: BTreeMap<String, Variants>,
    /// A layout's or partial's parts.
    pub html: Option<String>,
    pub text: Option<String>,
    /// The document as given (what is stored).
    pub raw: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    version: i32,
    kind: Option<String>,
    description: Option<String>,
    layout: Option<String>,
    locale: Option<String>,
    sample: Option<Value>,
    channels: Option<Variants>,
    locales: Option<BTreeMap<String, Variants>>,
    html: Option<String>,
    text: Option<String>,
}

/// Parses a file's text (JSON if `source` ends in `.json`, else YAML).
pub fn parse_text(source: &str, text: &str) -> Result<Value, Vec<String>> {
    let parsed = if source.ends_with(".json") {
        serde_json::from_str::<Value>(text).map_err(|e| e.to_string())
    } else {
        serde_yaml_ng::from_str::<Value>(text).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| vec![format!("{source}: not valid YAML/JSON: {e}")])
}

/// A name: 1-64 of `[A-Za-z0-9_.-]`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A locale tag: letters, then `-` or `_` separated parts of letters and digits (`pt`, `pt-BR`, `zh_Hant_TW`).
pub fn valid_locale(tag: &str) -> bool {
    let mut parts = tag.split(['-', '_']);
    let first_ok = parts
        .next()
        .is_some_and(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphabetic()));
    tag.len() <= 35
        && first_ok
        && parts.all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Validates a document, or answers every problem, each naming `source` and the field.
pub fn validate(source: &str, raw: &Value) -> Result<Document, Vec<String>> {
    let size = serde_json::to_vec(raw).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_DOCUMENT_BYTES {
        return Err(vec![format!(
            "{source}: the document is {size} bytes, more than {MAX_DOCUMENT_BYTES}"
        )]);
    }
    if has_nul(raw) {
        return Err(vec![format!(
            "{source}: a text contains U+0000, which cannot be stored"
        )]);
    }
    let parsed: Raw =
        serde_json::from_value(raw.clone()).map_err(|e| vec![format!("{source}: {e}")])?;
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: String| {
        problems.push(format!("{source}: `{field}`: {message}"));
    };
    if !valid_name(&parsed.name) {
        problem("name", "must be 1-64 characters of [A-Za-z0-9_.-]".into());
    }
    if parsed.version < 1 {
        problem("version", "must be at least 1".into());
    }
    let kind = match parsed.kind.as_deref() {
        None | Some("template") => Kind::Template,
        Some("layout") => Kind::Layout,
        Some("partial") => Kind::Partial,
        Some(other) => {
            problem(
                "kind",
                format!("is `template`, `layout` or `partial`, not `{other}`"),
            );
            Kind::Template
        }
    };
    let sample = match parsed.sample {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(sample) => sample,
    };
    let channels = parsed.channels.unwrap_or_default();
    let locales = parsed.locales.unwrap_or_default();
    if let Some(tag) = &parsed.locale
        && !valid_locale(tag)
    {
        problem("locale", "is not a locale tag like `en` or `pt-BR`".into());
    }
    if !sample.is_object() {
        problem(
            "sample",
            "must be an object (the data templates see)".into(),
        );
    }
    match kind {
        Kind::Template => {
            if channels.is_empty() {
                problem(
                    "channels",
                    "a template needs at least one channel variant".into(),
                );
            }
            for (field, present) in [
                ("html", parsed.html.is_some()),
                ("text", parsed.text.is_some()),
            ] {
                if present {
                    problem(
                        field,
                        "belongs to layouts and partials; a template's parts go under `channels`"
                            .into(),
                    );
                }
            }
            if let Some(layout) = &parsed.layout
                && !valid_name(layout)
            {
                problem(
                    "layout",
                    "must name a layout (1-64 characters of [A-Za-z0-9_.-])".into(),
                );
            }
            check_variants("channels", &channels, None, &mut problem);
            if locales.len() > MAX_LOCALES {
                problem("locales", format!("at most {MAX_LOCALES} locales"));
            }
            for (tag, variants) in &locales {
                let at = format!("locales.{tag}");
                if !valid_locale(tag) {
                    problem(&at, "is not a locale tag like `pt` or `pt-BR`".into());
                }
                check_variants(&at, variants, Some(&channels), &mut problem);
            }
        }
        Kind::Layout | Kind::Partial => {
            let what = kind.as_str();
            if !channels.is_empty() || !locales.is_empty() || parsed.layout.is_some() {
                problem(
                    "channels",
                    format!("a {what} has only `html` and/or `text` parts"),
                );
            }
            if parsed.html.is_none() && parsed.text.is_none() {
                problem("html", format!("a {what} needs an `html` or a `text` part"));
            }
            for (field, part) in [("html", &parsed.html), ("text", &parsed.text)] {
                let Some(part) = part else { continue };
                match super::language::syntax(part, field == "html") {
                    Err(e) => problem(field, e),
                    Ok(variables) if kind == Kind::Layout && !variables.contains("content") => {
                        problem(field, "a layout must place `{{ content }}`".into());
                    }
                    Ok(_) if part.len() > MAX_SOURCE_BYTES => {
                        problem(field, format!("longer than {MAX_SOURCE_BYTES} bytes"));
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Document {
        name: parsed.name,
        version: parsed.version,
        kind,
        description: parsed.description,
        layout: parsed.layout,
        locale: parsed.locale,
        sample,
        channels,
        locales,
        html: parsed.html,
        text: parsed.text,
        raw: raw.clone(),
    })
}

/// Whether any key or string in `value` contains U+0000 (which `jsonb` cannot hold).
pub fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Checks one set of variants: known channels and fields, sources that compile; a locale's channels must be
/// ones the default variants have (`defaults`).
fn check_variants(
    at: &str,
    variants: &Variants,
    defaults: Option<&Variants>,
    problem: &mut impl FnMut(&str, String),
) {
    for (channel, fields) in variants {
        let Some((_, known)) = FIELDS.iter().find(|(name, _)| name == channel) else {
            let names: Vec<&str> = FIELDS.iter().map(|(name, _)| *name).collect();
            problem(
                &format!("{at}.{channel}"),
                format!("unknown channel (one of: {})", names.join(", ")),
            );
            continue;
        };
        if defaults.is_some_and(|d| !d.contains_key(channel)) {
            problem(
                &format!("{at}.{channel}"),
                "a locale may only override a channel the template's `channels` has".into(),
            );
        }
        if fields.is_empty() {
            problem(&format!("{at}.{channel}"), "has no field".into());
        }
        for (field, source) in fields {
            let path = format!("{at}.{channel}.{field}");
            if !known.iter().any(|(name, _)| name == field) {
                let names: Vec<&str> = known.iter().map(|(name, _)| *name).collect();
                problem(
                    &path,
                    format!("unknown field for {channel} (one of: {})", names.join(", ")),
                );
                continue;
            }
            if source.len() > MAX_SOURCE_BYTES {
                problem(&path, format!("longer than {MAX_SOURCE_BYTES} bytes"));
                continue;
            }
            if let Err(e) = super::language::syntax(source, field == "html") {
                problem(&path, e);
            }
        }
    }
}
