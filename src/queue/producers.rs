//! What producers from outside (the HTTP API, the Kafka bridge's routes) may enqueue. herald's own jobs run with
//! herald's authority: a forged `herald.workflow.node` resume or timeout job ends a wait early, a
//! `herald.sleep` of a day on the workflows queue stalls every notification, `herald.log` writes whatever it is
//! given to the logs. So kinds under `herald.` and herald's own queues (the workflows queue, the clock's
//! maintenance queue) are refused (422), except the test kinds when `jobs.allow_test_kinds` is on (tests,
//! `herald up` on its private cluster).

/// Kinds whose handlers only exist for tests, benchmarks and the quick start: they do nothing useful and
/// nothing harmful beyond their own cost.
pub const TEST_KINDS: &[&str] = &["herald.noop", "herald.sleep", "herald.log"];

/// The prefix of herald's own kinds.
const RESERVED_PREFIX: &str = "herald.";

/// The rules a producer's jobs are checked against.
#[derive(Debug, Clone, Default)]
pub struct ProducerRules {
    /// Queues only herald enqueues into.
    pub reserved_queues: Vec<String>,
    /// Whether [`TEST_KINDS`] may be enqueued.
    pub allow_test_kinds: bool,
}

impl ProducerRules {
    pub fn check_queue(&self, queue: &str) -> Result<(), String> {
        if self.reserved_queues.iter().any(|q| q == queue) {
            return Err(format!(
                "queue `{queue}` carries herald's own jobs; enqueue into a queue of your own"
            ));
        }
        Ok(())
    }

    pub fn check_kind(&self, kind: &str) -> Result<(), String> {
        if !kind.starts_with(RESERVED_PREFIX) {
            return Ok(());
        }
        if self.allow_test_kinds && TEST_KINDS.contains(&kind) {
            return Ok(());
        }
        Err(format!(
            "kinds under `{RESERVED_PREFIX}` are herald's own; use a kind of your own"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_kinds_and_queues_are_refused_and_test_kinds_need_the_switch() {
        let mut rules = ProducerRules {
            reserved_queues: vec!["workflows".into(), "herald.maintenance".into()],
            allow_test_kinds: false,
        };
        assert!(rules.check_queue("workflows").is_err());
        assert!(rules.check_queue("emails").is_ok());
        for kind in [
            "herald.workflow.node",
            "herald.sleep",
            "herald.log",
            "herald.retention",
        ] {
            assert!(rules.check_kind(kind).is_err(), "{kind}");
        }
        assert!(rules.check_kind("billing.invoice").is_ok());
        rules.allow_test_kinds = true;
        assert!(rules.check_kind("herald.log").is_ok());
        assert!(rules.check_kind("herald.workflow.node").is_err());
    }
}
