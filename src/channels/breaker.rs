//! A circuit breaker per provider, per worker process.
//!
//! `consecutive failures >= threshold` (transient answers, timeouts) or one `Config` answer opens the circuit:
//! the chain skips the provider and falls back. After the cooldown the next send is let through as a probe
//! (half-open); its success closes the circuit, its failure opens it for another cooldown. Every transition is
//! reported to a listener (metrics and the `herald_provider_circuits` table), so operators see the state.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A provider's circuit in one worker process.
// Spelled as `herald_provider_circuits.state` stores it.
// sqlx declares this type by name (`text`): bind `as_str()`, since binding the enum itself costs a type lookup
// per connection.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub const ALL: [CircuitState; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The metric value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

/// A state change, for whoever records it.
#[derive(Debug, Clone)]
pub struct Transition {
    pub provider: &'static str,
    pub state: CircuitState,
    pub consecutive_failures: u32,
    /// How long the circuit stays open (for `Open`).
    pub open_for: Option<Duration>,
    pub last_error: Option<String>,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        failures: u32,
    },
    /// The probe is in flight; everyone else keeps falling back until it answers. A probe that never reports
    /// (rate-limited, or its job was cut short) is replaced after another cooldown, so the circuit cannot stick.
    HalfOpen {
        failures: u32,
        probe_started: Instant,
    },
}

/// Whether a send may use the provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Circuit open (or its probe in flight); it may be tried again after this long.
    Rejected(Duration),
}

