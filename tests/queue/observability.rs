//! Seeing a worker process from outside: it serves `/metrics`, `/healthz` and `/readyz` on `metrics.listen`, its
//! queue metrics count a known workload exactly, queue depth comes from one elected process (and survives its
//! kill), and its JSON log lines name the job they belong to.

use std::time::Duration;

use crate::common::*;
use herald::queue;
use serde_json::json;

#[tokio::test]
async fn a_worker_process_serves_probes_and_metrics_that_count_a_known_workload() {
    let db = TestDb::new().await;
    let mut jobs: Vec<_> = (0..30)
        .map(|i| job("observed", "herald.noop", json!({ "i": i })))
        .collect();
    // No handler anywhere: dead-lettered at once, and counted under `other`, never under its own name.
    jobs.extend((0..5).map(|i| job("observed", "nobody.handles.this", json!({ "i": i }))));
    let mut conn = db.pool.acquire().await.unwrap();
    queue::enqueue_many(&mut conn, &defaults(), &jobs)
        .await
        .unwrap();
    drop(conn);

    let address = format!("127.0.0.1:{}", free_port());
    let mut worker = spawn_herald_with(
        &db.url,
        &["worker", "--queues", "observed:4"],
        &[("HERALD_METRICS__LISTEN", &address)],
    );
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let request = client.get(format!("http://{address}{path}"));
        async move {
            match request.send().await {
                Ok(response) => Some((response.status().as_u16(), response.text().await.ok()?)),
                Err(_) => None,
            }
        }
    };
    wait_until(
        Duration::from_secs(30),
        "every job to be settled",
        || async { live_jobs(&db.pool).await == 0 },
    )
    .await;
    // The counts follow each ack batch's commit; poll until the last batch's are in.
    let latest = std::cell::RefCell::new(String::new());
    let (latest_ref, get_ref) = (&latest, &get);
    wait_until(
        Duration::from_secs(10),
        "the counts to reach the workload",
        move || async move {
            if let Some((200, body)) = get_ref("/metrics").await {
                *latest_ref.borrow_mut() = body;
            }
            metric_sample(
                &latest_ref.borrow(),
                "herald_jobs_finished_total",
                &[("queue", "observed")],
            ) >= 35.0
        },
    )
    .await;
    let text = latest.into_inner();

    let count = |name: &str, labels: &[(&str, &str)]| metric_sample(&text, name, labels);
    let noop = [("queue", "observed"), ("kind", "herald.noop")];
    let other = [("queue", "observed"), ("kind", "other")];
    assert_eq!(count("herald_jobs_started_total", &noop), 30.0);
    assert_eq!(count("herald_jobs_started_total", &other), 5.0);
    assert_eq!(
        count(
            "herald_jobs_finished_total",
            &[
                ("queue", "observed"),
                ("kind", "herald.noop"),
                ("outcome", "completed")
            ]
        ),
        30.0
    );
    assert_eq!(
        count(
            "herald_jobs_finished_total",
            &[
                ("queue", "observed"),
                ("kind", "other"),
                ("outcome", "dead_lettered")
            ]
        ),
        5.0
    );
    assert_eq!(
        count("herald_jobs_finished_total", &[("queue", "observed")]),
        35.0
    );
    assert_eq!(
        count("herald_job_pickup_seconds_count", &[("queue", "observed")]),
        35.0
    );
    assert_eq!(count("herald_job_run_seconds_count", &noop), 30.0);
    assert_eq!(
        count("herald_jobs_in_flight", &[("queue", "observed")]),
        0.0
    );
    let claimed = count("herald_claim_jobs_sum", &[("queue", "observed")]);
    assert_eq!(claimed, 35.0, "every job came through a claim");
    assert_eq!(count("herald_ack_jobs_sum", &[]), 35.0);
    assert_eq!(count("herald_build_info", &[]), 1.0);
    assert!(count("herald_db_pool_max_connections", &[]) > 0.0);
    assert!(
        !text.contains("nobody.handles.this"),
        "a kind without a handler never becomes a label value"
    );

    assert_eq!(get("/healthz").await.map(|(status, _)| status), Some(200));
    assert_eq!(get("/readyz").await.map(|(status, _)| status), Some(200));
    worker.kill().await.unwrap();
}

