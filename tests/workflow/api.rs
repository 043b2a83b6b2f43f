//! The workflow endpoints over HTTP: store a definition, trigger a run, send events, read, list, cancel, retry.

use crate::common;

use std::time::Duration;

use crate::common::spawn_app;
use serde_json::{Value, json};

const DEFINITION: &str = r#"{
  "name": "api_flow", "version": 1,
  "nodes": [
    { "id": "start", "kind": "trigger", "fields": { "user": { "type": "string" } }, "next": "gate" },
    { "id": "gate", "kind": "wait_for_events", "events": ["paid"], "key": "trigger.user", "next": "hello" },
    { "id": "hello", "kind": "transform", "set": { "greeting": "'hi ' ~ trigger.user" } }
  ]
}"#;

/// Starts an `api_flow` run for user `ada` under the idempotency key `signup-1`.
async fn start_ada(app: &common::TestApp) -> reqwest::Response {
    app.post("/v1/workflows/api_flow/runs", &app.service_key)
        .header("Idempotency-Key", "signup-1")
        .json(&json!({ "data": { "user": "ada" } }))
        .send()
        .await
        .unwrap()
}

/// GET `path` with the read key, as JSON.
async fn get_json(app: &common::TestApp, path: &str) -> Value {
    let response = app.get(path, &app.read_key).send().await.unwrap();
    response.json().await.unwrap()
}

#[tokio::test]
async fn store_trigger_event_and_read_a_run_over_http() {
    let app = spawn_app().await;
    let engine = herald::app::App::on_pool(common::settings(), app.db.pool.clone())
        .unwrap()
        .engine;
    let worker = common::RunningWorker::start(
        &app.db.pool,
        common::options(&[("workflows", 4)]),
        herald::app::worker_registry(herald::queue::HandlerRegistry::new(), engine),
    );
    let definition: Value = serde_json::from_str(DEFINITION).unwrap();

    let forbidden = app
        .post("/v1/workflows", &app.service_key)
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(
        forbidden.status(),
        403,
        "storing definitions needs the admin scope"
    );
    let stored = app
        .post("/v1/workflows", &app.admin_key)
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let again = app
        .post("/v1/workflows", &app.admin_key)
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "unchanged");

    let bad = app
        .post("/v1/workflows/api_flow/runs", &app.service_key)
        .json(&json!({ "data": { "user": 5 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "data.user");

    let started = start_ada(&app).await;
    assert_eq!(started.status(), 201);
    let id = started.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let repeat = start_ada(&app).await;
    assert_eq!(repeat.status(), 200);
    assert_eq!(
        repeat.json::<Value>().await.unwrap()["id"].as_i64(),
        Some(id)
    );

    let run_path = format!("/v1/runs/{id}");
    common::wait_until(
        Duration::from_secs(20),
        "run waits for the event",
        || async {
            let run = get_json(&app, &run_path).await;
            run["steps"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["node"] == "gate" && s["status"] == "waiting")
            })
        },
    )
    .await;
    let event = json!({ "id": "pay-1", "name": "paid", "key": "ada", "payload": { "amount": 10 } });
    let accepted = app
        .post("/v1/events", &app.service_key)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    assert_eq!(
        accepted.json::<Value>().await.unwrap()["resumed_runs"],
        json!([id])
    );
    let duplicate = app
        .post("/v1/events", &app.service_key)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), 200);
    assert_eq!(duplicate.json::<Value>().await.unwrap()["duplicate"], true);

    common::wait_until(Duration::from_secs(20), "run completes", || async {
        let run = get_json(&app, &run_path).await;
        run["status"] == "completed"
    })
    .await;
    let run = get_json(&app, &run_path).await;
    assert_eq!(run["context"]["greeting"], "hi ada");
    assert_eq!(
        run["steps"][1]["output"]["events"]["paid"],
        json!({ "amount": 10 })
    );

    let listed = get_json(&app, "/v1/runs?workflow=api_flow&status=completed").await;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(1));
    let bad_status = app
        .get("/v1/runs?status=sleeping", &app.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_status.status(), 422);

    let cancel = app
        .post(&format!("{run_path}/cancel"), &app.service_key)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 409, "a completed run cannot be cancelled");
    let retry = app
        .post(&format!("{run_path}/retry"), &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 409, "only failed runs retry");
    let missing = app
        .get("/v1/runs/999999", &app.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let unknown = app
        .post("/v1/workflows/nope/runs", &app.service_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let listed = get_json(&app, "/v1/workflows").await;
    assert_eq!(listed["workflows"][0]["name"], "api_flow");
    worker.stop().await;
}

#[tokio::test]
async fn a_template_over_budget_without_any_data_is_refused_when_saved() {
    let app = spawn_app().await;
    let definition = json!({
        "name": "spinner", "version": 1,
        "nodes": [
            { "id": "start", "kind": "trigger", "next": "send" },
            { "id": "send", "kind": "action", "channel": "email", "to": "{{ trigger.email }}",
              "content": { "subject": "hi",
                           "text": "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}" } }
        ]
    });
    let response = app
        .post("/v1/workflows", &app.admin_key)
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "nodes.send", "{problem}");
    let message = problem["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("`content.text`") && message.contains("budget"),
        "{message}"
    );
    let stored = get_json(&app, "/v1/workflows").await;
    assert!(!stored.to_string().contains("spinner"), "nothing stored");
}

