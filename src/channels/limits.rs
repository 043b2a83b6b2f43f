//! Fleet-wide rate limits per provider (and per destination where the provider limits each one).
//!
//! The configured rate is the whole fleet's. Postgres already knows the fleet: every worker process heartbeats
//! into `herald_workers`. Each process counts the live workers that serve the workflow queue and runs a local
//! governor limiter at `rate / live workers`; when the count changes, the limiters are rebuilt with the new
//! share. No permit ever crosses the network, so a send pays no database round trip for its permit; the price
//! is that an idle worker's share goes unused (a fleet where only some workers have work sends below the rate).
//!
//! A 429 pauses the provider (or the destination) for its `retry_after` and then halves the share for as long
//! again, so the fleet backs off instead of hitting the limit again at once.
//!
//! Waiting for a permit is bounded by a deadline well inside the job's lease: past it, the send gives up with
//! the wait it would have needed, and the job is re-scheduled for then.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A provider's configured fleet-wide rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProviderRates {
    pub per_sec: Option<f64>,
    pub per_destination_per_sec: Option<f64>,
}

/// One provider's limiters in this process, built for one fleet size.
struct Share {
    account: Option<DefaultDirectRateLimiter>,
    destinations: Option<DefaultKeyedRateLimiter<String>>,
}

/// A pause or slowdown after a 429.
#[derive(Debug, Clone, Copy)]
struct Penalty {
    paused_until: Instant,
    slowed_until: Instant,
}

pub struct FleetLimits {
    rates: HashMap<&'static str, ProviderRates>,
    workers: RwLock<u32>,
    shares: RwLock<HashMap<&'static str, Arc<Share>>>,
    /// Half-rate shares used while a provider is slowed down after a 429.
    slowed: RwLock<HashMap<&'static str, Arc<Share>>>,
    penalties: Mutex<HashMap<(String, Option<String>), Penalty>>,
}

/// The send may not go now; waiting would take at least this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTooLong(pub Duration);

impl FleetLimits {
    pub fn new(rates: HashMap<&'static str, ProviderRates>) -> Self {
        let limits = Self {
            rates,
            workers: RwLock::new(1),
            shares: RwLock::new(HashMap::new()),
            slowed: RwLock::new(HashMap::new()),
            penalties: Mutex::new(HashMap::new()),
        };
        limits.rebuild(1);
        limits
    }

    /// The live worker count this process divides the rates by.
    pub fn workers(&self) -> u32 {
        *read(&self.workers)
    }

    /// Re-divides the rates when the fleet changed size. Returns whether anything changed.
    pub fn set_workers(&self, live_workers: u32) -> bool {
        let live_workers = live_workers.max(1);
        if self.workers() == live_workers {
            return false;
        }
        self.rebuild(live_workers);
        true
    }

