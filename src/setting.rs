//! What every module's settings section is made of: the error a bad value gives, and typed durations.
//!
//! Each module owns its section (`queue::WorkerSettings`, `api::ApiSettings`, …) and its `validate()`, returning
//! [`InvalidSetting`] that names the key; `config` only layers the files and the environment and calls them. This
//! module imports nothing of herald's, so every module can use it without an import cycle.
//!
//! Durations keep their historic keys (`lease_secs`, `poll_interval_ms`) so existing files and `HERALD_*`
//! variables keep working, but are read as [`Duration`]: a bare number is in the key's unit, and a string is a
//! humantime duration in any unit (`lease_secs = "1m"`, `HERALD_WORKER__POLL_INTERVAL_MS=250ms`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A setting whose value is not allowed, named by its key (`worker.heartbeat_secs`).
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {reason}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub reason: String,
}

impl InvalidSetting {
    pub fn new(key: &'static str, reason: impl Into<String>) -> Self {
        Self {
            key,
            reason: reason.into(),
        }
    }
}

/// Refuses a zero duration (an interval or a timeout of zero would spin or never wait).
pub fn positive(key: &'static str, value: Duration) -> Result<(), InvalidSetting> {
    if value.is_zero() {
        return Err(InvalidSetting::new(key, "must be greater than zero"));
    }
    Ok(())
}

/// A duration written as a number in `unit` (`from_count` makes a whole one a `Duration`), or as a humantime
/// string.
fn duration<'de, D: Deserializer<'de>>(
    deserializer: D,
    unit: Duration,
    from_count: fn(u64) -> Duration,
) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Whole(u64),
        Fraction(f64),
        Text(String),
    }
    use serde::de::Error;
    match Written::deserialize(deserializer)? {
        Written::Whole(count) => Ok(from_count(count)),
        Written::Fraction(count) if count.is_finite() && count >= 0.0 => {
            Duration::try_from_secs_f64(count * unit.as_secs_f64()).map_err(D::Error::custom)
        }
        Written::Fraction(count) => Err(D::Error::custom(format!(
            "`{count}` is not a duration (a number, zero or more, or a string such as \"30s\")"
        ))),
        Written::Text(text) => humantime::parse_duration(text.trim()).map_err(|e| {
            D::Error::custom(format!(
                "`{text}` is not a duration ({e}); write a number or a string such as \"30s\" or \"250ms\""
            ))
        }),
    }
}

/// For `*_secs` keys: `30` is 30 seconds; `"1m"` and `0.5` work too.
pub fn secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration(deserializer, Duration::from_secs(1), Duration::from_secs)
}

/// For `*_ms` keys: `250` is 250 milliseconds; `"2s"` works too.
pub fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration(
        deserializer,
        Duration::from_millis(1),
        Duration::from_millis,
    )
}

/// For `*_days` keys: `180` is 180 days; `"12h"` and `"180 days"` work too.
pub fn days<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    const DAY: Duration = Duration::from_secs(86_400);
    duration(deserializer, DAY, |count| {
        DAY.checked_mul(u32::try_from(count).unwrap_or(u32::MAX))
            .unwrap_or(Duration::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Both {
        #[serde(deserialize_with = "secs")]
        a_secs: Duration,
        #[serde(deserialize_with = "millis")]
        b_ms: Duration,
    }

    fn parse(text: &str) -> Result<Both, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_are_in_the_keys_unit_and_strings_in_any() {
        let both = parse(r#"{"a_secs": 30, "b_ms": 250}"#).unwrap();
        assert_eq!(both.a_secs, Duration::from_secs(30));
        assert_eq!(both.b_ms, Duration::from_millis(250));
        let both = parse(r#"{"a_secs": "1m", "b_ms": "2s"}"#).unwrap();
        assert_eq!(both.a_secs, Duration::from_secs(60));
        assert_eq!(both.b_ms, Duration::from_secs(2));
        let both = parse(r#"{"a_secs": 5000000000, "b_ms": 5000000000}"#).unwrap();
        assert_eq!(both.a_secs, Duration::from_secs(5_000_000_000));
        assert_eq!(both.b_ms, Duration::from_millis(5_000_000_000));
        let both = parse(r#"{"a_secs": 0.5, "b_ms": 0}"#).unwrap();
        assert_eq!(both.a_secs, Duration::from_millis(500));
        assert_eq!(both.b_ms, Duration::ZERO);
    }

    #[test]
    fn days_are_days_unless_written_otherwise() {
        #[derive(Debug, Deserialize)]
        struct Age {
            #[serde(deserialize_with = "days")]
            age_days: Duration,
        }
        let age = |text: &str| serde_json::from_str::<Age>(text).map(|a| a.age_days);
        assert_eq!(
            age(r#"{"age_days": 7}"#).unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            age(r#"{"age_days": "180 days"}"#).unwrap(),
            Duration::from_secs(180 * 86_400)
        );
        assert_eq!(
            age(r#"{"age_days": "10m"}"#).unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(
            age(r#"{"age_days": 0.5}"#).unwrap(),
            Duration::from_secs(43_200)
        );
    }

    #[test]
    fn nonsense_is_refused_with_the_value() {
        let error = parse(r#"{"a_secs": "soon", "b_ms": 1}"#).unwrap_err();
        assert!(error.contains("soon"), "{error}");
        assert!(parse(r#"{"a_secs": -1.0, "b_ms": 1}"#).is_err());
        assert!(parse(r#"{"a_secs": 1, "b_ms": -5}"#).is_err());
    }
}
