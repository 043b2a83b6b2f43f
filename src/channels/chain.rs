//! Provider chains: how one send picks a provider, retries it, and falls back.
//!
//! For each provider in the channel's order (or the action's own order):
//! 1. its circuit must be closed (or this send is the half-open probe), else it is skipped;
//! 2. it must get a rate permit within `max_wait`, else it is skipped (or the send is re-scheduled);
//! 3. the call's [`Outcome`] decides:
//!    * `Sent`: done;
//!    * `Transient`: call the same provider again after a short pause, up to `attempts_per_provider` calls, then
//!      fall back;
//!    * `RateLimited`: pause the provider (or destination) for its retry-after; fall back, or re-schedule the send
//!      for the retry-after (`fallback_on_rate_limit`);
//!    * `Permanent`: stop. Never fall back: another provider would reject the same message, or reach a
//!      recipient who asked not to be reached;
//!    * `Config`: open the provider's circuit and fall back.
//!
//! When every provider has been skipped or failed, the send fails with the soonest time worth trying again.
//! If some provider failed, that is a transient failure: the node job's retries (with backoff) take over, and
//! its last failure dead-letters the node with every attempt's reason. If none failed (circuits open, no
//! permit, 429s), the send is `Unavailable`: the job is snoozed until then without spending an attempt, so an
//! outage or a rate limit delays messages but never dead-letters them. Every call is reported as an
//! [`Attempt`] for the run's timeline.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::{Duration, Instant};
use tracing::Instrument;

use tokio::sync::mpsc;

use super::breaker::{Admission, Breaker, Transition};
use super::limits::{FleetLimits, WaitTooLong};
use super::{
    Attempt, AttemptOutcome, Channel, ChannelKind, Message, Outcome, Provider, SendError,
    SendFuture, SendReport, Sent,
};

/// How chains retry, wait and fall back (from `[channels]`).
#[derive(Debug, Clone)]
pub struct ChainPolicy {
    pub attempts_per_provider: u32,
    pub retry_pause: Duration,
    pub max_wait: Duration,
    pub fallback_on_rate_limit: bool,
}

/// Called after every provider call with the provider, its outcome and the call's latency (metrics).
pub type CallObserver = Arc<dyn Fn(&str, &Outcome, Duration) + Send + Sync>;

/// Everything the chains of one process share: the adapters, their breakers and rate limits.
pub struct ProviderFleet {
    providers: HashMap<&'static str, Arc<dyn Provider>>,
    breakers: HashMap<&'static str, Breaker>,
    pub limits: FleetLimits,
    policy: ChainPolicy,
    transitions: Option<mpsc::UnboundedSender<Transition>>,
    observer: Option<CallObserver>,
}

impl ProviderFleet {
    pub fn new(
        providers: Vec<Arc<dyn Provider>>,
        limits: FleetLimits,
        policy: ChainPolicy,
        breaker_failures: u32,
        breaker_cooldown: Duration,
    ) -> Self {
        let breakers = providers
            .iter()
            .map(|p| {
                (
                    p.name(),
                    Breaker::new(p.name(), breaker_failures, breaker_cooldown),
                )
            })
            .collect();
        let providers = providers.into_iter().map(|p| (p.name(), p)).collect();
        Self {
            providers,
            breakers,
            limits,
            policy,
            transitions: None,
            observer: None,
        }
    }

    /// Circuit transitions go to this channel (the recorder writes them to the database and metrics).
    pub fn with_transitions(mut self, sender: mpsc::UnboundedSender<Transition>) -> Self {
        self.transitions = Some(sender);
        self
    }

    /// Called after every provider call with its outcome and latency (metrics).
    pub fn with_observer(mut self, observer: CallObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    fn report(&self, transition: Option<Transition>) {
        if let (Some(transition), Some(sender)) = (transition, &self.transitions) {
            let _ = sender.send(transition);
        }
    }
}

/// One channel's chain: sends through the fleet's providers in the configured order.
pub struct ProviderChain {
    kind: ChannelKind,
    order: Vec<&'static str>,
    fleet: Arc<ProviderFleet>,
}

impl ProviderChain {
    pub fn new(kind: ChannelKind, order: Vec<&'static str>, fleet: Arc<ProviderFleet>) -> Self {
        Self { kind, order, fleet }
    }

    /// The action's own provider order if it named one, else the channel's.
    fn order_for(&self, message: &Message) -> Vec<&'static str> {
        if message.providers.is_empty() {
            return self.order.clone();
        }
        message
            .providers
            .iter()
            .filter_map(|name| self.kind.provider(name))
            .collect()
    }

