//! The workflow engine's metrics, scraped from the processes that did the work after a known workload: the API
//! process counts the runs it started (those that completed at once, and the one it cancelled), the worker process
//! the runs its node jobs completed or failed and the node executions; whichever of them leads the queue-stats
//! election, the runs waiting for events.

use std::time::Duration;

use crate::common::flows::Flow;
use crate::common::{free_ports, metric_sample, spawn_herald_with, wait_until};
use herald::api::keys::{self, Scope};
use serde_json::json;

const GREET: &str = r#"
name: m_greet
version: 1
nodes:
  - id: start
    kind: trigger
    fields: { n: { type: number } }
    next: positive
  - id: positive
    kind: condition
    if: trigger.n > 0
    then: hello
  - id: hello
    kind: action
    channel: chat
    to: room
    content: { text: "hi" }
"#;

/// `100 / 0` fails for good: the transform's job fails the run.
const BROKEN: &str = r#"
name: m_broken
version: 1
nodes:
  - id: start
    kind: trigger
    fields: { d: { type: number } }
    next: divide
  - id: divide
    kind: transform
    set: { x: "100 / trigger.d" }
"#;

const PARKED: &str = r#"
name: m_parked
version: 1
nodes:
  - id: start
    kind: trigger
    fields: { k: { type: string } }
    next: gate
  - id: gate
    kind: wait_for_events
    events: [go]
    key: trigger.k
"#;

