//! Workflow test harness: a fresh database, the real engine with an in-process recording channel, and a real
//! worker serving the workflow queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::channels::{Channel, Channels, Message, SendError, SendFuture, Sent};
use herald::queue::HandlerRegistry;
use herald::workflow::{Engine, EventReceipt, NewEvent, RunStatus, RunView, Started};
use serde_json::Value;

use super::{RunningWorker, TestDb, options, settings, wait_until};

/// How the recording channel answers a recipient.
#[allow(dead_code)] // only some binaries make the recorder fail
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Fail permanently (a rejected address).
    Reject,
    /// Fail transiently this many times, then accept.
    FailTimes(usize),
}

/// An in-process channel that records every message it accepts.
#[derive(Default)]
pub struct Recorder {
    pub sent: Mutex<Vec<Message>>,
    behaviours: Mutex<HashMap<String, Behaviour>>,
}

#[allow(dead_code)] // only some binaries read what the recorder got
impl Recorder {
    pub fn behave(&self, to: &str, behaviour: Behaviour) {
        self.behaviours
            .lock()
            .unwrap()
            .insert(to.to_string(), behaviour);
    }

    pub fn messages(&self) -> Vec<Message> {
        self.sent.lock().unwrap().clone()
    }

    /// Messages sent to `to`.
    pub fn to(&self, to: &str) -> Vec<Message> {
        self.messages().into_iter().filter(|m| m.to == to).collect()
    }
}

impl Channel for Recorder {
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(async move { self.record(message).into() })
    }
}

impl Recorder {
    fn record(&self, message: &Message) -> Result<Sent, SendError> {
        let behaviour = self.behaviours.lock().unwrap().get(&message.to).cloned();
        match behaviour {
            Some(Behaviour::Reject) => {
                return Err(SendError::Permanent(format!("{} rejected", message.to)));
            }
            Some(Behaviour::FailTimes(n)) if n > 0 => {
                self.behave(&message.to, Behaviour::FailTimes(n - 1));
                return Err(SendError::Transient {
                    message: "provider unavailable".into(),
                    retry_after: None,
                });
            }
            _ => {}
        }
        self.sent.lock().unwrap().push(message.clone());
        Ok(Sent {
            provider: "recorder".into(),
            provider_message_id: Some(message.idempotency_key.clone()),
        })
    }
}

pub struct Flow {
    pub db: TestDb,
    pub engine: Arc<Engine>,
    #[allow(dead_code)] // flows sending through real providers leave it empty
    pub recorder: Arc<Recorder>,
    worker: Option<RunningWorker>,
}

#[allow(dead_code)] // each binary drives flows its own way
impl Flow {
    /// A database with `definitions` (YAML texts) stored, and a worker running.
    pub async fn start(definitions: &[&str]) -> Self {
        let flow = Self::without_worker(definitions).await;
        flow.with_worker()
    }

    pub async fn without_worker(definitions: &[&str]) -> Self {
        let recorder = Arc::new(Recorder::default());
        let channels = Channels::uniform(recorder.clone());
        Self::with_channels(definitions, &settings(), |_| channels, recorder).await
    }

    /// A flow whose engine sends through the channels `build` makes from the settings and the database (the
    /// real provider chains, for `channels.sink = "providers"`). No worker yet.
    pub async fn with_providers(definitions: &[&str], settings: &herald::config::Settings) -> Self {
        let recorder = Arc::new(Recorder::default());
        Self::with_channels(
            definitions,
            settings,
            |pool| herald::app::channels(settings, pool).expect("providers build"),
            recorder,
        )
        .await
    }

    async fn with_channels(
        definitions: &[&str],
        settings: &herald::config::Settings,
        build: impl FnOnce(&sqlx::PgPool) -> Channels,
        recorder: Arc<Recorder>,
    ) -> Self {
        super::init_test_logging();
        let db = TestDb::new().await;
        let channels = build(&db.pool);
        let engine = herald::app::App::with_channels(settings.clone(), db.pool.clone(), channels)
            .expect("engine")
            .engine;
        let flow = Self {
            db,
            engine,
            recorder,
            worker: None,
        };
        for definition in definitions {
            flow.save(definition).await;
        }
        flow
    }

    pub fn with_worker(mut self) -> Self {
        let registry = herald::app::worker_registry(HandlerRegistry::new(), self.engine.clone());
        self.worker = Some(RunningWorker::start(
            &self.db.pool,
            options(&[("workflows", 16)]),
            registry,
        ));
        self
    }

