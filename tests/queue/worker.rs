//! The worker runtime in-process against a real database: execution, retries and backoff, dead letters, panics,
//! timeouts, wakeups, scheduling, priorities, concurrency, pause, graceful shutdown and a hostile database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use chrono::{DateTime, Utc};
use herald::queue::{self, HandlerRegistry, JobContext, JobError, Priority, admin};
use serde_json::json;

/// One handler call as the handler saw it.
#[derive(Debug, Clone)]
struct Call {
    id: i64,
    attempt: i32,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    run_at: DateTime<Utc>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Call>>>);

impl Recorder {
    fn record(&self, ctx: &JobContext, started: DateTime<Utc>) {
        let call = Call {
            id: ctx.id,
            attempt: ctx.attempt,
            started,
            finished: Utc::now(),
            run_at: ctx.run_at,
        };
        self.0.lock().unwrap().push(call);
    }
    fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }
    fn for_job(&self, id: i64) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.id == id).collect()
    }
}

/// A registry whose kind `test` fails with `fail(ctx)` or succeeds, recording every call.
fn registry_with(
    recorder: &Recorder,
    behave: impl Fn(&JobContext) -> Result<(), JobError> + Send + Sync + 'static,
) -> HandlerRegistry {
    let mut registry = HandlerRegistry::new();
    let recorder = recorder.clone();
    let behave = Arc::new(behave);
    registry.register_raw("test", move |_payload, ctx| {
        let (recorder, behave) = (recorder.clone(), Arc::clone(&behave));
        async move {
            let started = Utc::now();
            let result = behave(&ctx);
            recorder.record(&ctx, started);
            result
        }
    });
    herald::queue::worker::builtin::register(&mut registry);
    registry
}

async fn wait_for_drain(db: &TestDb, limit: Duration) {
    wait_until(limit, "all jobs to leave the hot table", || async {
        live_jobs(&db.pool).await == 0
    })
    .await;
}

#[tokio::test]
async fn every_job_runs_and_completes_exactly_once() {
    let db = TestDb::new().await;
    let recorder = Recorder::default();
    let worker = RunningWorker::start(
        &db.pool,
        options(&[("q", 8)]),
        registry_with(&recorder, |_| Ok(())),
    );
    let ids = db
        .enqueue(
            (0..500)
                .map(|i| job("q", "test", json!({ "i": i })))
                .collect(),
        )
        .await;
    wait_for_drain(&db, Duration::from_secs(30)).await;
    worker.stop().await;

    let mut runs: HashMap<i64, usize> = HashMap::new();
    recorder
        .calls()
        .iter()
        .for_each(|c| *runs.entry(c.id).or_default() += 1);
    assert_eq!(runs.len(), ids.len());
    assert!(runs.values().all(|&n| n == 1), "no job ran twice");
    assert_eq!(completions(&db.pool).await, (500, 500));
    assert!(
        admin::list_workers(&db.pool).await.unwrap().is_empty(),
        "worker left the registry"
    );
}

#[tokio::test]
async fn retry_storm_completes_each_job_once_and_never_runs_an_attempt_early() {
    let db = TestDb::new().await;
    let recorder = Recorder::default();
    let registry = registry_with(&recorder, |ctx| {
        if ctx.attempt < 3 {
            Err(JobError::retry("flaky"))
        } else {
            Ok(())
        }
    });
    let worker = RunningWorker::start(&db.pool, options(&[("q", 16)]), registry);
    db.enqueue((0..200).map(|_| job("q", "test", json!({}))).collect())
        .await;
    wait_for_drain(&db, Duration::from_secs(60)).await;
    worker.stop().await;

    assert_eq!(completions(&db.pool).await, (200, 200));
    let calls = recorder.calls();
    assert_eq!(calls.len(), 600, "three attempts each");
    for call in &calls {
        assert!(
            call.started >= call.run_at,
            "attempt started before its run_at: {call:?}"
        );
    }
    // Backoff: base 50 ms with jitter 0.75..1.25, doubling per attempt.
    for id in calls
        .iter()
        .map(|c| c.id)
        .collect::<std::collections::HashSet<_>>()
    {
        let mut attempts = recorder.for_job(id);
        attempts.sort_by_key(|c| c.attempt);
        for pair in attempts.windows(2) {
            let waited = (pair[1].started - pair[0].finished).num_milliseconds();
            let minimum = (50.0 * 2f64.powi(pair[0].attempt - 1) * 0.75) as i64;
            assert!(
                waited >= minimum,
                "job {id} retried after {waited} ms, backoff minimum {minimum} ms"
            );
        }
    }
    let errors: serde_json::Value =
        sqlx::query_scalar("SELECT errors FROM herald_job_history LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        errors.as_array().unwrap().len(),
        2,
        "the two failures are kept"
    );
}

