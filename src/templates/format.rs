//! Locale-aware filters for templates: `{{ trigger.shipped_at | format_date("long") }}` and
//! `{{ trigger.total | format_number(2) }}`. Both read the render's `locale` (the recipient's, see `render.rs`);
//! dates are shown in the recipient's time zone (`recipient.timezone`) when there is one, else UTC.
//!
//! Month and day names come from chrono's locale tables (glibc's data); digit grouping and the decimal mark from a
//! small table by language (English style for languages it does not list).

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, FixedOffset, Utc};
use minijinja::value::Value;
use minijinja::{Error, ErrorKind, State};

/// The longest custom date pattern.
const MAX_PATTERN_CHARS: usize = 64;

/// Adds the filters to `env`.
pub fn register(env: &mut minijinja::Environment<'_>) {
    env.add_filter("format_date", format_date);
    env.add_filter("format_number", format_number);
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}

/// The render's locale tag, normalised to `ll_RR` parts (`pt-BR` -> ("pt", Some("BR"))).
fn locale_parts(state: &State) -> (String, Option<String>) {
    let tag = state
        .lookup("locale")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut parts = tag.split(['-', '_']);
    let language = parts.next().unwrap_or_default().to_ascii_lowercase();
    let region = parts
        .find(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_alphabetic()))
        .map(str::to_ascii_uppercase);
    (language, region)
}

/// chrono's locale for a language and region: the exact one, else the language's home region, else en_US.
fn chrono_locale(language: &str, region: Option<&str>) -> chrono::Locale {
    let candidates = [
        region.map(|r| format!("{language}_{r}")),
        Some(format!("{language}_{}", language.to_ascii_uppercase())),
        Some(format!("{language}_{}", home_region(language))),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|name| chrono::Locale::try_from(name.as_str()).ok())
        .unwrap_or(chrono::Locale::en_US)
}

/// The region a language is first spoken in, where it differs from the language code.
fn home_region(language: &str) -> &'static str {
    match language {
        "en" => "US",
        "ja" => "JP",
        "zh" => "CN",
        "ko" => "KR",
        "da" => "DK",
        "sv" => "SE",
        "nb" | "no" => "NO",
        "cs" => "CZ",
        "el" => "GR",
        "uk" => "UA",
        "he" => "IL",
        "hi" => "IN",
        _ => "US",
    }
}

/// The long date pattern of a language.
fn long_pattern(language: &str) -> &'static str {
    match language {
        "en" | "" => "%B %-d, %Y",
        "de" => "%-d. %B %Y",
        "es" | "pt" => "%-d de %B de %Y",
        "ja" | "zh" => "%Y年%-m月%-d日",
        _ => "%-d %B %Y",
    }
}

/// `format_date(style)`: an RFC 3339 time or Unix seconds, as `short` (the locale's numeric date, the default),
/// `long`, `time`, `datetime`, or a strftime pattern.
fn format_date(state: &State, value: Value, style: Option<String>) -> Result<String, Error> {
    let at: DateTime<FixedOffset> = if let Some(text) = value.as_str() {
        DateTime::parse_from_rfc3339(text)
            .map_err(|_| invalid(format!("format_date: `{text}` is not an RFC 3339 time")))?
    } else if let Ok(seconds) = f64::try_from(value.clone()) {
        DateTime::<Utc>::from_timestamp_millis((seconds * 1000.0) as i64)
            .ok_or_else(|| invalid("format_date: the time is out of range"))?
            .fixed_offset()
    } else {
        return Err(invalid(
            "format_date needs an RFC 3339 time or Unix seconds",
        ));
    };
    let zone = state
        .lookup("recipient")
        .and_then(|r| r.get_attr("timezone").ok())
        .and_then(|z| z.as_str().and_then(|z| z.parse::<chrono_tz::Tz>().ok()))
        .unwrap_or(chrono_tz::UTC);
    let local = at.with_timezone(&zone);
    let (language, region) = locale_parts(state);
    let pattern = match style.as_deref().unwrap_or("short") {
        "short" => "%x",
        "long" => long_pattern(&language),
        "time" => "%X",
        "datetime" => "%x %X",
        custom => {
            if custom.chars().count() > MAX_PATTERN_CHARS {
                return Err(invalid(format!(
                    "format_date: a pattern is at most {MAX_PATTERN_CHARS} characters"
                )));
            }
            custom
        }
    };
    // An invalid pattern would make formatting fail (chrono reports it only when written): refuse it first.
    if StrftimeItems::new(pattern).any(|item| matches!(item, Item::Error)) {
        return Err(invalid(format!(
            "format_date: `{pattern}` is not a valid date pattern"
        )));
    }
    let locale = chrono_locale(&language, region.as_deref());
    let mut out = String::new();
    use std::fmt::Write as _;
    write!(out, "{}", local.format_localized(pattern, locale))
        .map_err(|_| invalid(format!("format_date: cannot format with `{pattern}`")))?;
    Ok(out)
}

