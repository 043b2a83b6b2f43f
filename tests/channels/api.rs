//! The channel layer over HTTP: provider overview with circuit states, the suppression list, a run's deliveries,
//! and the open-circuit gauge in /metrics.

use crate::common::spawn_app_with;
use serde_json::{Value, json};

#[tokio::test]
async fn providers_show_their_chain_position_rates_and_the_fleets_circuit_state() {
    let app = spawn_app_with(|s| {
        s.channels.chains.chat = vec!["slack".into(), "discord".into()];
        s.providers.0.insert(
            "slack".into(),
            json!({ "webhooks": { "ops": "https://hooks.example/secret" }, "rate_per_sec": 5, "destination_rate_per_sec": 1 }),
        );
        s.providers.0.insert("discord".into(), json!({ "webhooks": { "ops": "https://discord.example/secret" } }));
    })
    .await;
    let providers: Value = app.get_json("/v1/providers", &app.read_key).await;
    let slack = providers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "slack")
        .unwrap();
    assert_eq!(
        (
            &slack["channel"],
            &slack["chain_position"],
            &slack["rate_per_sec"],
            &slack["state"]
        ),
        (&json!("chat"), &json!(0), &json!(5.0), &json!("closed"))
    );
    assert!(
        !providers.to_string().contains("secret"),
        "webhook URLs never leave the process"
    );

    // One worker's circuit opened (as its recorder writes it): the fleet view and the gauge show it.
    sqlx::query(
        "INSERT INTO herald_provider_circuits (provider, worker_id, state, consecutive_failures, open_until, last_error) \
         VALUES ('slack', gen_random_uuid(), 'open', 5, now() + interval '30 seconds', '503')",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let providers: Value = app.get_json("/v1/providers", &app.read_key).await;
    let slack = providers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "slack")
        .unwrap();
    assert_eq!(slack["state"], "open");
    assert_eq!(slack["circuits"][0]["last_error"], "503");
    let metrics = app.get_text("/metrics", &app.metrics_key).await;
    assert!(
        metrics.contains("herald_provider_circuits_open{provider=\"slack\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn operators_manage_the_suppression_list() {
    let app = spawn_app_with(|_| {}).await;
    let add = |body: Value| {
        app.post("/v1/suppressions", &app.admin_key)
            .json(&body)
            .send()
    };
    let added = add(
        json!({ "channel": "email", "address": "gone@example.com", "reason": "asked by legal" }),
    )
    .await
    .unwrap();
    assert_eq!(added.status(), 204);
    let list: Value = app.get_json("/v1/suppressions", &app.read_key).await;
    assert_eq!(list[0]["address"], "gone@example.com");
    assert_eq!(list[0]["reason"], "asked by legal");

    let bad = add(json!({ "channel": "pigeon", "address": "x" }))
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let reader = app
        .post("/v1/suppressions", &app.read_key)
        .json(&json!({ "channel": "sms", "address": "+1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(reader.status(), 403, "adding needs the admin scope");

    let path = "/v1/suppressions/email/gone@example.com";
    assert_eq!(
        app.delete(path, &app.admin_key)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        app.delete(path, &app.admin_key)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn a_runs_deliveries_are_listed() {
    let app = spawn_app_with(|_| {}).await;
    let empty: Value = app.get_json("/v1/runs/42/deliveries", &app.read_key).await;
    assert_eq!(empty, json!([]));
    let bad = app
        .get("/v1/runs/abc/deliveries", &app.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