/// Who computed the published queue stats (`host:pid`), and when.
async fn stats_leader(pool: &sqlx::PgPool) -> Option<String> {
    sqlx::query_scalar(
        "SELECT computed_by FROM herald_queue_stats ORDER BY computed_at DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Queue depth is counted by one elected process and exported by every one; when that process is killed, another
/// takes over within a few seconds.
#[tokio::test]
async fn queue_depth_comes_from_one_elected_process_and_survives_its_kill() {
    let db = TestDb::new().await;
    let mut jobs: Vec<_> = (0..3)
        .map(|i| job("depth-a", "herald.noop", json!({ "i": i })))
        .collect();
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    jobs.extend((0..2).map(|i| job("depth-b", "herald.noop", json!({ "i": i })).run_at(later)));
    let mut conn = db.pool.acquire().await.unwrap();
    queue::enqueue_many(&mut conn, &defaults(), &jobs)
        .await
        .unwrap();
    drop(conn);

    // Two workers on a queue of their own (the counted jobs stay where they are), counting every second.
    let addresses: Vec<String> = free_ports(2)
        .into_iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let mut workers: Vec<_> = addresses
        .iter()
        .map(|address| {
            spawn_herald_with(
                &db.url,
                &["worker", "--queues", "elsewhere:1"],
                &[
                    ("HERALD_METRICS__LISTEN", address.as_str()),
                    ("HERALD_METRICS__QUEUE_STATS_SECS", "1"),
                ],
            )
        })
        .collect();
    let pids: Vec<u32> = workers.iter().map(|w| w.id().unwrap()).collect();
    wait_until(
        Duration::from_secs(30),
        "one worker to publish queue stats",
        || async { stats_leader(&db.pool).await.is_some() },
    )
    .await;
    let leader = stats_leader(&db.pool).await.unwrap();
    let leader_pid: u32 = leader.rsplit(':').next().unwrap().parse().unwrap();
    let index = pids
        .iter()
        .position(|&pid| pid == leader_pid)
        .expect("a worker leads");
    let survivor = 1 - index;

    // Every process exports the leader's counts, the follower included.
    let client = reqwest::Client::new();
    let scrape = |address: String| {
        let request = client.get(format!("http://{address}/metrics"));
        async move { request.send().await.ok()?.text().await.ok() }
    };
    let follower = addresses[survivor].clone();
    wait_until(
        Duration::from_secs(10),
        "the follower to export the depths",
        || {
            let fetched = scrape(follower.clone());
            async move {
                let Some(text) = fetched.await else {
                    return false;
                };
                metric_sample(
                    &text,
                    "herald_queue_jobs",
                    &[("queue", "depth-a"), ("state", "available")],
                ) == 3.0
                    && metric_sample(
                        &text,
                        "herald_queue_jobs",
                        &[("queue", "depth-b"), ("state", "scheduled")],
                    ) == 2.0
            }
        },
    )
    .await;

    // One process counts: over three more counts (one a second), every one was the same leader's.
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let seen_ref = &seen;
    wait_until(Duration::from_secs(15), "three more counts", || async {
        let (at, by): (chrono::DateTime<chrono::Utc>, String) = sqlx::query_as(
            "SELECT computed_at, computed_by FROM herald_queue_stats ORDER BY computed_at DESC LIMIT 1",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        seen_ref.borrow_mut().insert(at, by);
        seen_ref.borrow().len() >= 4
    })
    .await;
    assert!(
        seen.borrow().values().all(|by| *by == leader),
        "one leader counts: {:?}",
        seen.borrow()
    );

    workers[index].kill().await.unwrap(); // SIGKILL: its session, and with it the lock, ends with the process
    let killed = std::time::Instant::now();
    let survivor_pid = pids[survivor];
    wait_until(
        Duration::from_secs(15),
        "the survivor to take over",
        || async {
            stats_leader(&db.pool)
                .await
                .is_some_and(|by| by.ends_with(&format!(":{survivor_pid}")))
        },
    )
    .await;
    eprintln!(
        "queue-stats leader taken over {:?} after the kill",
        killed.elapsed()
    );
    workers[survivor].kill().await.unwrap();
}

/// `HERALD_LOG_FORMAT=json`: one JSON object per line, and a handler's log line names its job.
#[tokio::test]
async fn json_logs_name_the_job_in_every_line_of_its_attempt() {
    use tokio::io::AsyncBufReadExt;

    let db = TestDb::new().await;
    let ids = db
        .enqueue(vec![job(
            "logged",
            "herald.log",
            json!({ "note": "json-logs-test" }),
        )])
        .await;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["worker", "--queues", "logged:1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", &db.url)
        .env("HERALD_ENV", "test")
        .env("RUST_LOG", "info")
        .env("HERALD_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(worker.stderr.take().unwrap()).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        let mut seen = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            let parsed: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a JSON line: {line}"));
            seen += 1;
            if line.contains("json-logs-test") {
                return Some((parsed, seen));
            }
        }
        None
    })
    .await
    .expect("the handler's line within 30 s")
    .expect("the handler's line before the log ended");
    let (line, _) = found;
    let job_span = line["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|span| span["name"] == "job"))
        .unwrap_or_else(|| panic!("no job span in {line}"));
    assert_eq!(job_span["job"], json!(ids[0]), "{line}");
    assert!(
        line["level"].is_string() && line["timestamp"].is_string(),
        "{line}"
    );
    worker.kill().await.unwrap();
}