pub struct Breaker {
    provider: &'static str,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(provider: &'static str, threshold: u32, cooldown: Duration) -> Self {
        Self {
            provider,
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    pub fn state(&self) -> CircuitState {
        match *self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Asks to send. After the cooldown, the first caller becomes the half-open probe.
    pub fn admit(&self) -> (Admission, Option<Transition>) {
        let mut state = self.lock();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => (Admission::Allowed, None),
            State::HalfOpen {
                failures,
                probe_started,
            } => {
                let probe_due = probe_started + self.cooldown;
                if now < probe_due {
                    return (Admission::Rejected(probe_due - now), None);
                }
                *state = State::HalfOpen {
                    failures,
                    probe_started: now,
                };
                (Admission::Allowed, None)
            }
            State::Open { until, failures } => {
                if now < until {
                    return (Admission::Rejected(until - now), None);
                }
                *state = State::HalfOpen {
                    failures,
                    probe_started: now,
                };
                let transition = self.transition(CircuitState::HalfOpen, failures, None);
                (Admission::Allowed, Some(transition))
            }
        }
    }

    /// The provider answered (sent, or a permanent answer about the message: the provider itself is healthy).
    pub fn record_success(&self) -> Option<Transition> {
        let mut state = self.lock();
        let was_closed = matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0 };
        (!was_closed).then(|| self.transition(CircuitState::Closed, 0, None))
    }

    /// A transient failure (5xx, timeout): counts towards opening; a failed probe reopens at once.
    pub fn record_failure(&self, error: &str) -> Option<Transition> {
        let mut state = self.lock();
        let failures = match *state {
            State::Closed { failures }
            | State::HalfOpen { failures, .. }
            | State::Open { failures, .. } => failures.saturating_add(1),
        };
        let reopen = matches!(*state, State::HalfOpen { .. }) || failures >= self.threshold;
        if reopen && !matches!(*state, State::Open { .. }) {
            *state = State::Open {
                until: Instant::now() + self.cooldown,
                failures,
            };
            return Some(self.transition(CircuitState::Open, failures, Some(error)));
        }
        if let State::Closed { failures: count } = &mut *state {
            *count = failures;
        }
        None
    }

    /// Our credentials or account are wrong: open at once (no point in sending more until an operator acts).
    pub fn trip(&self, error: &str) -> Option<Transition> {
        let mut state = self.lock();
        let failures = match *state {
            State::Closed { failures }
            | State::HalfOpen { failures, .. }
            | State::Open { failures, .. } => failures.saturating_add(1),
        };
        *state = State::Open {
            until: Instant::now() + self.cooldown,
            failures,
        };
        Some(self.transition(CircuitState::Open, failures, Some(error)))
    }

    fn transition(
        &self,
        state: CircuitState,
        consecutive_failures: u32,
        last_error: Option<&str>,
    ) -> Transition {
        Transition {
            provider: self.provider,
            state,
            consecutive_failures,
            open_for: (state == CircuitState::Open).then_some(self.cooldown),
            last_error: last_error.map(str::to_string),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written (every update is one assignment),
        // so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuit_states_are_spelled_as_the_circuits_table_stores_them() {
        for state in CircuitState::ALL {
            let json = serde_json::to_value(state).unwrap();
            assert_eq!(json, state.as_str());
            assert_eq!(serde_json::from_value::<CircuitState>(json).unwrap(), state);
            // sqlx writes (and reads) the same spelling.
            let mut sent = sqlx::postgres::PgArgumentBuffer::default();
            let _ = sqlx::Encode::<sqlx::Postgres>::encode_by_ref(&state, &mut sent);
            assert_eq!(&sent[..], state.as_str().as_bytes());
        }
        let quoted: Vec<String> = CircuitState::ALL
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let check = format!("CHECK (state IN ({}))", quoted.join(", "));
        let migration = include_str!("../../migrations/0004_channels.sql");
        let migration = migration.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(migration.contains(&check), "{check} not in the migration");
    }

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_cooldown() {
        let breaker = Breaker::new("sendgrid", 3, Duration::from_millis(50));
        assert!(breaker.record_failure("503").is_none());
        assert!(breaker.record_failure("503").is_none());
        assert_eq!(breaker.admit().0, Admission::Allowed);
        let opened = breaker.record_failure("503").expect("third failure opens");
        assert_eq!(opened.state, CircuitState::Open);
        assert!(matches!(breaker.admit().0, Admission::Rejected(_)));

        std::thread::sleep(Duration::from_millis(60));
        let (admission, transition) = breaker.admit();
        assert_eq!(
            admission,
            Admission::Allowed,
            "the first caller after the cooldown probes"
        );
        assert_eq!(transition.map(|t| t.state), Some(CircuitState::HalfOpen));
        assert!(
            matches!(breaker.admit().0, Admission::Rejected(_)),
            "only one probe at a time"
        );
        let closed = breaker.record_success().expect("a good probe closes");
        assert_eq!(closed.state, CircuitState::Closed);
        assert_eq!(breaker.admit().0, Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_reopens_and_config_trips_at_once() {
        let breaker = Breaker::new("twilio", 5, Duration::from_millis(20));
        assert_eq!(
            breaker.trip("401").map(|t| t.state),
            Some(CircuitState::Open)
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(breaker.admit().0, Admission::Allowed);
        assert_eq!(
            breaker.record_failure("timeout").map(|t| t.state),
            Some(CircuitState::Open)
        );
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_a_cooldown() {
        let breaker = Breaker::new("apns", 1, Duration::from_millis(20));
        breaker.trip("403");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            breaker.admit().0,
            Admission::Allowed,
            "the probe (then rate-limited: no verdict)"
        );
        assert!(matches!(breaker.admit().0, Admission::Rejected(_)));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            breaker.admit().0,
            Admission::Allowed,
            "a new probe, not a stuck circuit"
        );
    }

    #[test]
    fn a_success_resets_the_count_without_reporting_a_change() {
        let breaker = Breaker::new("slack", 2, Duration::from_secs(1));
        assert!(breaker.record_failure("500").is_none());
        assert!(
            breaker.record_success().is_none(),
            "closed stays closed: no transition"
        );
        assert!(
            breaker.record_failure("500").is_none(),
            "the count restarted"
        );
        assert_eq!(breaker.state(), CircuitState::Closed);
    }
}