    async fn send_through_chain(&self, message: &Message) -> SendReport {
        let mut send = ChainSend {
            fleet: &self.fleet,
            message,
            deadline: Instant::now() + self.fleet.policy.max_wait,
            attempts: Vec::new(),
            retry_hint: None,
        };
        for name in self.order_for(message) {
            match send.try_provider(name).await {
                Step::Done(result) => return send.finish(result),
                Step::FallBack => {
                    super::metrics::FALLBACKS
                        .with_label_values(&[message.channel.as_str(), name])
                        .inc();
                }
            }
        }
        let reasons: Vec<String> = send
            .attempts
            .iter()
            .map(|a| {
                format!(
                    "{}: {}",
                    a.provider,
                    a.reason.as_deref().unwrap_or(a.outcome.as_str())
                )
            })
            .collect();
        let message = if reasons.is_empty() {
            format!("no {} provider is configured", self.kind.as_str())
        } else {
            format!("every provider failed ({})", reasons.join("; "))
        };
        let retry_after = send.retry_hint;
        // Only skips and rate limits: no provider failed, they just cannot take the message now.
        let waiting = send.attempts.iter().all(|a| {
            matches!(
                a.outcome,
                AttemptOutcome::Skipped | AttemptOutcome::RateLimited
            )
        });
        let error = if waiting && !send.attempts.is_empty() {
            SendError::Unavailable {
                message,
                retry_after,
            }
        } else {
            SendError::Transient {
                message,
                retry_after,
            }
        };
        send.finish(Err(error))
    }
}

impl Channel for ProviderChain {
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(self.send_through_chain(message))
    }
}

enum Step {
    Done(Result<Sent, SendError>),
    FallBack,
}

/// The state of one send through a chain.
struct ChainSend<'a> {
    fleet: &'a ProviderFleet,
    message: &'a Message,
    deadline: Instant,
    attempts: Vec<Attempt>,
    /// The soonest moment a skipped or rate-limited provider is worth trying again.
    retry_hint: Option<Duration>,
}

