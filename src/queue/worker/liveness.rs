//! Liveness: until when this worker's leases are certainly still its own, as its heartbeats prove.
//!
//! The rescuer takes a lease only when its term has passed *and* its worker's newest heartbeat is older than one
//! lease (`sql::RESCUE`). So a job whose term has passed before it could start (it waited in a busy worker's
//! buffer, or the worker was frozen) may still be started safely, as long as the worker's heartbeats have had no
//! gap long enough for a rescue since that term ended. Starting it then is right: giving back jobs a live worker
//! still holds would make a slow queue churn (claim, give back, claim again) exactly when it is busiest.
//!
//! The proof, on this process's monotonic clock: a heartbeat sent at `s` and answered is committed with a time no
//! earlier than `s`, so once its answer is in, no rescue can happen before `s + lease` (this module counts a
//! tenth of the lease less, for the database's clock running faster than this one). Consecutive heartbeats
//! whose guarantees overlap form an unbroken chain; [`Liveness::may_start`] asks whether the chain covers
//! everything from the job's term to now. (A pause the monotonic clock does not see, such as some hypervisors'
//! VM pauses, escapes this check; the worker's late acks are then rejected by their token, so completion is still
//! exactly once.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Liveness {
    lease: Duration,
    chain: Mutex<Chain>,
}

struct Chain {
    /// When the current unbroken chain of heartbeats began (`None` before the first answered heartbeat).
    since: Option<Instant>,
    /// No rescue is possible before this instant.
    until: Instant,
}

impl Liveness {
    pub fn new(lease: Duration) -> Self {
        Self {
            lease,
            chain: Mutex::new(Chain {
                since: None,
                until: Instant::now(),
            }),
        }
    }

    /// A heartbeat sent at `sent` has been answered (committed).
    pub fn heartbeat_answered(&self, sent: Instant) {
        let answered = Instant::now();
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let covered = sent + self.lease - self.lease / 10;
        if chain.since.is_some() && answered <= chain.until {
            chain.until = chain.until.max(covered);
        } else {
            // A gap: between the old guarantee's end and this answer a rescue was possible.
            chain.since = Some(answered);
            chain.until = covered;
        }
    }

    /// Whether a job whose lease term ends at `term_ends` may start now: its term has not passed, or the
    /// heartbeats have been unbroken since it passed, so no rescuer can have taken it.
    pub fn may_start(&self, term_ends: Instant) -> bool {
        let now = Instant::now();
        if now < term_ends {
            return true; // the common case, without the lock
        }
        let chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        chain.since.is_some_and(|since| since <= term_ends) && now < chain.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    #[test]
    fn a_job_within_its_term_may_always_start() {
        let liveness = Liveness::new(LEASE);
        assert!(liveness.may_start(Instant::now() + Duration::from_secs(1)));
    }

    #[test]
    fn past_its_term_a_job_may_start_only_under_an_unbroken_chain_of_heartbeats() {
        let liveness = Liveness::new(LEASE);
        let past = Instant::now() - Duration::from_millis(1);
        assert!(!liveness.may_start(past), "no heartbeat yet: no proof");

        let term = Instant::now() + Duration::from_millis(5);
        liveness.heartbeat_answered(Instant::now());
        std::thread::sleep(Duration::from_millis(10));
        liveness.heartbeat_answered(Instant::now());
        assert!(
            liveness.may_start(term),
            "the chain began before the term ended"
        );
    }

    #[test]
    fn a_gap_in_the_heartbeats_breaks_the_chain() {
        let liveness = Liveness::new(Duration::from_millis(20));
        liveness.heartbeat_answered(Instant::now());
        let term = Instant::now() + Duration::from_millis(1);
        assert!(liveness.may_start(term));
        std::thread::sleep(Duration::from_millis(40)); // longer than the lease: a rescue was possible
        liveness.heartbeat_answered(Instant::now());
        assert!(!liveness.may_start(term));
    }
}