#[tokio::test]
async fn retry_after_is_honoured_exactly() {
    let db = TestDb::new().await;
    let recorder = Recorder::default();
    let registry = registry_with(&recorder, |ctx| {
        if ctx.attempt == 1 {
            Err(JobError::RetryAfter(
                Duration::from_millis(700),
                "slow down".into(),
            ))
        } else {
            Ok(())
        }
    });
    let worker = RunningWorker::start(&db.pool, options(&[("q", 2)]), registry);
    let id = db.enqueue(vec![job("q", "test", json!({}))]).await[0];
    wait_for_drain(&db, Duration::from_secs(10)).await;
    worker.stop().await;

    let calls = recorder.for_job(id);
    assert_eq!(calls.len(), 2);
    let scheduled_after = (calls[1].run_at - calls[0].finished).num_milliseconds();
    assert!(
        (700..760).contains(&scheduled_after),
        "second attempt due {scheduled_after} ms after the failure"
    );
    assert!(calls[1].started >= calls[1].run_at);
}

#[tokio::test]
async fn a_permanent_error_dead_letters_without_retrying() {
    let db = TestDb::new().await;
    let recorder = Recorder::default();
    let registry = registry_with(&recorder, |_| {
        Err(JobError::permanent("recipient does not exist"))
    });
    let worker = RunningWorker::start(&db.pool, options(&[("q", 2)]), registry);
    let id = db
        .enqueue(vec![job("q", "test", json!({"to": "nobody"}))])
        .await[0];
    wait_for_drain(&db, Duration::from_secs(10)).await;
    worker.stop().await;

    assert_eq!(recorder.for_job(id).len(), 1);
    let letter = &queue::dead_letters::list(&db.pool, &Default::default(), None, 1)
        .await
        .unwrap()[0];
    assert_eq!(
        (letter.job_id, letter.reason.as_str()),
        (id, "recipient does not exist")
    );
    assert_eq!(letter.payload, json!({"to": "nobody"}));
}

#[tokio::test]
async fn exhausted_attempts_dead_letter_with_the_error_of_every_attempt() {
    let db = TestDb::new().await;
    let recorder = Recorder::default();
    let registry = registry_with(&recorder, |ctx| {
        Err(JobError::retry(format!("failure {}", ctx.attempt)))
    });
    let worker = RunningWorker::start(&db.pool, options(&[("q", 2)]), registry);
    db.enqueue(vec![job("q", "test", json!({})).max_attempts(3)])
        .await;
    wait_for_drain(&db, Duration::from_secs(10)).await;
    worker.stop().await;

    let letter = &queue::dead_letters::list(&db.pool, &Default::default(), None, 1)
        .await
        .unwrap()[0];
    let messages: Vec<&str> = letter
        .errors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, vec!["failure 1", "failure 2", "failure 3"]);
    assert_eq!(letter.attempt, 3);
}