impl ChainSend<'_> {
    async fn try_provider(&mut self, name: &'static str) -> Step {
        let Some(provider) = self.fleet.providers.get(name).cloned() else {
            self.skip(name, "not configured in this process", None);
            return Step::FallBack;
        };
        let Some(breaker) = self.fleet.breakers.get(name) else {
            return Step::FallBack;
        };
        let destination = provider.destination_key(self.message);
        for call in 0..self.fleet.policy.attempts_per_provider.max(1) {
            let (admission, transition) = breaker.admit();
            self.fleet.report(transition);
            if let Admission::Rejected(wait) = admission {
                self.skip(name, "circuit open", Some(wait));
                return Step::FallBack;
            }
            let limits = &self.fleet.limits;
            let asked = Instant::now();
            let permit = limits
                .acquire(name, destination.as_deref(), self.deadline)
                .await;
            super::metrics::RATE_LIMIT_WAIT_SECONDS
                .with_label_values(&[name])
                .observe(asked.elapsed().as_secs_f64());
            if let Err(WaitTooLong(wait)) = permit {
                self.skip(name, "no rate permit in time", Some(wait));
                return self.rate_limited_step(wait);
            }
            let started = Instant::now();
            // In traces only (see `telemetry`): the attempt's span names the job in the logs already.
            let span = if crate::telemetry::exporting() {
                tracing::info_span!("provider_call", provider = name, attempt = call + 1)
            } else {
                tracing::Span::none()
            };
            let outcome = provider.send(self.message).instrument(span).await;
            self.record(name, &outcome, started.elapsed());
            match outcome {
                Outcome::Sent {
                    provider_message_id,
                } => {
                    self.fleet.report(breaker.record_success());
                    return Step::Done(Ok(Sent {
                        provider: name.to_string(),
                        provider_message_id,
                    }));
                }
                Outcome::Permanent { reason, suppress } => {
                    // The provider is healthy: it judged the message, not itself.
                    self.fleet.report(breaker.record_success());
                    let error = if suppress {
                        SendError::Suppress(format!("{name}: {reason}"))
                    } else {
                        SendError::Permanent(format!("{name}: {reason}"))
                    };
                    return Step::Done(Err(error));
                }
                Outcome::Config { reason } => {
                    tracing::error!(provider = name, %reason, "provider configuration error: circuit opened");
                    self.fleet.report(breaker.trip(&reason));
                    return Step::FallBack;
                }
                Outcome::RateLimited {
                    retry_after, scope, ..
                } => {
                    let destination = match scope {
                        super::RateScope::Provider => None,
                        super::RateScope::Destination => destination.as_deref(),
                    };
                    limits.penalize(name, destination, retry_after);
                    let wait = retry_after.unwrap_or(Duration::from_secs(1));
                    self.hint(wait);
                    return self.rate_limited_step(wait);
                }
                Outcome::Transient {
                    reason,
                    retry_after,
                } => {
                    self.fleet.report(breaker.record_failure(&reason));
                    let pause = retry_after
                        .unwrap_or(self.fleet.policy.retry_pause * 2u32.saturating_pow(call));
                    let last_call = call + 1 >= self.fleet.policy.attempts_per_provider;
                    if last_call || Instant::now() + pause > self.deadline {
                        if let Some(after) = retry_after {
                            self.hint(after);
                        }
                        return Step::FallBack;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
        Step::FallBack
    }

    /// A provider that cannot take the message for `wait`: fall back, or give up the send until then.
    fn rate_limited_step(&mut self, wait: Duration) -> Step {
        self.hint(wait);
        if self.fleet.policy.fallback_on_rate_limit {
            Step::FallBack
        } else {
            Step::Done(Err(SendError::Unavailable {
                message: "rate limited: re-scheduled for the provider's retry-after".into(),
                retry_after: Some(wait),
            }))
        }
    }

    fn hint(&mut self, wait: Duration) {
        self.retry_hint = Some(self.retry_hint.map_or(wait, |hint| hint.min(wait)));
    }

    fn skip(&mut self, provider: &str, reason: &str, wait: Option<Duration>) {
        if let Some(wait) = wait {
            self.hint(wait);
        }
        self.attempts.push(Attempt {
            provider: provider.to_string(),
            outcome: AttemptOutcome::Skipped,
            reason: Some(reason.to_string()),
            latency_ms: 0,
        });
    }

    fn record(&mut self, provider: &str, outcome: &Outcome, latency: Duration) {
        if let Some(observer) = &self.fleet.observer {
            observer(provider, outcome, latency);
        }
        self.attempts.push(Attempt {
            provider: provider.to_string(),
            outcome: outcome.attempt_outcome(),
            reason: outcome.reason().map(str::to_string),
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        });
    }

    fn finish(self, result: Result<Sent, SendError>) -> SendReport {
        SendReport {
            result,
            attempts: self.attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::Mutex;

    use super::*;
    use crate::channels::limits::ProviderRates;

    /// A provider that answers from a script and counts its calls (the chain's logic, without HTTP: each
    /// adapter's wire format has its own tests against fake servers).
    struct Scripted {
        name: &'static str,
        answers: Mutex<VecDeque<Outcome>>,
        calls: Mutex<u32>,
    }

    impl Scripted {
        fn new(name: &'static str, answers: Vec<Outcome>) -> Arc<Self> {
            Arc::new(Self {
                name,
                answers: Mutex::new(answers.into()),
                calls: Mutex::new(0),
            })
        }

        fn calls(&self) -> u32 {
            *self.calls.lock().unwrap()
        }
    }

    impl Provider for Scripted {
        fn name(&self) -> &'static str {
            self.name
        }

        fn send<'a>(
            &'a self,
            _message: &'a Message,
        ) -> crate::channels::provider::ProviderFuture<'a> {
            *self.calls.lock().unwrap() += 1;
            let answer = self.answers.lock().unwrap().pop_front();
            Box::pin(async move {
                answer.unwrap_or(Outcome::Sent {
                    provider_message_id: Some(format!("{}-id", self.name)),
                })
            })
        }
    }

    fn chain(providers: &[Arc<Scripted>], fallback_on_rate_limit: bool) -> ProviderChain {
        let policy = ChainPolicy {
            attempts_per_provider: 2,
            retry_pause: Duration::from_millis(1),
            max_wait: Duration::from_millis(200),
            fallback_on_rate_limit,
        };
        let adapters: Vec<Arc<dyn Provider>> = providers
            .iter()
            .map(|p| Arc::clone(p) as Arc<dyn Provider>)
            .collect();
        let rates = providers
            .iter()
            .map(|p| {
                (
                    p.name,
                    ProviderRates {
                        per_sec: None,
                        per_destination_per_sec: None,
                    },
                )
            })
            .collect();
        let fleet = ProviderFleet::new(
            adapters,
            FleetLimits::new(rates),
            policy,
            3,
            Duration::from_secs(60),
        );
        let order = providers.iter().map(|p| p.name).collect();
        ProviderChain::new(ChannelKind::Email, order, Arc::new(fleet))
    }

    fn message() -> Message {
        Message {
            channel: ChannelKind::Email,
            providers: Vec::new(),
            to: "ada@example.com".into(),
            content: BTreeMap::new(),
            idempotency_key: "run:1:1:email".into(),
        }
    }

    #[tokio::test]
    async fn a_transient_provider_is_retried_then_the_next_one_sends() {
        let first = Scripted::new(
            "sendgrid",
            vec![Outcome::transient("503"), Outcome::transient("503")],
        );
        let second = Scripted::new("ses", vec![]);
        let report = chain(&[first.clone(), second.clone()], true)
            .send(&message())
            .await;
        assert_eq!(report.result.unwrap().provider, "ses");
        assert_eq!((first.calls(), second.calls()), (2, 1));
        let outcomes: Vec<_> = report.attempts.iter().map(|a| a.outcome).collect();
        let (transient, sent) = (AttemptOutcome::Transient, AttemptOutcome::Sent);
        assert_eq!(outcomes, [transient, transient, sent]);
    }

    #[tokio::test]
    async fn a_permanent_answer_never_falls_back() {
        let first = Scripted::new("sendgrid", vec![Outcome::suppress("bounced")]);
        let second = Scripted::new("ses", vec![]);
        let report = chain(&[first.clone(), second.clone()], true)
            .send(&message())
            .await;
        assert_eq!(
            report.result,
            Err(SendError::Suppress("sendgrid: bounced".into()))
        );
        assert_eq!(second.calls(), 0, "the next provider is never tried");
    }

    #[tokio::test]
    async fn a_config_answer_opens_the_circuit_and_later_sends_skip_the_provider() {
        let first = Scripted::new("sendgrid", vec![Outcome::config("401 bad key")]);
        let second = Scripted::new("ses", vec![]);
        let chain = chain(&[first.clone(), second.clone()], true);
        let fallbacks = || {
            let channel = message().channel;
            crate::channels::metrics::FALLBACKS
                .with_label_values(&[channel.as_str(), "sendgrid"])
                .get()
        };
        let before = fallbacks();
        assert_eq!(chain.send(&message()).await.result.unwrap().provider, "ses");
        // Other tests of this binary may count too: at least this send's fallback.
        assert!(fallbacks() > before, "the fallback is counted");
        let report = chain.send(&message()).await;
        assert_eq!(report.result.unwrap().provider, "ses");
        assert_eq!(
            first.calls(),
            1,
            "the open circuit kept the second send away"
        );
        assert_eq!(report.attempts[0].outcome, AttemptOutcome::Skipped);
    }

    #[tokio::test]
    async fn a_rate_limit_reschedules_when_the_chain_does_not_fall_back_on_it() {
        let retry = Duration::from_secs(30);
        let first = Scripted::new("sendgrid", vec![Outcome::rate_limited(Some(retry), "429")]);
        let second = Scripted::new("ses", vec![]);
        let report = chain(&[first.clone(), second.clone()], false)
            .send(&message())
            .await;
        let Err(SendError::Unavailable { retry_after, .. }) = report.result else {
            panic!("re-scheduled, not sent: {:?}", report.result);
        };
        assert_eq!(retry_after, Some(retry));
        assert_eq!(second.calls(), 0);
    }

    #[tokio::test]
    async fn when_every_provider_fails_the_send_is_transient_with_every_reason() {
        let first = Scripted::new("sendgrid", vec![Outcome::transient("503"); 2]);
        let second = Scripted::new("ses", vec![Outcome::config("AccountSuspended")]);
        let report = chain(&[first, second], true).send(&message()).await;
        let Err(SendError::Transient { message, .. }) = report.result else {
            panic!("{:?}", report.result);
        };
        assert!(
            message.contains("sendgrid: 503") && message.contains("ses: AccountSuspended"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn when_every_circuit_is_open_the_send_waits_instead_of_failing() {
        let first = Scripted::new("sendgrid", vec![Outcome::config("401")]);
        let second = Scripted::new("ses", vec![Outcome::config("AccountSuspended")]);
        let chain = chain(&[first, second], true);
        let failed = chain.send(&message()).await;
        assert!(
            matches!(failed.result, Err(SendError::Transient { .. })),
            "{:?}",
            failed.result
        );
        let waiting = chain.send(&message()).await;
        let Err(SendError::Unavailable { retry_after, .. }) = waiting.result else {
            panic!("no provider was called: {:?}", waiting.result);
        };
        assert!(
            retry_after.is_some_and(|d| d > Duration::from_secs(50)),
            "until a circuit half-opens"
        );
    }
}
