//! Rendering a template for one channel and locale.
//!
//! A [`Snapshot`] holds the latest version of every document and two minijinja environments built from them:
//! one for HTML parts (every value HTML-escaped unless marked `|safe`; partials from their `html` part) and one for
//! plain text (partials from their `text` part). Both are strict (a missing variable is an error naming it), have
//! the fuel budget [`FUEL`](super::FUEL) per field, and the [`format`](super::format) filters.
//!
//! Locales: the recipient's locale `pt-BR` is tried as `pt-BR`, then `pt` (matching ignores case and treats `_` as
//! `-`), then the default variant, field by field: a locale may override only the subject. Email: the `html` part
//! is wrapped in the template's layout (the layout's `{{ content }}`, inserted unescaped); the `text` part too,
//! when the layout has one; a missing `text` part is made from the final HTML.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use minijinja::{Environment, Value};
use serde::Serialize;

use super::document::{Document, FIELDS, Kind};
use super::language::{describe, environment};
use super::{MAX_RENDERED_BYTES, TemplatesError};

/// A template rendered for one channel: the message content fields (`subject`, `html`, `body`, `title`), and
/// the locale whose variant was used (`None`: the default).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Rendered {
    pub template: String,
    pub version: i32,
    pub locale: Option<String>,
    pub content: BTreeMap<String, String>,
}

/// The latest version of every document, ready to render.
pub struct Snapshot {
    documents: HashMap<String, Arc<Document>>,
    html: Environment<'static>,
    text: Environment<'static>,
}

impl Snapshot {
    /// Builds the environments; a partial that does not compile is left out (it was validated when stored, so only
    /// a document stored by a newer version could).
    pub fn new(documents: Vec<Document>) -> Self {
        let mut html = environment(true);
        let mut text = environment(false);
        for document in documents.iter().filter(|d| d.kind == Kind::Partial) {
            if let Some(part) = &document.html {
                let _ = html.add_template_owned(document.name.clone(), part.clone());
            }
            if let Some(part) = &document.text {
                let _ = text.add_template_owned(document.name.clone(), part.clone());
            }
        }
        Self {
            documents: documents
                .into_iter()
                .map(|d| (d.name.clone(), Arc::new(d)))
                .collect(),
            html,
            text,
        }
    }

    pub fn document(&self, name: &str) -> Option<&Arc<Document>> {
        self.documents.get(name)
    }

    pub fn documents(&self) -> impl Iterator<Item = &Arc<Document>> {
        self.documents.values()
    }