/// The digit group separator and decimal mark of a language (and region).
fn separators(language: &str, region: Option<&str>) -> (&'static str, &'static str) {
    match (language, region) {
        ("de" | "fr" | "it", Some("CH")) => ("\u{2019}", "."),
        ("es", Some("MX" | "US")) | ("pt", Some("MO")) => (",", "."),
        (
            "de" | "es" | "it" | "nl" | "pt" | "id" | "tr" | "da" | "el" | "ro" | "hr" | "sl"
            | "sr",
            _,
        ) => (".", ","),
        (
            "fr" | "ru" | "pl" | "sv" | "fi" | "nb" | "no" | "cs" | "sk" | "uk" | "hu" | "bg"
            | "lt" | "lv" | "et",
            _,
        ) => ("\u{a0}", ","),
        _ => (",", "."),
    }
}

/// `format_number(decimals)`: a number with the locale's digit grouping and decimal mark; `decimals` (0-10)
/// defaults to 0 for whole numbers and 2 otherwise.
fn format_number(state: &State, value: Value, decimals: Option<u32>) -> Result<String, Error> {
    let number = match value.as_str() {
        Some(text) => text
            .trim()
            .parse::<f64>()
            .map_err(|_| invalid(format!("format_number: `{text}` is not a number")))?,
        None => f64::try_from(value).map_err(|_| invalid("format_number needs a number"))?,
    };
    if !number.is_finite() {
        return Err(invalid("format_number needs a finite number"));
    }
    let decimals = decimals.unwrap_or(if number.fract() == 0.0 { 0 } else { 2 });
    if decimals > 10 {
        return Err(invalid("format_number: at most 10 decimals"));
    }
    let (language, region) = locale_parts(state);
    let (group, mark) = separators(&language, region.as_deref());
    let fixed = format!("{:.*}", decimals as usize, number.abs());
    let (whole, fraction) = fixed.split_once('.').unwrap_or((&fixed, ""));
    let mut out = String::new();
    if number < 0.0 && fixed.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.push('-');
    }
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push_str(group);
        }
        out.push(digit);
    }
    if !fraction.is_empty() {
        out.push_str(mark);
        out.push_str(fraction);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use minijinja::{Environment, context};

    fn render(template: &str, locale: &str, timezone: Option<&str>) -> String {
        let mut env = Environment::new();
        super::register(&mut env);
        env.render_str(
            template,
            context! { locale => locale, recipient => context! { timezone => timezone } },
        )
        .unwrap()
    }

    #[test]
    fn numbers_follow_the_locale() {
        let t = "{{ 1234567.891 | format_number(2) }}";
        assert_eq!(render(t, "en", None), "1,234,567.89");
        assert_eq!(render(t, "pt-BR", None), "1.234.567,89");
        assert_eq!(render(t, "fr", None), "1\u{a0}234\u{a0}567,89");
        assert_eq!(render(t, "de-CH", None), "1\u{2019}234\u{2019}567.89");
        assert_eq!(render("{{ 42 | format_number }}", "de", None), "42");
        assert_eq!(render("{{ -0.5 | format_number }}", "en", None), "-0.50");
        assert_eq!(render("{{ '1000' | format_number }}", "xx", None), "1,000");
    }

    #[test]
    fn dates_follow_the_locale_and_the_recipients_zone() {
        let t = "{{ '2026-03-08T13:30:00Z' | format_date('long') }}";
        assert_eq!(render(t, "en", None), "March 8, 2026");
        assert_eq!(render(t, "pt-BR", None), "8 de março de 2026");
        assert_eq!(render(t, "de", None), "8. März 2026");
        // 01:30 on the 9th in Tokyo.
        let late = "{{ '2026-03-08T16:30:00Z' | format_date('%-d %B %H:%M') }}";
        assert_eq!(render(late, "fr", Some("Asia/Tokyo")), "9 mars 01:30");
        assert_eq!(
            render("{{ 0 | format_date('%Y-%m-%d') }}", "en", None),
            "1970-01-01"
        );
    }

    #[test]
    fn bad_dates_and_patterns_are_errors_not_panics() {
        let mut env = Environment::new();
        super::register(&mut env);
        for template in [
            "{{ 'yesterday' | format_date }}",
            "{{ '2026-03-08T13:30:00Z' | format_date('%Q') }}",
            "{{ [] | format_date }}",
            "{{ 'x' | format_number }}",
            "{{ 1 | format_number(99) }}",
        ] {
            assert!(env.render_str(template, context! {}).is_err(), "{template}");
        }
    }
}
