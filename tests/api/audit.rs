//! The audit log: every operator action over HTTP or the command line appends a row naming who (the key, or the
//! OS user), what, the target and the request id, in the action's own transaction; `GET /v1/audit` and
//! `herald audit` read it; keys show when they were last used.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// Every row of the audit log over HTTP, oldest first, following the cursor in pages of `page` rows.
async fn audit_log(app: &TestApp, page: usize) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/audit?limit={page}&cursor={c}"),
            None => format!("/v1/audit?limit={page}"),
        };
        let body = app.get_json(&path, &app.admin_key).await;
        let items = body["items"].as_array().expect("items").clone();
        assert!(items.len() <= page);
        rows.extend(items);
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    rows.reverse();
    rows
}

async fn key_id(app: &TestApp, name: &str) -> i64 {
    let keys = herald::api::keys::list(&app.db.pool).await.unwrap();
    keys.iter().find(|k| k.name == name).expect("the key").id
}

#[tokio::test]
async fn every_admin_action_over_http_is_audited_with_its_key_and_request_id() {
    let app = spawn_app().await;
    let before = audit_log(&app, 50).await.len(); // the test keys, created by the command line
    crate::http::dead_letters(&app, 2).await;
    let letters = app.get_json("/v1/dead-letters", &app.read_key).await;
    let ids: Vec<i64> = letters["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_i64().unwrap())
        .collect();

    let ok = |response: reqwest::Response| {
        assert!(
            response.status().is_success(),
            "{} {}",
            response.status(),
            response.url()
        );
    };
    ok(app
        .post("/v1/queues/mail/pause", &app.admin_key)
        .header("X-Request-Id", "audit-pause-1")
        .send()
        .await
        .unwrap());
    ok(app
        .post("/v1/queues/mail/resume", &app.admin_key)
        .send()
        .await
        .unwrap());
    ok(app
        .post(
            &format!("/v1/dead-letters/{}/replay", ids[0]),
            &app.admin_key,
        )
        .send()
        .await
        .unwrap());
    ok(app
        .delete(&format!("/v1/dead-letters/{}", ids[1]), &app.admin_key)
        .send()
        .await
        .unwrap());
    ok(app
        .post("/v1/suppressions", &app.admin_key)
        .json(&json!({ "channel": "email", "address": "ann@example.com", "reason": "asked us" }))
        .send()
        .await
        .unwrap());
    ok(app
        .delete("/v1/suppressions/email/ann@example.com", &app.admin_key)
        .send()
        .await
        .unwrap());
    let definition = json!({
        "name": "audited", "version": 1,
        "nodes": [{ "id": "start", "kind": "trigger", "next": "done" },
                  { "id": "done", "kind": "transform", "set": { "x": "1" } }]
    });
    ok(app
        .post("/v1/workflows", &app.admin_key)
        .json(&definition)
        .send()
        .await
        .unwrap());
    // Saving the same version again changes nothing, so it adds no row.
    ok(app
        .post("/v1/workflows", &app.admin_key)
        .json(&definition)
        .send()
        .await
        .unwrap());
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let job: Value = app
        .post("/v1/jobs", &app.service_key)
        .json(&json!({ "queue": "mail", "kind": "send", "payload": {}, "run_at": later }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = job["id"].as_i64().expect("a job id");
    ok(app
        .delete(&format!("/v1/jobs/{job_id}"), &app.service_key)
        .send()
        .await
        .unwrap());
    // A retried DELETE succeeds again, and adds no row: nothing changed.
    ok(app
        .delete(&format!("/v1/jobs/{job_id}"), &app.service_key)
        .send()
        .await
        .unwrap());
    // Actions that fail change nothing, and leave no row.
    let missing = app
        .post("/v1/dead-letters/999999/replay", &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let not_suppressed = app
        .delete("/v1/suppressions/email/nobody@example.com", &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(not_suppressed.status(), StatusCode::NOT_FOUND);

    let rows = audit_log(&app, 3).await;
    let actions: Vec<(String, String, String)> = rows[before..]
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap().to_string(),
                r["actor_name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let row = |action: &str, target: &str, by: &str| (action.into(), target.into(), by.into());
    assert_eq!(
        actions,
        vec![
            row("queue.pause", "mail", "admin"),
            row("queue.resume", "mail", "admin"),
            row(
                "dead_letter.replay",
                &format!("dead_letter:{}", ids[0]),
                "admin"
            ),
            row(
                "dead_letter.delete",
                &format!("dead_letter:{}", ids[1]),
                "admin"
            ),
            row("suppression.add", "email:ann@example.com", "admin"),
            row("suppression.remove", "email:ann@example.com", "admin"),
            row("workflow.save", "workflow:audited@1", "admin"),
            row("job.cancel", &format!("job:{job_id}"), "service"),
        ]
    );
    let pause = &rows[before];
    assert_eq!(pause["actor_kind"], "key");
    assert_eq!(pause["actor_key_id"], key_id(&app, "admin").await);
    assert_eq!(pause["request_id"], "audit-pause-1");
    // Every row names its request: the client's id, or the one the API generated.
    assert!(rows[before..].iter().all(|r| r["request_id"].is_string()));
    assert_eq!(rows[before + 4]["details"]["reason"], "asked us");
    assert_eq!(rows[before + 2]["details"]["replayed"], 1);
    assert_eq!(
        rows[before + 2]["details"]["first"][0]["dead_letter_id"],
        ids[0]
    );

    let filtered = app
        .get_json("/v1/audit?action=suppression.add", &app.admin_key)
        .await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1);
    let by_key = format!("/v1/audit?key_id={}", key_id(&app, "service").await);
    let by_service = app.get_json(&by_key, &app.admin_key).await;
    assert_eq!(by_service["items"].as_array().unwrap().len(), 1);
    let forbidden = app.get("/v1/audit", &app.read_key).send().await.unwrap();
    assert_eq!(
        forbidden.status(),
        StatusCode::FORBIDDEN,
        "reading the audit log is admin"
    );
    let bad = app
        .get("/v1/audit?action=DROP%20TABLE", &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn an_action_whose_audit_row_cannot_be_written_does_not_happen() {
    let app = spawn_app().await;
    // The audit row of a pause fails: the pause must roll back with it (one transaction).
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_pause() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.action = 'queue.pause' THEN RAISE EXCEPTION 'audit refused'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_pause BEFORE INSERT ON herald_audit_log \
           FOR EACH ROW EXECUTE FUNCTION refuse_pause();",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let response = app
        .post("/v1/queues/mail/pause", &app.admin_key)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error(), "{}", response.status());
    let paused: Option<bool> =
        sqlx::query_scalar("SELECT paused FROM herald_queues WHERE name = 'mail'")
            .fetch_optional(&app.db.pool)
            .await
            .unwrap();
    assert_ne!(
        paused,
        Some(true),
        "the pause rolled back with its audit row"
    );
    // The log itself is append-only.
    let tampered = sqlx::query("UPDATE herald_audit_log SET actor_name = 'nobody'")
        .execute(&app.db.pool)
        .await;
    assert!(tampered.unwrap_err().to_string().contains("append-only"));
    let erased = sqlx::query("DELETE FROM herald_audit_log")
        .execute(&app.db.pool)
        .await;
    assert!(erased.is_err(), "rows cannot be deleted");
    // Other actions are unaffected.
    let resume = app
        .post("/v1/queues/mail/resume", &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resume.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_command_line_is_audited_as_its_os_user_and_keys_show_their_last_use() {
    let app = spawn_app().await;
    let herald = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .args(args)
            .env("DATABASE_URL", &app.db.url)
            .env("USER", "ops-alice")
            .env("RUST_LOG", "error");
        command.output().expect("run herald")
    };
    let paused = herald(&["queues", "pause", "cli-queue"]);
    assert!(
        paused.status.success(),
        "{}",
        String::from_utf8_lossy(&paused.stderr)
    );
    let created = herald(&["keys", "create", "--name", "ci-bot", "--scopes", "read"]);
    assert!(created.status.success());
    let listed = herald(&["audit", "--limit", "2"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let rows: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let role: String = sqlx::query_scalar("SELECT session_user::text")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows[0]["action"], "key.create");
    assert_eq!(rows[0]["details"]["name"], "ci-bot");
    assert_eq!(rows[1]["action"], "queue.pause");
    assert_eq!(rows[1]["target"], "cli-queue");
    for row in rows {
        assert_eq!(row["actor_kind"], "cli");
        let name = row["actor_name"].as_str().unwrap();
        assert!(
            name.starts_with("ops-alice (uid "),
            "the claimed user and the real uid: {name}"
        );
        assert_eq!(
            row["db_user"], role,
            "the database role, as the database saw it"
        );
        assert!(row["actor_key_id"].is_null() && row["request_id"].is_null());
    }

    let last_used = |keys: &[herald::api::keys::KeyRecord]| {
        keys.iter()
            .find(|k| k.name == "reader")
            .and_then(|k| k.last_used_at)
    };
    let keys = herald::api::keys::list(&app.db.pool).await.unwrap();
    assert_eq!(last_used(&keys), None, "not used yet");
    let started = chrono::Utc::now();
    let response = app.get("/v1/queues", &app.read_key).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    wait_until(
        Duration::from_secs(10),
        "last_used_at to be set",
        || async {
            let keys = herald::api::keys::list(&app.db.pool).await.unwrap();
            last_used(&keys).is_some_and(|used| used >= started - chrono::Duration::seconds(1))
        },
    )
    .await;
}