    pub async fn save(&self, yaml: &str) {
        let value = herald::workflow::definition::parse_text("test.yaml", yaml).expect("yaml");
        self.engine
            .catalog
            .save(&herald::audit::Actor::cli(), "test.yaml", &value)
            .await
            .expect("valid definition");
    }

    pub async fn trigger(&self, workflow: &str, data: Value) -> i64 {
        match self
            .engine
            .start_run(workflow, data, None, None)
            .await
            .expect("start run")
        {
            Started::Created { id, .. } => id,
            Started::Existing { id, .. } => panic!("run {id} already existed"),
        }
    }

    pub async fn event(&self, name: &str, key: &str, id: &str) -> EventReceipt {
        let event = NewEvent {
            id: Some(id.to_string()),
            name: name.to_string(),
            key: key.to_string(),
            payload: serde_json::json!({ "event": id }),
        };
        self.engine.ingest_event(event).await.expect("event")
    }

    pub async fn run(&self, id: i64) -> RunView {
        self.engine.get_run(id).await.expect("run")
    }

    /// Waits (polling, 20 s deadline) until the run reaches `status`, and returns it.
    pub async fn finished(&self, id: i64, status: &str) -> RunView {
        wait_until(
            Duration::from_secs(20),
            &format!("run {id} {status}"),
            || async {
                let run = self.run(id).await;
                assert!(
                    run.status == RunStatus::Running || run.status.as_str() == status,
                    "run {id} ended {} instead of {status}: {run:#?}",
                    run.status
                );
                run.status.as_str() == status
            },
        )
        .await;
        self.run(id).await
    }

    /// Waits until the run's step for `node` has `status`.
    pub async fn step_reaches(&self, id: i64, node: &str, status: &str) {
        wait_until(
            Duration::from_secs(20),
            &format!("run {id} node {node} {status}"),
            || async {
                self.run(id)
                    .await
                    .steps
                    .iter()
                    .any(|s| s.node == node && s.status.as_str() == status)
            },
        )
        .await;
    }

    /// Waits until no job is left in the queue (parked resume and timeout jobs included).
    pub async fn queue_drained(&self) {
        wait_until(Duration::from_secs(10), "every job consumed", || async {
            super::live_jobs(&self.db.pool).await == 0
        })
        .await;
    }

    /// Waits until no run is running.
    pub async fn all_runs_finished(&self, limit: Duration) {
        wait_until(limit, "every run finished", || async {
            super::scalar_i64(
                &self.db.pool,
                "SELECT count(*) FROM herald_runs WHERE status = 'running'",
            )
            .await
                == 0
        })
        .await;
    }

    /// A `herald worker` process serving the workflow queue with connections of its own, once it has registered
    /// (before this flow's own worker, if that starts after).
    pub async fn other_worker(&self) -> tokio::process::Child {
        let other = super::spawn_herald(&self.db.url, &["worker", "--queues", "workflows:16"]);
        wait_until(
            Duration::from_secs(30),
            "the other worker registered",
            || async {
                super::scalar_i64(&self.db.pool, "SELECT count(*) FROM herald_workers").await >= 1
            },
        )
        .await;
        other
    }

    /// Stops the worker (gracefully) and keeps the flow; [`with_worker`](Self::with_worker) starts another.
    pub async fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
    }

    pub async fn stop(self) {
        if let Some(worker) = self.worker {
            worker.stop().await;
        }
    }
}

/// The run's step for `node` (its first epoch's, if it ran in several).
#[allow(dead_code)] // only some binaries look at single steps
pub fn step<'a>(run: &'a RunView, node: &str) -> &'a herald::workflow::StepView {
    run.steps
        .iter()
        .find(|s| s.node == node)
        .unwrap_or_else(|| panic!("no step {node}: {run:#?}"))
}

/// The outcome of each step of a run, by node: the timeline as (node, status, outcome).
#[allow(dead_code)] // only some binaries compare whole timelines
pub fn timeline(run: &RunView) -> Vec<(String, String, Option<String>)> {
    run.steps
        .iter()
        .map(|s| (s.node.clone(), s.status.to_string(), s.outcome.clone()))
        .collect()
}

/// Reads an example definition from `jobs/`.
#[allow(dead_code)] // only some binaries run the examples in jobs/
pub fn example(file: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/").to_string() + file)
        .expect("example")
}