#[tokio::test]
async fn the_api_and_worker_processes_count_runs_nodes_and_waiting_runs() {
    let flow = Flow::without_worker(&[GREET, BROKEN, PARKED]).await;
    let db = &flow.db;
    let (key, _) = keys::create(&db.pool, &herald::audit::Actor::cli(), "m", &Scope::ALL)
        .await
        .unwrap();
    let ports = free_ports(2);
    let (api, worker) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    // Both take part in the queue-stats election: either may count the waiting runs, every second.
    let _api_process = spawn_herald_with(
        &db.url,
        &["api"],
        &[
            ("HERALD_API__LISTEN", &api),
            ("HERALD_METRICS__QUEUE_STATS_SECS", "1"),
        ],
    );
    let _worker_process = spawn_herald_with(
        &db.url,
        &["worker", "--queues", "workflows:8"],
        &[
            ("HERALD_METRICS__LISTEN", &worker),
            ("HERALD_METRICS__QUEUE_STATS_SECS", "1"),
        ],
    );
    let client = reqwest::Client::new();
    let scrape = |address: &str| {
        let request = client
            .get(format!("http://{address}/metrics"))
            .bearer_auth(&key);
        async move {
            match request.send().await {
                Ok(response) if response.status() == 200 => {
                    response.text().await.unwrap_or_default()
                }
                _ => String::new(),
            }
        }
    };
    wait_until(Duration::from_secs(30), "the API to answer", || async {
        !scrape(&api).await.is_empty()
    })
    .await;

    let start = |workflow: &str, data: serde_json::Value| {
        let request = client
            .post(format!("http://{api}/v1/workflows/{workflow}/runs"))
            .bearer_auth(&key)
            .json(&json!({ "data": data }));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 201);
            response.json::<serde_json::Value>().await.unwrap()["id"]
                .as_i64()
                .unwrap()
        }
    };
    for n in [1, 2, 3, 4, 0, 0] {
        start("m_greet", json!({ "n": n })).await;
    }
    start("m_broken", json!({ "d": 0 })).await;
    let parked = start("m_parked", json!({ "k": "k1" })).await;

    // Both processes take part in the queue-stats election: whichever leads exports the fleet's waiting runs, the
    // other 0 (dashboards take the max).
    let waiting = || async {
        let (api_body, worker_body) = (scrape(&api).await, scrape(&worker).await);
        let gauge = |body: &str| metric_sample(body, "herald_workflow_waiting_runs", &[]);
        let exported = api_body.contains("herald_workflow_waiting_runs")
            && worker_body.contains("herald_workflow_waiting_runs");
        exported.then(|| gauge(&api_body).max(gauge(&worker_body)))
    };

    // The worker's side: 4 greetings sent (runs completed by their action), 1 run failed, 1 wait registered.
    let text = std::cell::RefCell::new(String::new());
    let (text_ref, scrape_ref, worker_ref) = (&text, &scrape, &worker);
    wait_until(
        Duration::from_secs(30),
        "the worker's counts to reach the workload",
        move || async move {
            let body = scrape_ref(worker_ref).await;
            // Every count the assertions below read (each is incremented after its own commit).
            let nodes = "herald_workflow_node_executions_total";
            let parked = [("kind", "wait_for_events"), ("result", "recorded")];
            let sent = [("kind", "action"), ("result", "completed")];
            let failed = [("kind", "transform"), ("result", "failed")];
            let done = metric_sample(&body, "herald_workflow_runs_finished_total", &[]) >= 5.0
                && metric_sample(&body, nodes, &parked) >= 1.0
                && metric_sample(&body, nodes, &sent) >= 4.0
                && metric_sample(&body, nodes, &failed) >= 1.0;
            *text_ref.borrow_mut() = body;
            done
        },
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "the fleet's waiting runs to read 1",
        || async { waiting().await == Some(1.0) },
    )
    .await;
    let body = text.borrow().clone();
    let count = |name: &str, labels: &[(&str, &str)]| metric_sample(&body, name, labels);
    let finished = "herald_workflow_runs_finished_total";
    assert_eq!(
        count(
            finished,
            &[("workflow", "m_greet"), ("status", "completed")]
        ),
        4.0
    );
    assert_eq!(
        count(finished, &[("workflow", "m_broken"), ("status", "failed")]),
        1.0
    );
    assert_eq!(
        count(finished, &[]),
        5.0,
        "nothing else finished on the worker"
    );
    let nodes = "herald_workflow_node_executions_total";
    assert_eq!(
        count(nodes, &[("kind", "action"), ("result", "completed")]),
        4.0
    );
    assert_eq!(
        count(nodes, &[("kind", "transform"), ("result", "failed")]),
        1.0
    );
    assert_eq!(
        count(
            nodes,
            &[("kind", "wait_for_events"), ("result", "recorded")]
        ),
        1.0
    );
    assert_eq!(
        count("herald_workflow_runs_started_total", &[]),
        0.0,
        "the worker started no run"
    );

    // The API's side: every run it started, the two that completed at once (n = 0: the condition had nowhere to
    // go), the trigger and condition evaluated at start.
    let body = scrape(&api).await;
    let count = |name: &str, labels: &[(&str, &str)]| metric_sample(&body, name, labels);
    let started = "herald_workflow_runs_started_total";
    assert_eq!(count(started, &[("workflow", "m_greet")]), 6.0);
    assert_eq!(count(started, &[("workflow", "m_broken")]), 1.0);
    assert_eq!(count(started, &[("workflow", "m_parked")]), 1.0);
    assert_eq!(
        count(
            finished,
            &[("workflow", "m_greet"), ("status", "completed")]
        ),
        2.0
    );
    assert_eq!(
        count(nodes, &[("kind", "trigger"), ("result", "completed")]),
        8.0
    );
    assert_eq!(
        count(nodes, &[("kind", "condition"), ("result", "completed")]),
        6.0
    );
    // Each start batch took a pooled connection and began its transaction: timed (pool waits show there).
    assert!(count("herald_db_begin_seconds_count", &[]) >= 1.0);

    // Cancelled through the API: counted there; the leader's waiting count drops back.
    let cancelled = client
        .post(format!("http://{api}/v1/runs/{parked}/cancel"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let body = scrape(&api).await;
    assert_eq!(
        metric_sample(
            &body,
            finished,
            &[("workflow", "m_parked"), ("status", "cancelled")]
        ),
        1.0
    );
    wait_until(
        Duration::from_secs(15),
        "the waiting count to drop",
        || async { waiting().await == Some(0.0) },
    )
    .await;
    flow.stop().await;
}