#[tokio::test]
async fn invalid_definitions_are_refused_with_one_error_per_problem() {
    let app = spawn_app().await;
    let definition = json!({
        "name": "broken", "version": 1,
        "nodes": [
            { "id": "start", "kind": "trigger", "next": "ghost" },
            { "id": "send", "kind": "action", "channel": "fax", "to": "x" }
        ]
    });
    let response = app
        .post("/v1/workflows", &app.admin_key)
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    let errors: Vec<(String, String)> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        errors
            .iter()
            .any(|(f, m)| f == "nodes.send" && m.contains("unknown channel `fax`")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(f, m)| f == "nodes.start" && m.contains("`ghost`")),
        "{errors:?}"
    );

    let v1 = json!({ "name": "v", "version": 1, "nodes": [ { "id": "s", "kind": "trigger" } ] });
    assert_eq!(
        app.post("/v1/workflows", &app.admin_key)
            .json(&v1)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let changed = json!({ "name": "v", "version": 1, "description": "changed", "nodes": [ { "id": "s", "kind": "trigger" } ] });
    let conflict = app
        .post("/v1/workflows", &app.admin_key)
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), 409);
}

#[tokio::test]
async fn trigger_data_of_the_wrong_type_is_named_by_its_json_path() {
    let app = spawn_app().await;
    let definition: Value = serde_json::from_str(DEFINITION).unwrap();
    let stored = app
        .post("/v1/workflows", &app.admin_key)
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let app = &app;
    let first_error = |body: Value| async move {
        let response = app
            .post("/v1/workflows/api_flow/runs", &app.service_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422);
        let problem: Value = response.json().await.unwrap();
        let error = &problem["errors"][0];
        (
            error["field"].as_str().unwrap().to_string(),
            error["message"].as_str().unwrap().to_string(),
        )
    };

    let (field, message) = first_error(json!({ "data": 5 })).await;
    assert_eq!(field, "data", "not data.data");
    assert_eq!(message, "expected an object, got integer `5`");

    let (field, message) = first_error(json!({ "data": { "user": 5 } })).await;
    assert_eq!(
        (field.as_str(), message.as_str()),
        ("data.user", "must be of type string")
    );

    let (field, message) = first_error(json!({ "data": {}, "idempotency_key": 7 })).await;
    assert_eq!(field, "idempotency_key");
    assert_eq!(message, "expected a string, got integer `7`");
}
