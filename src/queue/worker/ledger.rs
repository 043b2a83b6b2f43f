//! The ledger: what this worker process knows it holds, so the database's view can be checked against it.
//!
//! The invariant the queue keeps: **a job leased to a worker is a job that worker is running or will run.** Two
//! things can break it behind the worker's back:
//! 1. a claim the worker gave up on that commits anyway (the server deadline is shorter than the worker's, see
//!    `lease::SERVER_DEADLINE`, so this needs a network stall, but nothing else prevents it);
//! 2. a claim that committed whose answer was lost (a crash or a dropped connection right after the commit).
//!
//! Either way the database holds a lease for a worker that does not know of it, and the rescuer leaves it alone
//! because that worker heartbeats. Reconciliation closes both doors: every few seconds the worker lists the
//! leases the database says it holds ([`lease::leases_of`](crate::queue::lease::leases_of)) and gives back the
//! ones it does not (by lease token, so nothing it does hold is touched).
//!
//! The rules that make the comparison safe, with no window for a false orphan:
//! * a claim's token is entered *before* the claim is sent (tokens are made by the worker), and replaced by the
//!   jobs it returned when the answer arrives; a claim that failed or timed out leaves the ledger, so any rows it
//!   leased anyway are orphans;
//! * a job leaves the ledger only after the statement that ends its lease (settle or release) has answered, so
//!   the database can never show a lease the ledger has just forgotten but the worker still runs;
//! * the ledger is read *after* the database, so a claim answered in between is already in it.
//!
//! Cost: one short lock per claim batch, per started-and-settled ack batch; the ledger holds at most the jobs the
//! process has claimed and not settled (bounded by each queue's `concurrency + batch_size`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::queue::lease::ClaimedJob;
use crate::queue::types::JobId;

#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// Tokens of claims sent and not answered yet.
    claiming: HashSet<i64>,
    /// Jobs claimed and not yet settled or released, with their lease token.
    held: HashMap<JobId, i64>,
}

impl Ledger {
    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that matters (each
        // operation is a few inserts or removes), so a poisoned lock is used as is.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A claim under `token` is about to be sent.
    pub fn claim_sent(&self, token: i64) {
        self.entries().claiming.insert(token);
    }

    /// The claim under `token` answered with `jobs`.
    pub fn claim_answered(&self, token: i64, jobs: &[ClaimedJob]) {
        let mut entries = self.entries();
        entries.claiming.remove(&token);
        entries
            .held
            .extend(jobs.iter().map(|job| (job.id, job.lease_token)));
    }

    /// The claim under `token` failed or timed out: whatever it leased, if it committed, is an orphan.
    pub fn claim_abandoned(&self, token: i64) {
        self.entries().claiming.remove(&token);
    }

    /// These leases have ended (their settle or release statement answered). A job re-claimed since under a new
    /// token stays.
    pub fn forget(&self, jobs: impl IntoIterator<Item = (JobId, i64)>) {
        let mut entries = self.entries();
        for (id, token) in jobs {
            if entries.held.get(&id) == Some(&token) {
                entries.held.remove(&id);
            }
        }
    }

    /// Of the leases the database says this worker holds, those it does not: not held, and not from a claim
    /// still waiting for its answer.
    pub fn orphans(&self, leased: Vec<(JobId, i64)>) -> Vec<(JobId, i64)> {
        let entries = self.entries();
        leased
            .into_iter()
            .filter(|(id, token)| {
                !entries.claiming.contains(token) && entries.held.get(id) != Some(token)
            })
            .collect()
    }

    /// How many jobs the process holds (claimed, not settled).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.entries().held.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::queue::QueueName;

    fn claimed(id: JobId, token: i64) -> ClaimedJob {
        ClaimedJob {
            id,
            queue: QueueName::parse("q").unwrap(),
            kind: "k".into(),
            payload: serde_json::json!({}),
            priority: 0,
            attempt: 1,
            max_attempts: 1,
            timeout: Duration::from_secs(1),
            lease_token: token,
            run_at: chrono::Utc::now(),
            created_at: chrono::Utc::now(),
            start_by: Instant::now(),
            trace_parent: None,
        }
    }

    #[test]
    fn a_claim_in_flight_is_not_an_orphan_but_an_abandoned_one_is() {
        let ledger = Ledger::default();
        ledger.claim_sent(7);
        assert!(ledger.orphans(vec![(1, 7), (2, 7)]).is_empty());
        ledger.claim_abandoned(7);
        assert_eq!(ledger.orphans(vec![(1, 7), (2, 7)]), vec![(1, 7), (2, 7)]);
    }

    #[test]
    fn held_jobs_are_not_orphans_until_forgotten_and_only_their_own_token_counts() {
        let ledger = Ledger::default();
        ledger.claim_sent(7);
        ledger.claim_answered(7, &[claimed(1, 7), claimed(2, 7)]);
        assert!(ledger.orphans(vec![(1, 7), (2, 7)]).is_empty());
        // The same job under another token (an earlier, lost claim) is an orphan.
        assert_eq!(ledger.orphans(vec![(1, 3)]), vec![(1, 3)]);
        ledger.forget([(1, 7)]);
        assert_eq!(ledger.orphans(vec![(1, 7), (2, 7)]), vec![(1, 7)]);
        assert_eq!(ledger.held(), 1);
    }

    #[test]
    fn forgetting_a_stale_token_keeps_the_job_reclaimed_since() {
        let ledger = Ledger::default();
        ledger.claim_answered(7, &[claimed(1, 7)]);
        ledger.claim_answered(9, &[claimed(1, 9)]);
        ledger.forget([(1, 7)]); // a late ack of the first lease
        assert_eq!(ledger.held(), 1);
        assert!(ledger.orphans(vec![(1, 9)]).is_empty());
    }
}
