//! The README's first command: `herald up` with no DATABASE_URL starts a private PostgreSQL and a worker, and
//! `herald enqueue` from another shell in the same directory gets a job executed. Ctrl-C stops both.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use common::*;

fn herald_in(dir: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("HERALD_ENV")
        .env("RUST_LOG", "warn");
    command
}

#[tokio::test]
async fn up_without_database_url_runs_a_private_postgres_and_executes_enqueued_jobs() {
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL runs as an unprivileged user when we are root; it must be able to reach the directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut up = herald_in(dir.path())
        .arg("up")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let port_file = dir.path().join(".herald/pg/port");
    wait_until(
        Duration::from_secs(120),
        "the private cluster to start",
        || async { port_file.exists() },
    )
    .await;
    let port = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .to_string();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the worker to register",
        || async {
            herald::queue::admin::list_workers(&pool)
                .await
                .map(|w| !w.is_empty())
                .unwrap_or(false)
        },
    )
    .await;

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
        job.is_some_and(|j| j.state == "completed")
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
