//! The README's first command: `herald up` with no DATABASE_URL starts a private PostgreSQL and a worker, and
//! `herald enqueue` from another shell in the same directory gets a job executed. Ctrl-C stops both.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

fn herald_in(dir: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("HERALD_ENV")
        // Tests run side by side: each `up` takes a free port instead of the default 8080.
        .env("HERALD_API__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn");
    command
}

#[tokio::test]
async fn up_without_database_url_runs_a_private_postgres_and_executes_enqueued_jobs() {
    assert!(
        herald::embedded_postgres::find_bin_dir().is_some(),
        "PostgreSQL server binaries (initdb, pg_ctl) are missing: run ./test.sh or apt-get install postgresql"
    );
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL runs as an unprivileged user when we are root; it must be able to reach the directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut up, url, _log) = start_up(dir.path()).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();

    let enqueued = herald_in(dir.path())
        .args(["enqueue", "--payload", r#"{"hello":"world"}"#])
        .output()
        .await
        .unwrap();
    assert!(
        enqueued.status.success(),
        "enqueue failed: {}",
        String::from_utf8_lossy(&enqueued.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&enqueued.stdout).unwrap();
    assert_eq!(answer["status"], "inserted");
    let id = answer["id"].as_i64().unwrap();
    wait_until(Duration::from_secs(30), "the job to complete", || async {
        let job = herald::queue::admin::find_job(&pool, id)
            .await
            .ok()
            .flatten();
        job.is_some_and(|j| j.state == herald::queue::JobState::Completed)
    })
    .await;
    pool.close().await;

    // SAFETY: signalling our own child process.
    unsafe { libc::kill(up.id().unwrap() as i32, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(60), up.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "herald up exited with {status}");
    let after = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect(&url)
        .await;
    assert!(
        after.is_err(),
        "the private cluster was stopped with herald up"
    );
}

/// Starts `herald up` in `dir` and returns it, the URL of its private cluster once a worker has registered, and its
/// stderr, read as it comes (so a chatty process never blocks on a full pipe) and complete once it exits.
async fn start_up(
    dir: &std::path::Path,
) -> (
    tokio::process::Child,
    String,
    tokio::task::JoinHandle<String>,
) {
    let mut up = herald_in(dir)
        .arg("up")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = up.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let port_file = dir.join(".herald/pg/port");
    wait_until(
        Duration::from_secs(120),
        "the private cluster to start",
        || async { port_file.exists() },
    )
    .await;
    let port = std::fs::read_to_string(&port_file).unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", port.trim());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let pid = up.id().unwrap() as i32;
    wait_until(
        Duration::from_secs(60),
        "this herald up's worker to register",
        || async {
            herald::queue::admin::list_workers(&pool)
                .await
                .map(|workers| workers.iter().any(|w| w.pid == pid))
                .unwrap_or(false)
        },
    )
    .await;
    pool.close().await;
    assert!(up.try_wait().unwrap().is_none(), "herald up is running");
    (up, url, log)
}

#[tokio::test]
async fn up_takes_over_the_private_postgres_a_killed_up_left_running() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut first, url, _first_log) = start_up(dir.path()).await;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(first.id().unwrap() as i32, libc::SIGKILL) };
    first.wait().await.unwrap();
    let orphan = sqlx::postgres::PgPoolOptions::new()
        .connect(&url)
        .await
        .expect("the killed up's PostgreSQL is still running");
    orphan.close().await;

    let (mut second, second_url, second_log) = start_up(dir.path()).await;
    assert_eq!(second_url, url, "the second up runs on the same cluster");
    // SAFETY: as above.
    unsafe { libc::kill(second.id().unwrap() as i32, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(60), second.wait())
        .await
        .unwrap()
        .unwrap();
    let stderr = tokio::time::timeout(Duration::from_secs(10), second_log)
        .await
        .expect("stderr closes when herald up exits")
        .unwrap();
    assert!(status.success(), "herald up exited with {status}: {stderr}");
    assert!(
        stderr.contains("taking it over"),
        "the second up says it found the leftover cluster: {stderr}"
    );
    let after = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect(&url)
        .await;
    assert!(
        after.is_err(),
        "the second up stopped the cluster it took over"
    );
}

/// `examples/custom_worker.rs`, as `cargo test` builds it (beside this test's own binary).
fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the whole suite (`cargo test` builds the examples) or `cargo build --example {name}`",
        path.display()
    );
    path
}

