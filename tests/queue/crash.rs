//! Crashes: a worker process killed with SIGKILL while holding jobs, and PostgreSQL itself restarting under a
//! running worker. Nothing may be lost, nothing completed twice.

use std::time::Duration;

use crate::common::*;
use herald::embedded_postgres::EmbeddedPostgres;
use herald::queue::{self, HandlerRegistry};
use serde_json::json;

#[tokio::test]
async fn kill_9_of_a_worker_process_holding_jobs_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let jobs: Vec<_> = (0..300)
        .map(|_| job("crash", "herald.sleep", json!({"ms": 20})))
        .collect();
    let mut conn = db.pool.acquire().await.unwrap();
    queue::enqueue_many(&mut conn, &defaults(), &jobs)
        .await
        .unwrap();

    let mut victim = spawn_herald(&db.url, &["worker", "--queues", "crash:10"]);
    wait_until(
        Duration::from_secs(30),
        "the victim to complete some jobs and hold others",
        || async {
            completions(&db.pool).await.0 >= 30
                && scalar_i64(
                    &db.pool,
                    "SELECT count(*) FROM herald_jobs WHERE lease_token IS NOT NULL",
                )
                .await
                    > 0
        },
    )
    .await;
    victim.kill().await.unwrap(); // SIGKILL: no graceful anything
    let orphaned = scalar_i64(
        &db.pool,
        "SELECT count(*) FROM herald_jobs WHERE lease_token IS NOT NULL",
    )
    .await;
    assert!(orphaned > 0, "the killed worker held leases");

    let mut survivor = spawn_herald(&db.url, &["worker", "--queues", "crash:10"]);
    wait_until(Duration::from_secs(60), "every job to finish", || async {
        live_jobs(&db.pool).await == 0
    })
    .await;
    survivor.kill().await.unwrap();

    assert_eq!(
        completions(&db.pool).await,
        (300, 300),
        "each job completed exactly once"
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_dead_letters").await,
        0
    );
    let rescued = scalar_i64(
        &db.pool,
        "SELECT count(*) FROM herald_job_history WHERE errors @> '[{\"kind\": \"lease_expired\"}]'",
    )
    .await;
    // An ack flush already sent when the victim died may still commit, so some held jobs finish without rescue.
    assert!(
        rescued > 0 && rescued <= orphaned,
        "{rescued} of {orphaned} held jobs were rescued by the survivor"
    );
}

/// Stops the private cluster even when the test fails.
struct ClusterGuard(EmbeddedPostgres);
impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = self.0.stop();
    }
}

#[tokio::test]
async fn a_postgres_restart_under_a_running_worker_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterGuard(
        tokio::task::spawn_blocking({
            let path = dir.path().join("pg");
            move || EmbeddedPostgres::start(&path)
        })
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("a private PostgreSQL (run ./test.sh): {error}")),
    );
    let db = TestDb::on_server(&cluster.0.url()).await;
    let executed = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let mut registry = HandlerRegistry::new();
    let seen = std::sync::Arc::clone(&executed);
    registry.register_raw("test", move |_, ctx| {
        let seen = std::sync::Arc::clone(&seen);
        async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            seen.lock().unwrap().insert(ctx.id);
            Ok(())
        }
    });
    let worker = RunningWorker::start(&db.pool, options(&[("q", 8)]), registry);
    let jobs: Vec<_> = (0..2000).map(|_| job("q", "test", json!({}))).collect();
    let ids = db.enqueue(jobs).await;
    wait_until(
        Duration::from_secs(30),
        "some progress before the restart",
        || async { completions(&db.pool).await.0 >= 200 },
    )
    .await;

    let restart = tokio::task::spawn_blocking(move || {
        let result = cluster.0.restart();
        (cluster, result)
    });
    let (cluster, restarted) = restart.await.unwrap();
    restarted.expect("restart PostgreSQL");
    assert!(
        completions(&db.pool).await.0 < 2000,
        "the restart happened mid-run"
    );

    wait_until(
        Duration::from_secs(90),
        "every job to finish after the restart",
        || async { live_jobs(&db.pool).await == 0 },
    )
    .await;
    worker.stop().await;
    assert_eq!(completions(&db.pool).await, (2000, 2000));
    let executed = executed.lock().unwrap();
    assert!(ids.iter().all(|id| executed.contains(id)), "every job ran");
    drop(db);
    drop(cluster);
}

// ---- Leases never outlive the work (a lock, a stall, a freeze, a stuck handler) ----