    /// Renders template `name` for `channel` in `locale` (the recipient's; `None`: the default variant), with
    /// `context` (what the action's inline content would see). Blocking work: run it off the async executor
    /// (see [`off_the_executor`]).
    pub fn render(
        &self,
        name: &str,
        channel: &str,
        locale: Option<&str>,
        context: &Value,
    ) -> Result<Rendered, TemplatesError> {
        let document = self
            .documents
            .get(name)
            .filter(|d| d.kind == Kind::Template)
            .ok_or_else(|| TemplatesError::NotFound(format!("template `{name}`")))?;
        let Some(defaults) = document.channels.get(channel) else {
            return Err(TemplatesError::NotFound(format!(
                "the `{channel}` variant of template `{name}`"
            )));
        };
        // A tag that is not a locale (trigger data can say anything) chooses nothing.
        let locale = locale.filter(|tag| super::document::valid_locale(tag));
        let chain = locale
            .map(|tag| fallback_chain(document, tag))
            .unwrap_or_default();
        // Each field's source, and whether a locale variant gave it.
        let mut used_locale = None;
        let mut fields: BTreeMap<&str, (&str, bool)> = BTreeMap::new();
        let names: Vec<&str> = FIELDS
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, known)| known.iter().map(|(field, _)| *field).collect())
            .unwrap_or_default();
        for field in names {
            let from_locale = chain.iter().find_map(|tag| {
                document.locales[tag]
                    .get(channel)
                    .and_then(|variant| variant.get(field))
                    .map(|source| (tag, source))
            });
            match from_locale {
                Some((tag, source)) => {
                    used_locale.get_or_insert_with(|| tag.clone());
                    fields.insert(field, (source, true));
                }
                None => {
                    if let Some(source) = defaults.get(field) {
                        fields.insert(field, (source, false));
                    }
                }
            }
        }
        // A locale's HTML with the default language's text part would mail two languages: its text is made from
        // its HTML instead.
        if fields.get("html").is_some_and(|(_, local)| *local)
            && fields.get("text").is_some_and(|(_, local)| !*local)
        {
            fields.remove("text");
        }
        // `locale` (what the format filters read) first: the data cannot override it. A field of a locale variant
        // formats for the recipient's locale; a default field for the default variants' language.
        let default_locale = document.locale.as_deref().unwrap_or("en");
        let local_context =
            minijinja::context! { locale => locale.unwrap_or(default_locale), ..context.clone() };
        let default_context = minijinja::context! { locale => default_locale, ..context.clone() };
        // Every field is rendered, and every failure reported (a check lists all of a template's problems).
        let at = |field: &str| format!("template `{name}` {channel}.{field}");
        let mut rendered: BTreeMap<String, String> = BTreeMap::new();
        let mut problems = Vec::new();
        for (field, (source, local)) in &fields {
            let html = *field == "html";
            let env = if html { &self.html } else { &self.text };
            let scope = if *local {
                &local_context
            } else {
                &default_context
            };
            match checked(env, source, scope, &at(field)) {
                Ok(value) => {
                    rendered.insert((*field).to_string(), value);
                }
                Err(problem) => problems.push(problem),
            }
        }
        let context = if used_locale.is_some() {
            local_context
        } else {
            default_context
        };
        if channel == "email"
            && let Err(problem) = self.wrap_email(document, &context, &mut rendered)
        {
            problems.push(problem);
        }
        if !problems.is_empty() {
            return Err(TemplatesError::Render(problems.join("; ")));
        }
        // Template field names -> the message content fields the channels read.
        let map: &[(&str, &str)] = FIELDS
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, known)| *known)
            .unwrap_or(&[]);
        let content = rendered
            .into_iter()
            .map(|(field, value)| {
                let target = map
                    .iter()
                    .find(|(f, _)| *f == field)
                    .map_or(field.as_str(), |(_, t)| t);
                (target.to_string(), value)
            })
            .collect();
        Ok(Rendered {
            template: name.to_string(),
            version: document.version,
            locale: used_locale,
            content,
        })
    }

    /// Wraps an email's parts in the template's layout, and makes the text part from the HTML one if missing.
    fn wrap_email(
        &self,
        document: &Document,
        context: &Value,
        rendered: &mut BTreeMap<String, String>,
    ) -> Result<(), String> {
        if let Some(layout_name) = &document.layout {
            let layout = self
                .documents
                .get(layout_name)
                .filter(|d| d.kind == Kind::Layout)
                .ok_or_else(|| {
                    format!(
                        "template `{}` names layout `{layout_name}`, which is not stored",
                        document.name
                    )
                })?;
            // No text part: made from the message's own HTML, then framed by the layout's text part (or, if the
            // layout has none, made from the whole framed HTML below).
            if layout.text.is_some()
                && !rendered.contains_key("text")
                && let Some(html) = rendered.get("html")
            {
                let text = html_to_text(html);
                rendered.insert("text".to_string(), text);
            }
            for (field, part, env) in [
                ("html", &layout.html, &self.html),
                ("text", &layout.text, &self.text),
            ] {
                let (Some(part), Some(inner)) = (part, rendered.get(field)) else {
                    continue;
                };
                // The content is already rendered (and escaped, for HTML): inserted as it is.
                let content = Value::from_safe_string(inner.clone());
                let wrapped_context = minijinja::context! { content => content, ..context.clone() };
                let at = format!("layout `{layout_name}` {field}");
                let wrapped = checked(env, part, &wrapped_context, &at)?;
                rendered.insert(field.to_string(), wrapped);
            }
        }
        if !rendered.contains_key("text")
            && let Some(html) = rendered.get("html")
        {
            let text = html_to_text(html);
            rendered.insert("text".to_string(), text);
        }
        Ok(())
    }
}

/// The locales of `document` to try for `tag`, most specific first: `pt-BR` then `pt` (as the document spells
/// them).
fn fallback_chain(document: &Document, tag: &str) -> Vec<String> {
    let normal = |t: &str| t.replace('_', "-").to_ascii_lowercase();
    let wanted = normal(tag);
    let mut prefixes = Vec::new();
    let mut current = wanted.as_str();
    loop {
        prefixes.push(current.to_string());
        match current.rfind('-') {
            Some(cut) => current = &current[..cut],
            None => break,
        }
    }
    prefixes
        .iter()
        .filter_map(|prefix| {
            document
                .locales
                .keys()
                .find(|key| normal(key) == *prefix)
                .cloned()
        })
        .collect()
}