    fn rebuild(&self, live_workers: u32) {
        let divide = |factor: f64| -> HashMap<&'static str, Arc<Share>> {
            self.rates
                .iter()
                .map(|(provider, rates)| {
                    let share =
                        |rate: Option<f64>| rate.map(|r| r * factor / f64::from(live_workers));
                    let built = Share {
                        account: share(rates.per_sec).map(|r| RateLimiter::direct(quota(r))),
                        destinations: share(rates.per_destination_per_sec)
                            .map(|r| RateLimiter::keyed(quota(r))),
                    };
                    (*provider, Arc::new(built))
                })
                .collect()
        };
        *write(&self.shares) = divide(1.0);
        *write(&self.slowed) = divide(0.5);
        *write(&self.workers) = live_workers;
    }

    /// Waits for a permit to send through `provider` (to `destination`), until `deadline` at the latest.
    pub async fn acquire(
        &self,
        provider: &'static str,
        destination: Option<&str>,
        deadline: Instant,
    ) -> Result<(), WaitTooLong> {
        loop {
            let wait = self.wait_needed(provider, destination);
            if wait.is_zero() {
                return Ok(());
            }
            let now = Instant::now();
            if now + wait > deadline {
                return Err(WaitTooLong(wait));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Zero if a permit was taken now; otherwise how long until one could be.
    fn wait_needed(&self, provider: &'static str, destination: Option<&str>) -> Duration {
        let now = Instant::now();
        let mut slowed = false;
        for key in penalty_keys(provider, destination) {
            if let Some(penalty) = lock(&self.penalties).get(&key).copied() {
                if now < penalty.paused_until {
                    return penalty.paused_until - now;
                }
                slowed |= now < penalty.slowed_until;
            }
        }
        let shares = if slowed { &self.slowed } else { &self.shares };
        let Some(share) = read(shares).get(provider).cloned() else {
            return Duration::ZERO;
        };
        let clock = DefaultClock::default();
        if let Some(account) = &share.account
            && let Err(not_until) = account.check()
        {
            return not_until
                .wait_time_from(clock.now())
                .max(Duration::from_millis(1));
        }
        if let (Some(destinations), Some(destination)) = (&share.destinations, destination)
            && let Err(not_until) = destinations.check_key(&destination.to_string())
        {
            return not_until
                .wait_time_from(clock.now())
                .max(Duration::from_millis(1));
        }
        Duration::ZERO
    }

    /// The provider answered 429: pause for `retry_after` (default 1 s), then run at half share as long again.
    pub fn penalize(
        &self,
        provider: &str,
        destination: Option<&str>,
        retry_after: Option<Duration>,
    ) {
        let pause = retry_after.unwrap_or(Duration::from_secs(1));
        let now = Instant::now();
        let penalty = Penalty {
            paused_until: now + pause,
            slowed_until: now + pause * 2,
        };
        lock(&self.penalties).insert(
            (provider.to_string(), destination.map(str::to_string)),
            penalty,
        );
    }
}

fn penalty_keys(provider: &str, destination: Option<&str>) -> Vec<(String, Option<String>)> {
    let mut keys = vec![(provider.to_string(), None)];
    if let Some(destination) = destination {
        keys.push((provider.to_string(), Some(destination.to_string())));
    }
    keys
}

/// A quota of `rate` per second with a burst of two: permits are spread evenly, so a fleet's total stays at the
/// rate over any window of a few seconds. (A burst of one loses every millisecond a waiting sender wakes late;
/// two absorbs that without letting a process run ahead.)
fn quota(rate: f64) -> Quota {
    let rate = if rate.is_finite() && rate > 0.0 {
        rate
    } else {
        1e-3
    };
    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::MIN.saturating_add(1))
}

// The locks guard plain maps whose updates are single assignments, so a poisoned lock is still consistent.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_sec: Option<f64>, per_destination: Option<f64>) -> FleetLimits {
        FleetLimits::new(HashMap::from([(
            "slack",
            ProviderRates {
                per_sec,
                per_destination_per_sec: per_destination,
            },
        )]))
    }

    #[tokio::test]
    async fn a_permit_beyond_the_burst_is_refused_when_the_deadline_is_near() {
        let limits = limits(Some(2.0), None);
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(limits.acquire("slack", None, soon).await, Ok(()));
        assert_eq!(
            limits.acquire("slack", None, soon).await,
            Ok(()),
            "a burst of two"
        );
        let Err(WaitTooLong(wait)) = limits.acquire("slack", None, soon).await else {
            panic!("the third permit at 2/s needs ~500 ms");
        };
        assert!(wait > Duration::from_millis(400), "{wait:?}");
    }

    #[tokio::test]
    async fn the_share_is_the_rate_divided_by_live_workers() {
        let limits = limits(Some(10.0), None);
        assert!(limits.set_workers(2));
        assert!(!limits.set_workers(2), "same fleet: nothing to rebuild");
        let soon = Instant::now() + Duration::from_millis(10);
        limits.acquire("slack", None, soon).await.unwrap();
        limits.acquire("slack", None, soon).await.unwrap();
        let Err(WaitTooLong(wait)) = limits.acquire("slack", None, soon).await else {
            panic!("a 10/s rate over 2 workers is 5/s here");
        };
        assert!(wait > Duration::from_millis(150), "{wait:?}");
    }

    #[tokio::test]
    async fn destinations_are_limited_separately() {
        let limits = limits(None, Some(1.0));
        let soon = Instant::now() + Duration::from_millis(10);
        for _ in 0..2 {
            limits.acquire("slack", Some("alerts"), soon).await.unwrap();
        }
        limits.acquire("slack", Some("ops"), soon).await.unwrap();
        assert!(limits.acquire("slack", Some("alerts"), soon).await.is_err());
    }

    #[tokio::test]
    async fn a_429_pauses_the_provider_for_its_retry_after() {
        let limits = limits(None, None);
        limits.penalize("slack", None, Some(Duration::from_secs(3)));
        let soon = Instant::now() + Duration::from_millis(10);
        let Err(WaitTooLong(wait)) = limits.acquire("slack", Some("alerts"), soon).await else {
            panic!("paused");
        };
        assert!(wait > Duration::from_millis(2900), "{wait:?}");
        assert_eq!(
            limits.acquire("discord", None, soon).await,
            Ok(()),
            "other providers unaffected"
        );
    }
}
