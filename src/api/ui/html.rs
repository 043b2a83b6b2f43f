//! Writing HTML by hand safely: every outside string goes through [`esc`] (element content and quoted
//! attributes) or [`encode`] (a query value); times, ages and JSON are formatted one way on every page.

use chrono::{DateTime, Utc};

/// Escapes text for HTML (element content and quoted attributes).
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes at most `max` characters of `text`, marking a cut with "…" (a long reason must not stretch a table).
pub fn esc_short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return esc(text);
    }
    let cut: String = text.chars().take(max).collect();
    format!("{}…", esc(&cut))
}

/// Percent-encodes a query value (letters, digits and `_.-~` pass).
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `?a=1&b=2` from the pairs whose value is set (values encoded), or "" when none is.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| {
            value
                .filter(|v| !v.is_empty())
                .map(|v| format!("{name}={}", encode(v)))
        })
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

/// A query-string field's value, trimmed, when it is given and not blank.
pub fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A time as the dashboard shows it (UTC, to the second).
pub fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// An optional time, or a dash.
pub fn time_or_dash(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "–".to_string(), time)
}

/// How long ago `at` was, before `now`, in the largest sensible unit.
pub fn ago(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds().max(0);
    match secs {
        0..=119 => format!("{secs} s ago"),
        120..=7199 => format!("{} min ago", secs / 60),
        7200..=172_799 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// JSON, indented and escaped, for a `<pre>`.
pub fn pretty(value: &serde_json::Value) -> String {
    esc(&serde_json::to_string_pretty(value).unwrap_or_default())
}

/// A notice of what an action did (`role="status"`), or nothing.
pub fn notice(text: Option<&str>) -> String {
    text.map(|text| format!(r#"<p role="status" class="notice">{}</p>"#, esc(text)))
        .unwrap_or_default()
}

/// The words of an action's `?done=` code. Only known codes are shown: a link someone else made cannot put words
/// of its own on an operator's page.
pub fn done(code: Option<&str>) -> String {
    notice(match code {
        Some("cancelled") => Some("Cancelled."),
        Some("retrying") => Some("Retrying from the failed node."),
        _ => None,
    })
}

/// A table with a header row; `empty` stands in for the rows when there are none. A header starting with `~`
/// is hidden on a phone (its cells must carry `class="wide"`); then `#` marks a numeric column. Wrapped so that
/// a wide table scrolls on its own on a phone instead of widening the page.
pub fn table(id: &str, headers: &[&str], rows: &str, empty: &str) -> String {
    let head: String = headers
        .iter()
        .map(|h| {
            let (wide, h) = h.strip_prefix('~').map_or((false, *h), |h| (true, h));
            let (numeric, h) = h.strip_prefix('#').map_or((false, h), |h| (true, h));
            let class = match (wide, numeric) {
                (true, true) => r#" class="n wide""#,
                (true, false) => r#" class="wide""#,
                (false, true) => r#" class="n""#,
                (false, false) => "",
            };
            format!("<th{class}>{h}</th>")
        })
        .collect();
    let body = if rows.is_empty() {
        format!(r#"<tr><td colspan="{}">{empty}</td></tr>"#, headers.len())
    } else {
        rows.to_string()
    };
    format!(
        r#"<div class="scroll"><table id="{id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup_and_cuts_on_characters() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(esc_short("ééé<", 3), "ééé…");
        assert_eq!(esc_short("<b>", 3), "&lt;b&gt;");
        assert_eq!(
            query(&[("a", Some("x y&")), ("b", None), ("c", Some(""))]),
            "?a=x%20y%26"
        );
    }
}