/// `herald worker` as a separate process whose log lines (stderr, at `warn`) the test can read.
struct LoggedWorker {
    child: tokio::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl LoggedWorker {
    fn spawn(url: &str, queues: &str, env: &[(&str, &str)]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["worker", "--queues", queues])
            .envs(env.iter().copied())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("DATABASE_URL", url)
            .env("HERALD_ENV", "test")
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start herald worker");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = std::sync::Arc::clone(&lines);
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                eprintln!("[worker] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    fn signal(&self, signal: i32) {
        assert_eq!(
            unsafe { libc::kill(self.pid(), signal) },
            0,
            "kill({signal})"
        );
    }

    /// The job ids listed in `field=[..]` over every log line that has it.
    fn listed_ids(&self, field: &str) -> Vec<i64> {
        let marker = format!("{field}=[");
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|line| {
                let start = line.find(&marker)? + marker.len();
                let end = start + line[start..].find(']')?;
                Some(line[start..end].to_string())
            })
            .flat_map(|list| {
                list.split(',')
                    .filter_map(|id| id.trim().parse().ok())
                    .collect::<Vec<i64>>()
            })
            .collect()
    }

    /// The sum of `field=N` over every log line that has it.
    fn counted(&self, field: &str) -> i64 {
        let marker = format!("{field}=");
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|line| {
                let start = line.find(&marker)? + marker.len();
                let digits: String = line[start..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse::<i64>().ok()
            })
            .sum()
    }
}

async fn registered_workers(pool: &sqlx::PgPool) -> i64 {
    scalar_i64(pool, "SELECT count(*) FROM herald_workers").await
}

/// `n` jobs of `herald.sleep` for `ms` each on `queue_name`.
fn sleeps(queue_name: &str, n: usize, ms: u64) -> Vec<herald::queue::NewJob> {
    (0..n)
        .map(|_| job(queue_name, "herald.sleep", json!({ "ms": ms })))
        .collect()
}

async fn enqueue_jobs(db: &TestDb, jobs: Vec<herald::queue::NewJob>) {
    let mut conn = db.pool.acquire().await.unwrap();
    queue::enqueue_many(&mut conn, &defaults(), &jobs)
        .await
        .unwrap();
}

/// Issue 12.1: a claim stuck behind DDL that the worker gave up on must not commit later and strand its jobs on
/// a live worker. A reader holds `herald_queues` for 40 s (a dashboard query, `pg_dump`), an `ALTER TABLE` queues
/// behind it, and every CLAIM (which reads `herald_queues` for the pause flag) queues behind the ALTER: longer
/// than the worker's client-side deadline.
#[tokio::test]
async fn a_claim_stuck_behind_ddl_strands_no_job_on_a_live_worker() {
    use sqlx::Connection;
    let db = TestDb::new().await;
    let _workers = [
        LoggedWorker::spawn(&db.url, "ddl:10", &[]),
        LoggedWorker::spawn(&db.url, "ddl:10", &[]),
    ];
    wait_until(
        Duration::from_secs(30),
        "both workers registered",
        || async { registered_workers(&db.pool).await == 2 },
    )
    .await;

    let mut reader = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
    sqlx::query("SELECT count(*) FROM herald_queues")
        .execute(&mut reader)
        .await
        .unwrap();
    let url = db.url.clone();
    let migration = tokio::spawn(async move {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("ALTER TABLE herald_queues ADD COLUMN note text")
            .execute(&mut conn)
            .await
            .unwrap();
    });
    wait_until(Duration::from_secs(10), "the ALTER to queue behind the reader", || async {
        scalar_i64(
            &db.pool,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'ALTER TABLE%'",
        )
        .await
            == 1
    })
    .await;
    enqueue_jobs(&db, sleeps("ddl", 3000, 20)).await;
    // The scenario itself: the lock is held for 40 s, longer than any client-side deadline of a claim.
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(
        completions(&db.pool).await.0,
        0,
        "no claim got past the lock"
    );
    sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    migration.await.unwrap();
    let lock_gone = scalar_f64(
        &db.pool,
        "SELECT extract(epoch FROM clock_timestamp())::float8",
    )
    .await;

    // One lease term (5 s in the test profile) after the lock goes, no job may still be leased by a claim made
    // before it went; the workers are alive and heartbeating throughout.
    wait_until(
        Duration::from_secs(5) + Duration::from_secs(2),
        "the lease term after the lock to pass",
        || async {
            scalar_f64(
                &db.pool,
                "SELECT extract(epoch FROM clock_timestamp())::float8",
            )
            .await
                > lock_gone + 5.0
        },
    )
    .await;
    let stranded = scalar_i64(
        &db.pool,
        &format!(
            "SELECT count(*) FROM herald_jobs WHERE lease_token IS NOT NULL \
             AND claimed_at < to_timestamp({lock_gone})"
        ),
    )
    .await;
    assert_eq!(
        stranded, 0,
        "jobs leased before the lock went are still leased one lease term later"
    );
    assert_eq!(
        registered_workers(&db.pool).await,
        2,
        "both workers are alive"
    );
    wait_until(Duration::from_secs(60), "every job to finish", || async {
        live_jobs(&db.pool).await == 0
    })
    .await;
    assert_eq!(
        completions(&db.pool).await,
        (3000, 3000),
        "each job completed exactly once"
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_dead_letters").await,
        0
    );
}