/// `herald status --json` shows the live workers and the queues' depths as the tables hold them.
#[tokio::test]
async fn herald_status_shows_the_workers_and_the_queues() {
    let db = TestDb::new().await;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    db.enqueue(
        (0..3)
            .map(|i| job("status-q", "herald.noop", json!({ "i": i })).run_at(later))
            .collect(),
    )
    .await;
    let mut worker = spawn_herald(&db.url, &["worker", "--queues", "status-w:2"]);
    let pid = worker.id().unwrap() as i64;
    wait_until(
        Duration::from_secs(30),
        "the worker to register",
        || async { scalar_i64(&db.pool, "SELECT count(*) FROM herald_workers").await == 1 },
    )
    .await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["status", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", &db.url)
        .env("HERALD_ENV", "test")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{status}");
    assert_eq!(workers[0][0]["pid"], json!(pid));
    assert_eq!(workers[0][0]["queues"], json!(["status-w"]));
    let queue = status["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q[0]["name"] == "status-q")
        .unwrap_or_else(|| panic!("no status-q in {status}"));
    assert_eq!(queue[0]["scheduled"], json!(3));
    assert_eq!(queue[0]["available"], json!(0));
    assert_eq!(status["alerts"], json!([]), "no alert on a quiet fleet");
    worker.kill().await.unwrap();
}

/// Past the hundred deepest queues, the rest are summed under `(other)`: an invented queue name cannot grow the
/// label set, and a real queue pushed out of the hundred is still counted (in the sum), never shown as empty.
#[tokio::test]
async fn queues_beyond_the_deepest_hundred_are_summed_not_hidden() {
    let db = TestDb::new().await;
    // An idle fleet still publishes: the sum row, zeros, fresh (its age is what says someone counts).
    queue::stats::publish(&db.pool, "test:1").await.unwrap();
    let idle = queue::stats::read(&db.pool).await.unwrap();
    assert_eq!(idle.len(), 1);
    assert_eq!(
        (idle[0].queue.as_str(), idle[0].available),
        (queue::stats::OTHER_QUEUES, 0)
    );
    assert!(idle[0].age_secs < 5.0);
    // A real queue with three jobs due, published while it is among the deepest.
    db.enqueue(
        (0..3)
            .map(|i| job("billing", "herald.noop", json!({ "i": i })))
            .collect(),
    )
    .await;
    queue::stats::publish(&db.pool, "test:1").await.unwrap();
    // Then 120 invented queues of five jobs each push it out of the hundred.
    let invented: Vec<_> = (0..120)
        .flat_map(|q| {
            (0..5).map(move |i| job(&format!("invented-{q}"), "herald.noop", json!({ "i": i })))
        })
        .collect();
    db.enqueue(invented).await;
    queue::stats::publish(&db.pool, "test:1").await.unwrap();

    let rows = queue::stats::read(&db.pool).await.unwrap();
    assert_eq!(rows.len() as i64, queue::stats::MAX_QUEUES + 1);
    assert!(
        rows.iter().all(|r| r.queue != "billing"),
        "billing is in the sum"
    );
    let other = rows
        .iter()
        .find(|r| r.queue == queue::stats::OTHER_QUEUES)
        .expect("the sum of the rest");
    // 20 invented queues of five, and billing's three.
    assert_eq!(other.available, 20 * 5 + 3);
    assert!(other.oldest_available_secs.is_some());
    let zeroed = scalar_i64(
        &db.pool,
        "SELECT count(*) FROM herald_queue_stats WHERE available = 0 AND scheduled = 0 AND running = 0",
    )
    .await;
    assert_eq!(zeroed, 0, "no queue that holds jobs is published as empty");
}