/// Renders `source` in `env`, or answers the problem naming where (and, for an undefined value, which variables
/// are missing); an over-long result is a problem too.
fn checked(
    env: &Environment<'static>,
    source: &str,
    context: &Value,
    at: &str,
) -> Result<String, String> {
    let value = env.render_str(source, context).map_err(|e| {
        let missing = if e.kind() == minijinja::ErrorKind::UndefinedError {
            undefined_paths(env, source, context)
        } else {
            Vec::new()
        };
        if missing.is_empty() {
            format!("{at}: {}", describe(&e))
        } else {
            format!("{at}: undefined variable {}", missing.join(", "))
        }
    })?;
    if value.len() > MAX_RENDERED_BYTES {
        return Err(format!(
            "{at} rendered {} bytes, more than {MAX_RENDERED_BYTES}",
            value.len()
        ));
    }
    Ok(value)
}

/// The variable paths `source` reads (`trigger.first_name`) that `context` does not have, as `` `path` ``.
fn undefined_paths(env: &Environment<'static>, source: &str, context: &Value) -> Vec<String> {
    let Ok(template) = env.template_from_str(source) else {
        return Vec::new();
    };
    let globals: HashSet<&str> = env.globals().map(|(name, _)| name).collect();
    let mut missing: Vec<String> = template
        .undeclared_variables(true)
        .into_iter()
        .filter(|path| {
            let mut parts = path.split('.');
            let root = parts.next().unwrap_or_default();
            if globals.contains(root) {
                return false;
            }
            let mut value = context.get_attr(root).unwrap_or(Value::UNDEFINED);
            for part in parts {
                if value.is_undefined() {
                    break;
                }
                value = value.get_attr(part).unwrap_or(Value::UNDEFINED);
            }
            value.is_undefined()
        })
        .map(|path| format!("`{path}`"))
        .collect();
    missing.sort();
    missing
}

/// A plain-text rendering of an email's HTML: no head, style or script; line breaks for block ends and `<br>`;
/// `- ` for list items; a link as `label (url)`; entities decoded; blank runs collapsed.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    let mut skip_until: Option<&'static str> = None;
    let mut link: Option<String> = None;
    while !rest.is_empty() {
        let Some(open) = rest.find('<') else {
            if skip_until.is_none() {
                out.push_str(rest);
            }
            break;
        };
        if skip_until.is_none() {
            out.push_str(&rest[..open]);
        }
        let after = &rest[open..];
        let Some(close) = after.find('>') else {
            // A `<` that opens no tag is text.
            if skip_until.is_none() {
                out.push_str(after);
            }
            break;
        };
        let tag = &after[1..close];
        rest = &after[close + 1..];
        let lower = tag.to_ascii_lowercase();
        let name: String = lower
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let closing = lower.starts_with('/');
        if let Some(end) = skip_until {
            if closing && name == end {
                skip_until = None;
            }
            continue;
        }
        match (name.as_str(), closing) {
            ("head", false) => skip_until = Some("head"),
            ("style", false) => skip_until = Some("style"),
            ("script", false) => skip_until = Some("script"),
            ("br", _) => out.push('\n'),
            ("li", false) => out.push_str("\n- "),
            (
                "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "tr" | "table" | "ul"
                | "ol",
                _,
            ) => {
                out.push_str("\n\n");
            }
            ("a", false) => link = attribute(tag, "href"),
            ("a", true) => {
                if let Some(href) = link.take() {
                    out.push_str(&format!(" ({href})"));
                }
            }
            _ => {}
        }
    }
    let decoded = decode_entities(&out);
    // Collapse: trim each line, at most one blank line in a row.
    let mut text = String::with_capacity(decoded.len());
    let mut blank = 0;
    for line in decoded.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            blank += 1;
            if blank > 1 || text.is_empty() {
                continue;
            }
        } else {
            blank = 0;
        }
        text.push_str(&line);
        text.push('\n');
    }
    text.trim_end().to_string()
}