/// Issue 12.2: heartbeats never wait behind maintenance. A 40 s `LOCK TABLE herald_jobs` blocks rescues, claims
/// and acks, but not the heartbeat, so no live worker's lease is rescued when the lock goes.
#[tokio::test]
async fn heartbeats_keep_beating_while_a_table_lock_blocks_maintenance() {
    use sqlx::Connection;
    let db = TestDb::new().await;
    let _workers = [
        LoggedWorker::spawn(&db.url, "hb:4", &[]),
        LoggedWorker::spawn(&db.url, "hb:4", &[]),
    ];
    enqueue_jobs(&db, sleeps("hb", 40, 1000)).await;
    wait_until(
        Duration::from_secs(30),
        "both workers running jobs",
        || async { registered_workers(&db.pool).await == 2 && completions(&db.pool).await.0 >= 8 },
    )
    .await;

    let mut locker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE herald_jobs IN EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let held = std::time::Instant::now();
    let mut oldest = 0.0f64;
    // Sample the heartbeat age through the whole 40 s lock (reading herald_workers is not blocked by it).
    while held.elapsed() < Duration::from_secs(40) {
        let age = scalar_f64(
            &db.pool,
            "SELECT coalesce(max(extract(epoch FROM now() - heartbeat_at)), 0)::float8 FROM herald_workers",
        )
        .await;
        oldest = oldest.max(age);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    eprintln!("oldest newest-heartbeat age during the 40 s lock: {oldest:.2} s");
    assert!(
        oldest < 3.0,
        "the newest heartbeat of some worker was {oldest:.1} s old during the lock (heartbeat every 1 s)"
    );
    wait_until(Duration::from_secs(60), "every job to finish", || async {
        live_jobs(&db.pool).await == 0
    })
    .await;
    assert_eq!(completions(&db.pool).await, (40, 40));
    let rescued = scalar_i64(
        &db.pool,
        "SELECT count(*) FROM herald_job_history WHERE errors @> '[{\"kind\": \"lease_expired\"}]'",
    )
    .await;
    assert_eq!(rescued, 0, "no lease of a live worker was rescued");
}

/// Issue 12.3: a handler that never yields (a CPU loop, or a blocking call) neither stalls its queue, nor keeps
/// its lease past its timeout, nor holds the process past its shutdown grace.
async fn a_stuck_handler_is_contained(kind: &str) {
    let db = TestDb::new().await;
    let mut worker = LoggedWorker::spawn(&db.url, "stuck:4", &[]);
    enqueue_jobs(
        &db,
        vec![
            job("stuck", kind, json!({"ms": 600_000}))
                .timeout(Duration::from_secs(2))
                .max_attempts(1),
        ],
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "the stuck job to start",
        || async {
            scalar_i64(
                &db.pool,
                "SELECT count(*) FROM herald_jobs WHERE lease_token IS NOT NULL",
            )
            .await
                == 1
        },
    )
    .await;
    // The queue keeps moving around the stuck handler.
    enqueue_jobs(
        &db,
        (0..20)
            .map(|_| job("stuck", "herald.noop", json!({})))
            .collect(),
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "the other jobs of the queue to complete",
        || async { completions(&db.pool).await.0 >= 20 },
    )
    .await;
    // Past its 2 s timeout the attempt fails (its last: a dead letter) while the worker lives on.
    wait_until(
        Duration::from_secs(15),
        "the stuck job's lease to be given up",
        || async {
            scalar_i64(
                &db.pool,
                &format!(
                    "SELECT count(*) FROM herald_dead_letters WHERE kind = '{kind}' \
                 AND errors @> '[{{\"kind\": \"timeout\"}}]'"
                ),
            )
            .await
                == 1
        },
    )
    .await;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
    assert_eq!(live_jobs(&db.pool).await, 0);

    // Shutdown ends within its grace (5 s in the test profile) although the handler is still stuck.
    let asked = std::time::Instant::now();
    worker.signal(libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(5 + 3), worker.child.wait())
        .await
        .expect("the worker exits within its shutdown grace")
        .unwrap();
    eprintln!("worker exited with {status} after {:?}", asked.elapsed());
    assert_eq!(
        registered_workers(&db.pool).await,
        0,
        "the worker left the registry"
    );
}

#[tokio::test]
async fn a_handler_stuck_in_a_cpu_loop_is_contained() {
    a_stuck_handler_is_contained("herald.spin").await;
}

#[tokio::test]
async fn a_handler_stuck_in_a_blocking_call_is_contained() {
    a_stuck_handler_is_contained("herald.block").await;
}

/// Issue 12.4: a worker frozen (SIGSTOP) past its lease does not, once thawed, start the jobs it had claimed but
/// not started: they were rescued and run elsewhere meanwhile.
#[tokio::test]
async fn a_thawed_worker_does_not_start_buffered_jobs_whose_lease_term_passed() {
    let db = TestDb::new().await;
    enqueue_jobs(&db, sleeps("frozen", 200, 100)).await;
    let frozen = LoggedWorker::spawn(&db.url, "frozen:2", &[("HERALD_WORKER__BATCH_SIZE", "50")]);
    let pid = frozen.pid();
    let held_by_frozen = format!(
        "SELECT count(*) FROM herald_jobs j JOIN herald_workers w ON w.id = j.leased_by WHERE w.pid = {pid}"
    );
    wait_until(
        Duration::from_secs(30),
        "the worker to hold a buffer of claimed jobs",
        || async {
            completions(&db.pool).await.0 >= 4 && scalar_i64(&db.pool, &held_by_frozen).await >= 20
        },
    )
    .await;
    frozen.signal(libc::SIGSTOP);
    let held = scalar_i64(&db.pool, &held_by_frozen).await;
    assert!(held >= 20, "the frozen worker holds {held} jobs");

    let rescuer = LoggedWorker::spawn(&db.url, "frozen:8", &[]);
    wait_until(
        Duration::from_secs(60),
        "the rest to be rescued and completed",
        || async { live_jobs(&db.pool).await == 0 },
    )
    .await;
    frozen.signal(libc::SIGCONT);
    // The thawed worker accounts for every job it held: skipped unstarted, or run and its ack rejected.
    wait_until(
        Duration::from_secs(30),
        "the thawed worker to settle its buffer",
        || async { frozen.counted("skipped") + frozen.listed_ids("stale").len() as i64 >= held },
    )
    .await;
    // Rejected acks can come from the (at most 2) handlers running at the freeze and from (at most 2) attempts that
    // had finished but whose ack was not yet written; any more were started after the thaw.
    let rejected = frozen.listed_ids("stale").len();
    assert!(
        rejected <= 4,
        "the thawed worker ran {rejected} jobs whose leases had passed (its concurrency is 2)"
    );
    assert_eq!(
        completions(&db.pool).await,
        (200, 200),
        "each job completed exactly once"
    );
    drop(rescuer);
}

/// The other side of issue 12.4: a worker that is merely busy (heartbeating all along) starts the jobs that waited
/// in its buffer past their lease term, rather than giving them back: no rescuer can have taken them, and giving
/// them back would make a slow queue churn through claims.
#[tokio::test]
async fn a_busy_worker_starts_jobs_that_waited_past_their_lease_term() {
    let db = TestDb::new().await;
    // One at a time, 500 ms each: the last of the 20 claimed together starts ~10 s after its claim (lease 5 s).
    enqueue_jobs(&db, sleeps("busy", 20, 500)).await;
    let worker = LoggedWorker::spawn(&db.url, "busy:1", &[("HERALD_WORKER__BATCH_SIZE", "20")]);
    wait_until(Duration::from_secs(60), "every job to finish", || async {
        live_jobs(&db.pool).await == 0
    })
    .await;
    assert_eq!(completions(&db.pool).await, (20, 20));
    assert_eq!(
        worker.counted("skipped"),
        0,
        "no job was given back unstarted"
    );
    let slowest: f64 = scalar_f64(
        &db.pool,
        "SELECT max(extract(epoch FROM finished_at - created_at))::float8 FROM herald_job_history",
    )
    .await;
    assert!(
        slowest > 5.0,
        "the last job waited past the lease term ({slowest:.1} s)"
    );
}

async fn scalar_f64(pool: &sqlx::PgPool, sql: &str) -> f64 {
    sqlx::query_scalar::<_, f64>(sql)
        .fetch_one(pool)
        .await
        .expect(sql)
}