#[tokio::test]
async fn a_panic_and_a_timeout_count_as_retryable_failures() {
    let db = TestDb::new().await;
    let mut registry = HandlerRegistry::new();
    registry.register_raw("panics", |_, ctx: JobContext| async move {
        if ctx.attempt == 1 {
            panic!("handler bug");
        }
        Ok(())
    });
    registry.register_raw("hangs", |_, ctx: JobContext| async move {
        if ctx.attempt == 1 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Ok(())
    });
    let worker = RunningWorker::start(&db.pool, options(&[("q", 4)]), registry);
    let ids = db
        .enqueue(vec![
            job("q", "panics", json!({})),
            job("q", "hangs", json!({})).timeout(Duration::from_millis(300)),
        ])
        .await;
    wait_for_drain(&db, Duration::from_secs(15)).await;
    worker.stop().await;

    for (id, kind) in [(ids[0], "panic"), (ids[1], "timeout")] {
        let view = admin::find_job(&db.pool, id).await.unwrap().unwrap();
        assert_eq!((view.state.as_str(), view.attempt), ("completed", 2));
        assert_eq!(view.errors[0]["kind"], kind);
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Greeting {
    name: String,
}
impl herald::queue::Job for Greeting {
    const KIND: &'static str = "greeting";
}

#[tokio::test]
async fn typed_jobs_decode_and_an_undecodable_payload_is_dead_lettered() {
    let db = TestDb::new().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut registry = HandlerRegistry::new();
    let sink = Arc::clone(&seen);
    registry.register(move |greeting: Greeting, _| {
        let sink = Arc::clone(&sink);
        async move {
            sink.lock().unwrap().push(greeting.name);
            Ok(())
        }
    });
    let worker = RunningWorker::start(&db.pool, options(&[("q", 2)]), registry);
    let good = herald::queue::NewJob::typed(queue("q"), &Greeting { name: "ada".into() }).unwrap();
    db.enqueue(vec![
        good,
        job("q", "greeting", json!({"nom": 1})),
        job("q", "unknown-kind", json!({})),
    ])
    .await;
    wait_for_drain(&db, Duration::from_secs(10)).await;
    worker.stop().await;

    assert_eq!(*seen.lock().unwrap(), vec!["ada".to_string()]);
    let letters = queue::dead_letters::list(&db.pool, &Default::default(), None, 10)
        .await
        .unwrap();
    let mut kinds: Vec<&str> = letters
        .iter()
        .map(|l| l.errors[0]["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(kinds, vec!["no_handler", "permanent"]);
}

#[tokio::test]
async fn an_idle_worker_is_woken_by_notify_not_by_polling() {
    let db = TestDb::new().await;
    let recorder = Recorder::default();
    let mut opts = options(&[("q", 2)]);
    opts.poll_interval = Duration::from_secs(30); // only a NOTIFY can start a job quickly
    let worker = RunningWorker::start(&db.pool, opts, registry_with(&recorder, |_| Ok(())));
    wait_until(Duration::from_secs(10), "worker registered", || async {
        !admin::list_workers(&db.pool).await.unwrap().is_empty()
    })
    .await;
    for _ in 0..5 {
        let before = Utc::now();
        let id = db.enqueue(vec![job("q", "test", json!({}))]).await[0];
        wait_until(Duration::from_secs(5), "job picked up", || async {
            !recorder.for_job(id).is_empty()
        })
        .await;
        let latency = (recorder.for_job(id)[0].started - before).num_milliseconds();
        // Far below the 30 s poll and the 150 s safety poll: the wakeup did it. (Speed itself is in `herald bench`.)
        assert!(latency < 1_000, "pickup took {latency} ms");
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_scheduled_job_starts_within_a_second_of_its_run_at() {
    let db = TestDb::new().await;
    let recorder = Recorder::default();
    let mut opts = options(&[("q", 2)]);
    opts.poll_interval = Duration::from_secs(30); // the promoter's timer must do it
    let worker = RunningWorker::start(&db.pool, opts, registry_with(&recorder, |_| Ok(())));
    // A far-off job first, so the promoter sleeps on a long timer; the later enqueue must reset it.
    db.enqueue(vec![
        job("q", "test", json!({})).run_at(Utc::now() + chrono::Duration::hours(1)),
    ])
    .await;
    let run_at = Utc::now() + chrono::Duration::milliseconds(1500);
    let id = db
        .enqueue(vec![job("q", "test", json!({})).run_at(run_at)])
        .await[0];
    wait_until(Duration::from_secs(10), "scheduled job ran", || async {
        !recorder.for_job(id).is_empty()
    })
    .await;
    worker.stop().await;

    let started = recorder.for_job(id)[0].started;
    assert!(started >= run_at, "started early");
    assert!(
        started - run_at < chrono::Duration::seconds(1),
        "started {:?} late",
        started - run_at
    );
}

#[tokio::test]
async fn a_high_priority_job_jumps_the_line() {
    let db = TestDb::new().await;
    let recorder = Recorder::default();
    admin::set_paused(&db.pool, &herald::audit::Actor::cli(), &queue("q"), true)
        .await
        .unwrap();
    let low = db
        .enqueue((0..20).map(|_| job("q", "test", json!({}))).collect())
        .await;
    let high = db
        .enqueue(vec![
            job("q", "test", json!({})).priority(Priority::new(5).unwrap()),
        ])
        .await[0];
    let mut opts = options(&[("q", 1)]);
    opts.batch_size = 1;
    let worker = RunningWorker::start(&db.pool, opts, registry_with(&recorder, |_| Ok(())));
    admin::set_paused(&db.pool, &herald::audit::Actor::cli(), &queue("q"), false)
        .await
        .unwrap();
    wait_for_drain(&db, Duration::from_secs(10)).await;
    worker.stop().await;

    let mut calls = recorder.calls();
    calls.sort_by_key(|c| c.started);
    assert_eq!(calls[0].id, high, "the urgent job ran first");
    assert_eq!(calls.len(), low.len() + 1, "and the rest still ran");
}

/// A claim starts from where the last one ended (the floor, see `runner.rs`); a job enqueued behind that point
/// (an urgent one, whose `sort_key` lies minutes in the past) must still be taken by the very next claims, because
/// its wakeup lowers the floor. Without that, it would wait for the periodic full search.
#[tokio::test]
async fn an_urgent_job_enqueued_behind_the_claim_floor_runs_next() {
    let db = TestDb::new().await;
    let recorder = Recorder::default();
    let registry = registry_with(&recorder, |_| {
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    });
    let mut opts = options(&[("q", 1)]);
    opts.batch_size = 1;
    let worker = RunningWorker::start(&db.pool, opts, registry);
    let low = db
        .enqueue((0..100).map(|_| job("q", "test", json!({}))).collect())
        .await;
    wait_until(Duration::from_secs(10), "three jobs started", || async {
        recorder.calls().len() >= 3
    })
    .await;
    let high = db
        .enqueue(vec![
            job("q", "test", json!({})).priority(Priority::new(9).unwrap()),
        ])
        .await[0];
    wait_for_drain(&db, Duration::from_secs(30)).await;
    worker.stop().await;

    let mut calls = recorder.calls();
    calls.sort_by_key(|c| c.started);
    let position = calls.iter().position(|c| c.id == high).expect("ran");
    assert!(
        position <= 8,
        "the urgent job ran {position}th of {}, not within a few claims",
        low.len() + 1
    );
}

#[tokio::test]
async fn continuous_high_priority_work_does_not_starve_a_low_priority_job() {
    let db = TestDb::new().await;
    let recorder = Recorder::default();
    let mut registry = HandlerRegistry::new();
    let rec = recorder.clone();
    registry.register_raw("test", move |_, ctx| {
        let rec = rec.clone();
        async move {
            let started = Utc::now();
            tokio::time::sleep(Duration::from_millis(5)).await;
            rec.record(&ctx, started);
            Ok(())
        }
    });
    // Aging 100 ms per level: a priority-0 job outranks priority-9 work enqueued 0.9 s after it.
    let aging = herald::queue::JobDefaults {
        priority_aging: Duration::from_millis(100),
        ..defaults()
    };
    let mut opts = options(&[("q", 1)]);
    opts.batch_size = 1;
    opts.defaults = aging.clone();
    let worker = RunningWorker::start(&db.pool, opts, registry);
    let mut conn = db.pool.acquire().await.unwrap();
    let urgent = || job("q", "test", json!({})).priority(Priority::new(9).unwrap());
    queue::enqueue_many(
        &mut conn,
        &aging,
        &(0..20).map(|_| urgent()).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let low = queue::enqueue(&mut conn, &aging, job("q", "test", json!({})))
        .await
        .unwrap()
        .id();

    // Keep more urgent work arriving than the worker can drain until the low job has run.
    let deadline = Instant::now() + Duration::from_secs(20);
    while recorder.for_job(low).is_empty() {
        assert!(Instant::now() < deadline, "the low-priority job starved");
        queue::enqueue_many(&mut conn, &aging, &[urgent(), urgent()])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let urgent_waiting = live_jobs(&db.pool).await;
    worker.stop().await;
    assert!(
        urgent_waiting > 0,
        "urgent work was still queued when the low job ran: it aged past it"
    );
}

#[tokio::test]
async fn per_queue_concurrency_is_respected() {
    let db = TestDb::new().await;
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut registry = HandlerRegistry::new();
    let (r, p) = (Arc::clone(&running), Arc::clone(&peak));
    registry.register_raw("test", move |_, _| {
        let (r, p) = (Arc::clone(&r), Arc::clone(&p));
        async move {
            let now = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            r.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    });
    let worker = RunningWorker::start(&db.pool, options(&[("q", 3)]), registry);
    db.enqueue((0..30).map(|_| job("q", "test", json!({}))).collect())
        .await;
    wait_for_drain(&db, Duration::from_secs(20)).await;
    worker.stop().await;
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_paused_queue_is_not_worked_until_resumed() {
    let db = TestDb::new().await;
    let recorder = Recorder::default();
    let worker = RunningWorker::start(
        &db.pool,
        options(&[("paused", 2), ("open", 2)]),
        registry_with(&recorder, |_| Ok(())),
    );
    admin::set_paused(
        &db.pool,
        &herald::audit::Actor::cli(),
        &queue("paused"),
        true,
    )
    .await
    .unwrap();
    let held = db.enqueue(vec![job("paused", "test", json!({}))]).await[0];
    // Jobs enqueued after it in another queue run: the worker is live and has looked at both queues.
    let probe = db.enqueue(vec![job("open", "test", json!({}))]).await[0];
    wait_until(Duration::from_secs(10), "probe ran", || async {
        !recorder.for_job(probe).is_empty()
    })
    .await;
    assert!(recorder.for_job(held).is_empty(), "paused queue was worked");
    admin::set_paused(
        &db.pool,
        &herald::audit::Actor::cli(),
        &queue("paused"),
        false,
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        "held job ran after resume",
        || async { !recorder.for_job(held).is_empty() },
    )
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_running_jobs_and_releases_unstarted_ones_at_once() {
    let db = TestDb::new().await;
    let mut opts = options(&[("q", 2)]);
    opts.batch_size = 10;
    // Jobs long enough, and a grace long enough, that "released while the running ones still run" has seconds of
    // slack on a loaded CI machine (a 4 s job and a 3 s deadline failed once there, and an 8 s job and a 6 s
    // deadline once more, with worker processes of other tests competing for both cores).
    opts.shutdown_grace = Duration::from_secs(30);
    let worker = RunningWorker::start(&db.pool, opts, herald::app::handler_registry());
    db.enqueue(
        (0..10)
            .map(|_| job("q", "herald.sleep", json!({"ms": 14000})))
            .collect(),
    )
    .await;
    wait_until(Duration::from_secs(10), "all ten claimed", || async {
        scalar_i64(
            &db.pool,
            "SELECT count(*) FROM herald_jobs WHERE lease_token IS NOT NULL",
        )
        .await
            == 10
    })
    .await;
    worker.shutdown.cancel();
    let released = "SELECT count(*) FROM herald_jobs WHERE lease_token IS NULL AND NOT scheduled AND attempt = 0";
    wait_until(
        Duration::from_secs(12),
        "unstarted jobs released while the running ones still run",
        || async { scalar_i64(&db.pool, released).await == 8 },
    )
    .await;
    assert_eq!(
        completions(&db.pool).await.0,
        0,
        "the running jobs had not finished yet"
    );
    tokio::time::timeout(Duration::from_secs(30), worker.task)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(
        completions(&db.pool).await,
        (2, 2),
        "the two running jobs finished"
    );
    assert_eq!(scalar_i64(&db.pool, released).await, 8, "attempts refunded");
    assert!(admin::list_workers(&db.pool).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_handler_outliving_the_grace_period_is_cancelled_and_requeued() {
    let db = TestDb::new().await;
    let mut opts = options(&[("q", 1)]);
    opts.shutdown_grace = Duration::from_millis(200);
    // A handler that says when it has started, then outlives the grace period. (Waiting for the lease alone is not
    // enough: a job claimed but not yet started at shutdown is released, not interrupted.)
    let started = Arc::new(tokio::sync::Notify::new());
    let mut registry = HandlerRegistry::new();
    let signal = Arc::clone(&started);
    registry.register_raw("slow", move |_, _| {
        let signal = Arc::clone(&signal);
        async move {
            signal.notify_one();
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
    });
    let worker = RunningWorker::start(&db.pool, opts, registry);
    let id = db.enqueue(vec![job("q", "slow", json!({}))]).await[0];
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .expect("the handler started");
    let stopping = Instant::now();
    worker.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(10));

    let view = admin::find_job(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(
        view.attempt, 0,
        "an interrupted attempt is refunded: a job on its last attempt is not dead-lettered"
    );
    // Retried at once: scheduled for now, and maybe already promoted to available.
    assert!(
        ["scheduled", "available"].contains(&view.state.as_str()),
        "back in the queue, not {}",
        view.state
    );
    assert_eq!(view.errors[0]["kind"], "shutdown");
}

#[tokio::test]
async fn terminating_the_workers_database_sessions_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let recorder = Recorder::default();
    let worker = RunningWorker::start(
        &db.pool,
        options(&[("q", 8)]),
        registry_with(&recorder, |_| Ok(())),
    );
    let ids = db
        .enqueue((0..3000).map(|_| job("q", "test", json!({}))).collect())
        .await;

    // Kill every other session on this database, repeatedly, while the worker runs.
    let killer = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let mut kills = 0;
    while live_jobs(&db.pool).await > 0 && kills < 20 {
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&killer)
        .await
        .unwrap();
        kills += usize::from(killed > 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kills > 0, "sessions were terminated during the run");
    wait_for_drain(&db, Duration::from_secs(60)).await;

    // The worker is still alive and working.
    let after = db.enqueue(vec![job("q", "test", json!({}))]).await[0];
    wait_until(
        Duration::from_secs(20),
        "a job enqueued after the storm ran",
        || async { !recorder.for_job(after).is_empty() },
    )
    .await;
    worker.stop().await;

    assert_eq!(
        completions(&db.pool).await,
        (ids.len() as i64 + 1, ids.len() as i64 + 1)
    );
    let ran: std::collections::HashSet<i64> = recorder.calls().iter().map(|c| c.id).collect();
    assert!(
        ids.iter().all(|id| ran.contains(id)),
        "every job ran at least once"
    );
}

#[tokio::test]
async fn an_exhausted_connection_pool_slows_the_worker_but_loses_nothing() {
    let db = TestDb::new().await;
    // One connection for LISTEN, two for claims, acks, the promoter and heartbeats; waits time out fast.
    let starved = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_millis(50))
        .connect(&db.url)
        .await
        .unwrap();
    let recorder = Recorder::default();
    let worker = RunningWorker::start(
        &starved,
        options(&[("a", 8), ("b", 8)]),
        registry_with(&recorder, |_| Ok(())),
    );
    let mut jobs: Vec<_> = (0..300).map(|_| job("a", "test", json!({}))).collect();
    jobs.extend((0..300).map(|_| job("b", "test", json!({}))));
    db.enqueue(jobs).await;
    wait_for_drain(&db, Duration::from_secs(60)).await;
    worker.stop().await;
    assert_eq!(completions(&db.pool).await, (600, 600));
}

#[tokio::test]
async fn one_enqueue_statement_sends_one_notification_per_queue() {
    let db = TestDb::new().await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("herald_jobs").await.unwrap();
    let mut jobs: Vec<_> = (0..50).map(|_| job("a", "test", json!({}))).collect();
    jobs.extend((0..50).map(|_| job("b", "test", json!({}))));
    jobs.push(job("a", "test", json!({})).run_at(Utc::now() + chrono::Duration::hours(1)));
    db.enqueue(jobs).await;
    // A marker sent after the batch committed: everything the batch sent arrives before it.
    sqlx::query("SELECT pg_notify('herald_jobs', 'marker')")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut payloads = Vec::new();
    loop {
        let notification = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .unwrap()
            .unwrap();
        if notification.payload() == "marker" {
            break;
        }
        payloads.push(notification.payload().to_string());
    }
    payloads.sort();
    // Each queue's wakeup carries (just below) the lowest sort_key it made available, for the claims' floor.
    let lowest: i64 = sqlx::query_scalar(
        "SELECT floor(extract(epoch FROM min(sort_key)) * 1000000)::int8 FROM herald_jobs WHERE NOT scheduled",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let expected = |queue: &str| format!("{queue}@{}", lowest - 1);
    assert_eq!(
        payloads,
        vec!["!scheduled".to_string(), expected("a"), expected("b")]
    );
}

#[tokio::test]
async fn an_unstorable_error_message_does_not_hold_up_other_acks() {
    let db = TestDb::new().await;
    let mut registry = HandlerRegistry::new();
    registry.register_raw("odd", |_, ctx: JobContext| async move {
        if ctx.attempt == 1 {
            Err(JobError::retry("binary body: a\u{0}b"))
        } else {
            Ok(())
        }
    });
    registry.register_raw("fine", |_, _| async { Ok(()) });
    let worker = RunningWorker::start(&db.pool, options(&[("q", 4)]), registry);
    let ids = db
        .enqueue(vec![
            job("q", "odd", json!({})),
            job("q", "fine", json!({})),
            job("q", "fine", json!({})),
        ])
        .await;
    wait_for_drain(&db, Duration::from_secs(20)).await;
    worker.stop().await;
    assert_eq!(completions(&db.pool).await, (3, 3));
    let odd = admin::find_job(&db.pool, ids[0]).await.unwrap().unwrap();
    assert_eq!(
        odd.errors[0]["message"], "binary body: a\u{FFFD}b",
        "the NUL was replaced, the error kept"
    );
}

#[tokio::test]
async fn shutdown_with_a_backlog_stops_claiming_at_once() {
    let db = TestDb::new().await;
    let mut opts = options(&[("q", 2)]);
    opts.batch_size = 1; // room frees one slot at a time: the fetcher always has room and work
    let worker = RunningWorker::start(&db.pool, opts, herald::app::handler_registry());
    db.enqueue(
        (0..2000)
            .map(|_| job("q", "herald.sleep", json!({"ms": 20})))
            .collect(),
    )
    .await;
    wait_until(Duration::from_secs(10), "some progress", || async {
        completions(&db.pool).await.0 >= 5
    })
    .await;
    let stopping = Instant::now();
    worker.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), worker.task)
        .await
        .expect("a worker with a backlog stops within its grace period")
        .unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(6));
    let leased = scalar_i64(
        &db.pool,
        "SELECT count(*) FROM herald_jobs WHERE lease_token IS NOT NULL",
    )
    .await;
    assert_eq!(leased, 0, "nothing left leased to the stopped worker");
    assert!(
        completions(&db.pool).await.0 < 2000,
        "it stopped instead of draining the backlog"
    );
}