/// The value of attribute `name` in a tag's text (quoted with `"` or `'`).
fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let at = lower.find(&format!("{name}="))? + name.len() + 1;
    let rest = &tag[at..];
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let value = &rest[1..];
    let end = value.find(quote)?;
    Some(decode_entities(&value[..end]))
}

fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        // An entity is short: look no further (a search to the end for every `&` would be quadratic).
        let window = &after.as_bytes()[..after.len().min(12)];
        let entity_end = window.iter().position(|b| *b == b';');
        let decoded = entity_end.and_then(|end| {
            let entity = &after[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32)
                    .filter(|c| *c != '\0'),
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &after[end + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_becomes_readable_text() {
        let html = "<html><head><style>p{color:red}</style></head><body><h1>Hi &amp; welcome</h1>\
                    <p>Your order <b>A-1</b> shipped.<br>Track it <a href=\"https://t.example/1?a=1&amp;b=2\">here</a>.</p>\
                    <ul><li>one</li><li>two</li></ul><script>alert(1)</script>&#169; Acme</body></html>";
        assert_eq!(
            html_to_text(html),
            "Hi & welcome\n\nYour order A-1 shipped.\nTrack it here (https://t.example/1?a=1&b=2).\n\n- one\n- two\n\n© Acme"
        );
    }

    fn snapshot(documents: &[serde_json::Value]) -> Snapshot {
        Snapshot::new(
            documents
                .iter()
                .map(|raw| super::super::document::validate("test", raw).unwrap())
                .collect(),
        )
    }

    #[test]
    fn a_locales_html_makes_its_own_text_part_and_formats_for_its_language() {
        let snapshot = snapshot(&[serde_json::json!({
            "name": "t", "version": 1,
            "channels": {"email": {"subject": "Hi", "html": "<p>Hello {{ n | format_number(1) }}</p>", "text": "Hello (text)"}},
            "locales": {"pt": {"email": {"html": "<p>Olá {{ n | format_number(1) }}</p>"}}}
        })]);
        let context = minijinja::context! { n => 1234.5 };
        let pt = snapshot
            .render("t", "email", Some("pt-BR"), &context)
            .unwrap();
        assert_eq!(pt.locale.as_deref(), Some("pt"));
        assert_eq!(pt.content["body"], "Olá 1.234,5");
        // The default variants format for their own language (en), whatever the recipient's locale.
        assert_eq!(pt.content["subject"], "Hi");
        let fr = snapshot.render("t", "email", Some("fr"), &context).unwrap();
        assert_eq!(fr.content["html"], "<p>Hello 1,234.5</p>");
        assert_eq!(fr.content["body"], "Hello (text)");
    }

    #[test]
    fn a_locale_that_is_not_a_tag_chooses_the_default_at_once() {
        let snapshot = snapshot(&[serde_json::json!({
            "name": "t", "version": 1, "channels": {"sms": {"text": "hi"}},
            "locales": {"pt": {"sms": {"text": "oi"}}}
        })]);
        // From trigger data: any length, any text. Not a locale tag: ignored (no work per character).
        let hostile = "a-".repeat(200_000);
        let rendered = snapshot
            .render("t", "sms", Some(&hostile), &minijinja::context! {})
            .unwrap();
        assert_eq!(rendered.content["body"], "hi");
        assert!(matches!(
            snapshot.render("t", "email", None, &minijinja::context! {}),
            Err(TemplatesError::NotFound(_))
        ));
    }

    #[test]
    fn entities_and_brackets_in_bulk_convert_in_one_pass() {
        // A mebibyte of bare `&` and of unclosed `<`: each is looked at once, not searched to the end each time.
        let ampersands = "&".repeat(1 << 20);
        assert_eq!(html_to_text(&ampersands).len(), 1 << 20);
        let brackets = format!("text {}", "<".repeat(1 << 20));
        assert!(html_to_text(&brackets).starts_with("text <"));
        assert_eq!(html_to_text("a &#0; b"), "a &#0; b");
    }

    #[test]
    fn broken_html_does_not_panic() {
        for html in [
            "<",
            "<a href=",
            "&",
            "&#xZZ;",
            "<p",
            "text & more <b>bold",
            "<a href='x'>y",
        ] {
            let _ = html_to_text(html);
        }
        assert_eq!(html_to_text("a &unknown; b"), "a &unknown; b");
    }
}
