//! The HTTP API through a real HTTP client against the real router on a random port and a real database.

use std::time::Duration;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].as_str().unwrap().starts_with("/problems/"));
    assert!(body["title"].is_string() && body["detail"].is_string());
    body
}

fn a_job() -> Value {
    json!({"queue": "emails", "kind": "herald.log", "payload": {"to": "ada@example.com"}})
}

#[tokio::test]
async fn health_is_public_and_ready_checks_the_database() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn enqueue_creates_a_job_that_can_be_read_back_with_its_request_id() {
    let app = spawn_app().await;
    let response = app
        .post("/v1/jobs", &app.service_key)
        .json(&a_job())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "inserted");
    let id = body["id"].as_i64().unwrap();

    let job: Value = app
        .get(&format!("/v1/jobs/{id}"), &app.read_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "available");
    assert_eq!(job["payload"]["to"], "ada@example.com");
    assert_eq!(
        job["request_id"],
        request_id.as_str(),
        "the request id is stored with the job"
    );
}

#[tokio::test]
async fn authentication_and_scopes_are_enforced() {
    let app = spawn_app().await;
    let missing = app
        .client
        .post(app.url("/v1/jobs"))
        .json(&a_job())
        .send()
        .await
        .unwrap();
    problem(missing, StatusCode::UNAUTHORIZED).await;
    let unknown = app
        .post("/v1/jobs", "hk_not_a_key")
        .json(&a_job())
        .send()
        .await
        .unwrap();
    problem(unknown, StatusCode::UNAUTHORIZED).await;
    let wrong_scope = app
        .post("/v1/jobs", &app.read_key)
        .json(&a_job())
        .send()
        .await
        .unwrap();
    let body = problem(wrong_scope, StatusCode::FORBIDDEN).await;
    assert!(body["detail"].as_str().unwrap().contains("enqueue"));
    let admin_only = app
        .post("/v1/queues/emails/pause", &app.service_key)
        .send()
        .await
        .unwrap();
    problem(admin_only, StatusCode::FORBIDDEN).await;
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    problem(metrics, StatusCode::UNAUTHORIZED).await;

    // Revoked keys stop working (key_cache_secs = 0 in the test settings).
    let keys = herald::api::keys::list(&app.db.pool).await.unwrap();
    let reader = keys.iter().find(|k| k.name == "reader").unwrap();
    assert!(
        herald::api::keys::revoke(&app.db.pool, &herald::audit::Actor::cli(), reader.id)
            .await
            .unwrap()
    );
    let revoked = app.get("/v1/queues", &app.read_key).send().await.unwrap();
    problem(revoked, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn bad_input_gets_a_problem_naming_what_is_wrong() {
    let app = spawn_app().await;
    let malformed = app
        .post("/v1/jobs", &app.service_key)
        .header("content-type", "application/json")
        .body("{\"queue\": ")
        .send()
        .await
        .unwrap();
    problem(malformed, StatusCode::BAD_REQUEST).await;

    let not_json = app
        .post("/v1/jobs", &app.service_key)
        .body("queue=emails")
        .send()
        .await
        .unwrap();
    problem(not_json, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;

    let wrong_type = app
        .post("/v1/jobs", &app.service_key)
        .json(&json!({"queue": "emails", "kind": "k", "priority": "high"}))
        .send()
        .await
        .unwrap();
    let body = problem(wrong_type, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "priority");

    let invalid = app
        .post("/v1/jobs", &app.service_key)
        .json(&json!({"queue": "bad queue", "kind": "", "priority": 12}))
        .send()
        .await
        .unwrap();
    let body = problem(invalid, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["queue", "kind", "priority"]);

    let unknown_field = app
        .post("/v1/jobs", &app.service_key)
        .json(&json!({"queue": "q", "kind": "k", "colour": "red"}))
        .send()
        .await
        .unwrap();
    problem(unknown_field, StatusCode::UNPROCESSABLE_ENTITY).await;

    let too_big = app
        .post("/v1/jobs", &app.service_key)
        .json(&json!({"queue": "q", "kind": "k", "payload": {"blob": "x".repeat(70_000)}}))
        .send()
        .await
        .unwrap();
    problem(too_big, StatusCode::PAYLOAD_TOO_LARGE).await;

    let bad_id = app.get("/v1/jobs/abc", &app.read_key).send().await.unwrap();
    problem(bad_id, StatusCode::BAD_REQUEST).await;
    let no_route = app.get("/v1/nothing", &app.read_key).send().await.unwrap();
    problem(no_route, StatusCode::NOT_FOUND).await;
    let wrong_method = app.client.put(app.url("/v1/jobs")).send().await.unwrap();
    problem(wrong_method, StatusCode::METHOD_NOT_ALLOWED).await;
}

/// The one field error of a 422 (or 400) problem: its `field` and `message`.
async fn field_error(response: reqwest::Response, status: StatusCode) -> (String, String) {
    let body = problem(response, status).await;
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    let text = |key: &str| errors[0][key].as_str().unwrap().to_string();
    (text("field"), text("message"))
}

#[tokio::test]
async fn validation_errors_name_the_json_path_in_json_terms() {
    let app = spawn_app().await;
    let send =
        |path: &'static str, body: Value| app.post(path, &app.service_key).json(&body).send();

    let wrong_type = send(
        "/v1/jobs",
        json!({"queue": "q", "kind": "k", "priority": "x"}),
    );
    let (field, message) =
        field_error(wrong_type.await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(field, "priority");
    assert!(message.starts_with("expected an integer"), "{message}");

    let missing = send("/v1/jobs", json!({"kind": "k"}));
    let (field, message) =
        field_error(missing.await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!((field.as_str(), message.as_str()), ("queue", "is required"));

    let nested = send(
        "/v1/jobs/batch",
        json!({"jobs": [{"queue": "q", "kind": "k"}, {"queue": "q"}]}),
    );
    let (field, message) =
        field_error(nested.await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        (field.as_str(), message.as_str()),
        ("jobs[1].kind", "is required")
    );

    let unknown = send(
        "/v1/jobs",
        json!({"queue": "q", "kind": "k", "colour": "red"}),
    );
    let (field, message) =
        field_error(unknown.await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(field, "colour");
    assert!(message.starts_with("is not a known field"), "{message}");

    let not_an_array = send("/v1/jobs/batch", json!({"jobs": [5]}));
    let (field, message) = field_error(
        not_an_array.await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        (field.as_str(), message.as_str()),
        ("jobs[0]", "expected an object, got integer `5`")
    );

    let bad_id = app.get("/v1/jobs/abc", &app.read_key).send().await.unwrap();
    let (field, message) = field_error(bad_id, StatusCode::BAD_REQUEST).await;
    assert_eq!(
        (field.as_str(), message.as_str()),
        ("id", "expected an integer, got `abc`")
    );

    for body in [
        json!({"queue": "q", "kind": "k", "max_attempts": "3"}),
        json!({"queue": 5, "kind": "k"}),
        json!({"jobs": {"queue": "q"}}),
        json!(5),
    ] {
        let path = if body.get("jobs").is_some() {
            "/v1/jobs/batch"
        } else {
            "/v1/jobs"
        };
        let (_, message) = field_error(
            send(path, body).await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        for rust_type in ["i64", "String", "struct", "sequence", "map"] {
            assert!(!message.contains(rust_type), "{message}");
        }
    }
}

#[tokio::test]
async fn batch_enqueue_reports_each_item_and_enforces_the_maximum() {
    let app = spawn_app().await;
    let jobs: Vec<Value> = (0..10)
        .map(|i| json!({"queue": "q", "kind": "k", "payload": {"i": i}}))
        .collect();
    let mut with_keys = jobs.clone();
    with_keys[0]["idempotency_key"] = json!("batch-key");
    with_keys[1]["idempotency_key"] = json!("batch-key");
    let response = app
        .post("/v1/jobs/batch", &app.service_key)
        .json(&json!({"jobs": with_keys}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let statuses: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses[0], "inserted");
    assert_eq!(statuses[1], "conflict", "same key, different payload");
    assert!(statuses[2..].iter().all(|s| *s == "inserted"));
    assert_eq!(live_jobs(&app.db.pool).await, 9);

    let too_many: Vec<Value> = (0..101)
        .map(|_| json!({"queue": "q", "kind": "k"}))
        .collect();
    let response = app
        .post("/v1/jobs/batch", &app.service_key)
        .json(&json!({"jobs": too_many}))
        .send()
        .await
        .unwrap();
    let body = problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "jobs");

    let one_bad =
        json!({"jobs": [{"queue": "q", "kind": "k"}, {"queue": "q", "kind": "k", "priority": 99}]});
    let response = app
        .post("/v1/jobs/batch", &app.service_key)
        .json(&one_bad)
        .send()
        .await
        .unwrap();
    let body = problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "jobs[1].priority");
    assert_eq!(
        live_jobs(&app.db.pool).await,
        9,
        "a batch with a bad item inserts nothing"
    );
}

#[tokio::test]
async fn idempotency_key_replays_the_original_and_flags_a_different_body() {
    let app = spawn_app().await;
    let send = |body: Value| {
        app.post("/v1/jobs", &app.service_key)
            .header("idempotency-key", "signup-42")
            .json(&body)
            .send()
    };
    let first = send(a_job()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = send(a_job()).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        (again["id"].clone(), again["status"].clone()),
        (first["id"].clone(), json!("duplicate"))
    );
    let different =
        send(json!({"queue": "emails", "kind": "herald.log", "payload": {"to": "bob"}}))
            .await
            .unwrap();
    problem(different, StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_create_one_job() {
    let app = spawn_app().await;
    let requests = (0..12).map(|_| {
        app.post("/v1/jobs", &app.service_key)
            .header("idempotency-key", "race")
            .json(&a_job())
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for response in responses {
        let response = response.unwrap();
        created += usize::from(response.status() == StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        ids.insert(body["id"].as_i64().unwrap());
    }
    assert_eq!((created, ids.len()), (1, 1));
    assert_eq!(live_jobs(&app.db.pool).await, 1);
}

#[tokio::test]
async fn cancel_and_queue_pause_resume() {
    let app = spawn_app().await;
    let body: Value = app
        .post("/v1/jobs", &app.service_key)
        .json(&a_job())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = body["id"].as_i64().unwrap();

    let paused: Value = app
        .post("/v1/queues/emails/pause", &app.admin_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paused, json!({"name": "emails", "paused": true}));
    let queues: Value = app
        .get("/v1/queues", &app.read_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            queues[0]["name"].clone(),
            queues[0]["paused"].clone(),
            queues[0]["available"].clone()
        ),
        (json!("emails"), json!(true), json!(1))
    );
    let resumed = app
        .post("/v1/queues/emails/resume", &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);
    let bad_name = app
        .post("/v1/queues/bad%20name/pause", &app.admin_key)
        .send()
        .await
        .unwrap();
    problem(bad_name, StatusCode::UNPROCESSABLE_ENTITY).await;

    let cancelled = app
        .delete(&format!("/v1/jobs/{id}"), &app.service_key)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::NO_CONTENT);
    let job: Value = app
        .get(&format!("/v1/jobs/{id}"), &app.read_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "cancelled");
    // Cancelling is idempotent: a retried DELETE is answered 204 again; an id that was never a job is 404.
    let again = app
        .delete(&format!("/v1/jobs/{id}"), &app.service_key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    let unknown = app
        .delete("/v1/jobs/424242", &app.service_key)
        .send()
        .await
        .unwrap();
    problem(unknown, StatusCode::NOT_FOUND).await;
    let missing = app
        .get("/v1/jobs/424242", &app.read_key)
        .send()
        .await
        .unwrap();
    problem(missing, StatusCode::NOT_FOUND).await;
}

/// Puts `n` jobs straight into the dead letters.
pub async fn dead_letters(app: &TestApp, n: usize) {
    use herald::queue::lease::{self, AttemptError, Settlement};
    app.db
        .enqueue(
            (0..n)
                .map(|i| job("mail", "send", json!({"i": i})))
                .collect(),
        )
        .await;
    let claimed = lease::claim(
        &app.db.pool,
        &queue("mail"),
        n,
        Duration::from_secs(30),
        uuid::Uuid::new_v4(),
    )
    .await
    .unwrap();
    let error = |attempt| AttemptError {
        attempt,
        kind: "permanent",
        message: "bounced".into(),
        at: chrono::Utc::now(),
    };
    let batch: Vec<_> = claimed
        .iter()
        .map(|j| (j.id, j.lease_token, Settlement::Dead { error: error(1) }))
        .collect();
    lease::settle(&app.db.pool, &batch, Duration::from_secs(60))
        .await
        .unwrap();
}

#[tokio::test]
async fn dead_letters_paginate_replay_and_delete() {
    let app = spawn_app().await;
    dead_letters(&app, 5).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/dead-letters?limit=2&cursor={c}"),
            None => "/v1/dead-letters?limit=2".into(),
        };
        let page: Value = app
            .get(&path, &app.read_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats: {seen:?}"
    );
    problem(
        app.get("/v1/dead-letters?limit=0", &app.read_key)
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        app.get("/v1/dead-letters?cursor=zzz", &app.read_key)
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    let one = seen[0];
    let letter: Value = app
        .get(&format!("/v1/dead-letters/{one}"), &app.read_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(letter["errors"][0]["message"], "bounced");
    let replayed = app
        .post(&format!("/v1/dead-letters/{one}/replay"), &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), StatusCode::OK);
    let twice = app
        .post(&format!("/v1/dead-letters/{one}/replay"), &app.admin_key)
        .send()
        .await
        .unwrap();
    problem(twice, StatusCode::CONFLICT).await;
    let by_reader = app
        .post(&format!("/v1/dead-letters/{one}/replay"), &app.read_key)
        .send()
        .await
        .unwrap();
    problem(by_reader, StatusCode::FORBIDDEN).await;

    let all: Value = app
        .post("/v1/dead-letters/replay", &app.admin_key)
        .json(&json!({"queue": "mail"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["replayed"], 4);
    assert_eq!(live_jobs(&app.db.pool).await, 5);

    let deleted = app
        .delete(&format!("/v1/dead-letters/{one}"), &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    problem(
        app.get(&format!("/v1/dead-letters/{one}"), &app.read_key)
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.delete(&format!("/v1/dead-letters/{one}"), &app.admin_key)
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn workers_metrics_and_the_openapi_document() {
    let app = spawn_app().await;
    let me = herald::queue::lease::WorkerIdentity::of_this_process(vec!["q".into()], 2);
    herald::queue::lease::heartbeat(&app.db.pool, &me, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let workers: Value = app
        .get("/v1/workers", &app.read_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(workers[0]["id"], me.id.to_string());

    app.post("/v1/jobs", &app.service_key)
        .json(&a_job())
        .send()
        .await
        .unwrap();
    let metrics = app
        .get("/metrics", &app.metrics_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("herald_jobs_enqueued_total{queue=\"emails\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "herald_http_requests_total{method=\"POST\",route=\"/v1/jobs\",status=\"201\"} 1"
    ));

    let spec: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/jobs",
        "/v1/jobs/batch",
        "/v1/jobs/{id}",
        "/v1/queues",
        "/v1/queues/{name}/pause",
        "/v1/queues/{name}/resume",
        "/v1/dead-letters",
        "/v1/dead-letters/{id}",
        "/v1/dead-letters/{id}/replay",
        "/v1/dead-letters/replay",
        "/v1/workers",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn the_per_key_rate_limit_answers_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.api.rate_limit_per_second = std::num::NonZeroU32::MIN;
        s.api.rate_limit_burst = std::num::NonZeroU32::new(2).unwrap();
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = app.get("/v1/queues", &app.read_key).send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().contains_key("retry-after"));
        }
        statuses.push(response.status());
    }
    assert_eq!(statuses[..2], [StatusCode::OK, StatusCode::OK]);
    assert!(statuses[2..].contains(&StatusCode::TOO_MANY_REQUESTS));
    let other_key = app.get("/v1/queues", &app.admin_key).send().await.unwrap();
    assert_eq!(other_key.status(), StatusCode::OK, "limits are per key");
}

#[tokio::test]
async fn an_unreachable_database_is_a_503_with_retry_after() {
    let app = spawn_app().await;
    app.db.pool.close().await;
    let response = app.get("/v1/queues", &app.read_key).send().await.unwrap();
    let retry_after = response.headers().get("retry-after").cloned();
    problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(retry_after.is_some());
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_and_then_stops_serving() {
    let app = spawn_app().await;
    // An uncommitted transaction holding an idempotency key makes a request with that key wait inside the
    // handler (the enqueue waits for the key's row lock): a request that is certainly in flight.
    let mut blocker = app.db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO herald_idempotency_keys (key, job_id) VALUES ('held', -1)")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let in_flight = {
        let request = app
            .post("/v1/jobs", &app.service_key)
            .header("idempotency-key", "held")
            .json(&a_job());
        tokio::spawn(request.send())
    };
    wait_until(Duration::from_secs(10), "the request to wait on the key's lock", || async {
        scalar_i64(&app.db.pool, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()").await == 1
    })
    .await;
    app.shutdown.cancel();
    blocker.rollback().await.unwrap();

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was answered, not cut off");
    assert_eq!(response.status(), StatusCode::CREATED);
    let health = app.url("/healthz");
    tokio::time::timeout(Duration::from_secs(15), app.server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        app.client.get(health).send().await.is_err(),
        "no longer serving"
    );
}

#[tokio::test]
async fn a_payload_postgres_cannot_store_fails_alone_among_coalesced_requests() {
    let app = spawn_app().await;
    let bad = json!({"queue": "q", "kind": "k", "payload": {"text": "a\u{0}b"}});
    let mut requests = vec![app.post("/v1/jobs", &app.service_key).json(&bad).send()];
    requests.extend((0..10).map(|_| app.post("/v1/jobs", &app.service_key).json(&a_job()).send()));
    let mut responses = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap);
    let refused = responses.next().unwrap();
    let body = problem(refused, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(body["detail"].as_str().unwrap().contains("cannot store"));
    assert!(
        responses.all(|r| r.status() == StatusCode::CREATED),
        "its neighbours were written"
    );
    assert_eq!(live_jobs(&app.db.pool).await, 10);
}

/// PostgreSQL prints a `jsonb` number as an exact decimal (309 digits for the largest double); reading it back must
/// give the number that was sent, not "number out of range" (schemathesis found a 500 on `GET /v1/jobs/{id}`).
#[tokio::test]
async fn extreme_numbers_in_a_payload_read_back_as_sent() {
    let app = spawn_app().await;
    let numbers = json!([
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        5e-324,
        1.7e308,
        u64::MAX,
        i64::MIN
    ]);
    let job = json!({"queue": "q", "kind": "k", "payload": {"numbers": numbers}});
    let created = app
        .post("/v1/jobs", &app.service_key)
        .json(&job)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let read = app
        .get(&format!("/v1/jobs/{id}"), &app.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(
        read.json::<Value>().await.unwrap()["payload"]["numbers"],
        numbers
    );
}