#[tokio::test]
async fn an_embedded_worker_runs_its_own_job_kind_beside_the_built_in_ones() {
    let db = TestDb::new().await;
    let mut worker = tokio::process::Command::new(example_binary("custom_worker"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", &db.url)
        .env("HERALD_ENV", "test")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ids = db
        .enqueue(vec![
            job(
                "default",
                "example.greet",
                serde_json::json!({ "name": "Ada" }),
            ),
            job(
                "default",
                "example.greet",
                serde_json::json!({ "name": "" }),
            ),
            job("default", "herald.noop", serde_json::json!({})),
        ])
        .await;
    wait_until(
        Duration::from_secs(60),
        "the greeting and the no-op to complete and the bad greeting to be dead-lettered",
        || async {
            let done = scalar_i64(
                &db.pool,
                &format!(
                    "SELECT count(*) FROM herald_job_history WHERE outcome = 'completed' AND job_id IN ({}, {})",
                    ids[0], ids[2]
                ),
            )
            .await;
            let dead = scalar_i64(
                &db.pool,
                &format!("SELECT count(*) FROM herald_dead_letters WHERE job_id = {}", ids[1]),
            )
            .await;
            done == 2 && dead == 1
        },
    )
    .await;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(worker.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the example worker exited with {status}");
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_workers").await,
        0,
        "it left the registry on SIGTERM"
    );
}

/// Security finding 11: `herald up` minted an all-scope key on whatever DATABASE_URL named and never revoked it.
/// Now: on a server it did not start, only with `--dev-key`, and the key is revoked when `up` exits.
#[tokio::test]
async fn up_on_a_shared_database_mints_no_key_unless_asked_and_revokes_it_on_exit() {
    let db = TestDb::new().await;
    let live_dev_keys = || async {
        scalar_i64(
            &db.pool,
            "SELECT count(*) FROM herald_api_keys WHERE name = 'herald-up-dev' AND revoked_at IS NULL",
        )
        .await
    };
    for (args, minted) in [(vec!["up"], false), (vec!["up", "--dev-key"], true)] {
        let mut up = spawn_herald_with(&db.url, &args, &[("HERALD_API__LISTEN", "127.0.0.1:0")]);
        let pid = up.id().unwrap() as i32;
        wait_until(
            Duration::from_secs(60),
            "herald up's worker to register",
            || async {
                herald::queue::admin::list_workers(&db.pool)
                    .await
                    .map(|workers| workers.iter().any(|w| w.pid == pid))
                    .unwrap_or(false)
            },
        )
        .await;
        assert_eq!(live_dev_keys().await, i64::from(minted), "{args:?}");
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let status = tokio::time::timeout(Duration::from_secs(60), up.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "herald up exited with {status}");
        assert_eq!(live_dev_keys().await, 0, "revoked on exit: {args:?}");
    }
}

/// `--no-migrate` (the Procfile's runtime roles, whose database user may lack DDL rights): a process refuses a
/// database with a pending migration, saying what to run, and starts on a current one.
#[tokio::test]
async fn no_migrate_refuses_a_database_that_is_not_current_and_starts_on_one_that_is() {
    let db = TestDb::new().await;
    let last: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(last)
        .execute(&db.pool)
        .await
        .unwrap();
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["worker", "--no-migrate"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", &db.url)
        .env("HERALD_ENV", "test")
        .env("RUST_LOG", "warn")
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("exits at once")
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("migrations pending") && said.contains("herald migrate"),
        "{said}"
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_workers").await,
        0,
        "it never registered"
    );

    let current = TestDb::new().await;
    let mut worker = spawn_herald(&current.url, &["worker", "--no-migrate"]);
    wait_until(
        Duration::from_secs(30),
        "the worker to register",
        || async { scalar_i64(&current.pool, "SELECT count(*) FROM herald_workers").await == 1 },
    )
    .await;
    worker.kill().await.unwrap();
}
