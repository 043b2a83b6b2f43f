//! One trace from an HTTP request to the provider call, across processes: an API process and a worker process
//! export their spans over OTLP/HTTP (JSON) to a fake collector; a run started with a caller's `traceparent`
//! header reaches the Slack adapter (against a fake webhook), and every span on the way (the request, the node
//! job's attempt, the node, the provider call) belongs to the caller's trace, as one connected tree.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::{TestDb, free_port, spawn_herald_with, wait_until};
use crate::fake_provider::{FakeProvider, Reply};
use herald::api::keys::{self, Scope};
use serde_json::{Value, json};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
}

/// Every span the collector received (OTLP/JSON export requests).
fn spans(collector: &FakeProvider) -> Vec<Span> {
    let mut found = Vec::new();
    for request in collector.requests() {
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            continue;
        };
        let resource_spans = body["resourceSpans"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for scope in resource_spans
            .iter()
            .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
        {
            for span in scope["spans"].as_array().cloned().unwrap_or_default() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_string();
                found.push(Span {
                    trace: text("traceId"),
                    id: text("spanId"),
                    parent: text("parentSpanId"),
                    name: text("name"),
                });
            }
        }
    }
    found
}

#[tokio::test]
async fn a_trace_runs_from_the_http_request_through_the_node_job_to_the_provider_call() {
    let db = TestDb::new().await;
    let slack = FakeProvider::start(Reply::text(200, "ok")).await;
    let collector = FakeProvider::start(Reply::json(200, json!({}))).await;
    let webhook = format!("{}/services/T/B/traced", slack.url());
    let collector_url = collector.url();
    let api = format!("127.0.0.1:{}", free_port());
    let env = [
        ("HERALD_CHANNELS__SINK", "providers"),
        ("HERALD_CHANNELS__CHAINS__CHAT", "[\"slack\"]"),
        ("HERALD_PROVIDERS__SLACK__WEBHOOKS__ROOM", webhook.as_str()),
        ("HERALD_API__LISTEN", api.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        // Export within a fraction of a second (the default batches for 5 s).
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // The spans are at INFO.
        ("RUST_LOG", "warn,herald=info"),
    ];
    let (key, _) = keys::create(&db.pool, &herald::audit::Actor::cli(), "t", &Scope::ALL)
        .await
        .unwrap();
    let _api = spawn_herald_with(&db.url, &["api"], &env);
    let _worker = spawn_herald_with(&db.url, &["worker", "--queues", "workflows:4"], &env);
    let client = reqwest::Client::new();
    wait_until(Duration::from_secs(30), "the API to answer", || async {
        client
            .get(format!("http://{api}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let definition = json!({
        "name": "traced", "version": 1,
        "nodes": [
            { "id": "start", "kind": "trigger", "fields": {}, "next": "tell" },
            { "id": "tell", "kind": "action", "channel": "chat", "to": "room", "content": { "text": "traced" } }
        ]
    });
    let stored = client
        .post(format!("http://{api}/v1/workflows"))
        .bearer_auth(&key)
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert!(
        stored.status().is_success(),
        "{}",
        stored.text().await.unwrap()
    );

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let started = client
        .post(format!("http://{api}/v1/workflows/traced/runs"))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .json(&json!({ "data": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
    wait_until(
        Duration::from_secs(30),
        "the message to reach Slack",
        || async { slack.request_count() >= 1 },
    )
    .await;

    let wanted = ["request", "job", "node", "provider_call"];
    wait_until(
        Duration::from_secs(30),
        "the spans of the run to reach the collector",
        || async {
            let names: HashSet<String> = spans(&collector)
                .into_iter()
                .filter(|s| s.trace == trace)
                .map(|s| s.name)
                .collect();
            wanted.iter().all(|w| names.contains(*w))
        },
    )
    .await;
    let traced: Vec<Span> = spans(&collector)
        .into_iter()
        .filter(|s| s.trace == trace)
        .collect();
    let by_id: HashMap<&str, &Span> = traced.iter().map(|s| (s.id.as_str(), s)).collect();
    // The request continues the caller's span; every other span hangs from a span of the same trace (one tree,
    // across both processes), and the provider call's ancestry runs back to the request.
    let requests: Vec<&Span> = traced.iter().filter(|s| s.name == "request").collect();
    assert_eq!(requests.len(), 1, "{traced:?}");
    assert_eq!(requests[0].parent, caller_span);
    for span in &traced {
        if span.name != "request" {
            assert!(
                by_id.contains_key(span.parent.as_str()),
                "{span:?} has no parent in {traced:?}"
            );
        }
    }
    let call = traced.iter().find(|s| s.name == "provider_call").unwrap();
    let mut ancestry = vec![call.name.clone()];
    let mut at = call;
    while let Some(parent) = by_id.get(at.parent.as_str()) {
        ancestry.push(parent.name.clone());
        at = parent;
    }
    assert_eq!(ancestry.first().map(String::as_str), Some("provider_call"));
    assert_eq!(
        ancestry.last().map(String::as_str),
        Some("request"),
        "{ancestry:?}"
    );
    for name in ["node", "job"] {
        assert!(ancestry.iter().any(|a| a == name), "{ancestry:?}");
    }
}
