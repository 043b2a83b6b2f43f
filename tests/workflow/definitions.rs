//! Definition validation: each kind of mistake is reported with its file, node and an actionable message; the
//! examples in `jobs/` are valid; versions are immutable in the catalog.

use crate::common;

use crate::common::flows::Flow;
use herald::workflow::definition::{compile, parse_text};
use herald::workflow::{Saved, WorkflowError};

/// Compiles `yaml` and returns its problems as "node: message" lines (empty if valid).
fn problems(yaml: &str) -> Vec<String> {
    let value = parse_text("bad.yaml", yaml).expect("yaml parses");
    match compile("bad.yaml", &value) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn assert_problem(yaml: &str, expected: &str) {
    let found = problems(yaml);
    assert!(
        found.iter().any(|p| p.contains(expected)),
        "expected a problem containing {expected:?}, got {found:#?}"
    );
}

const HEADER: &str = "name: t\nversion: 1\nnodes:\n  - id: start\n    kind: trigger\n    next: a\n";

#[test]
fn the_examples_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/jobs");
    let checked = herald::workflow::catalog::check_dir(std::path::Path::new(dir))
        .expect("examples are valid");
    let mut names: Vec<_> = checked.into_iter().map(|(_, name, _)| name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "new_comments",
            "order_shipped",
            "payment_kyc",
            "release_notes",
            "security_alert",
            "welcome"
        ]
    );
}

#[test]
fn a_valid_minimal_definition_compiles() {
    let yaml = format!("{HEADER}  - id: a\n    kind: transform\n    set: {{ x: '1' }}\n");
    assert_eq!(problems(&yaml), Vec::<String>::new());
}

#[test]
fn unknown_node_kind() {
    let yaml = format!("{HEADER}  - id: a\n    kind: teleport\n");
    assert_problem(
        &yaml,
        "bad.yaml: node `a`: unknown kind `teleport` (one of: trigger, action,",
    );
}

#[test]
fn unknown_field_in_a_node() {
    let yaml =
        format!("{HEADER}  - id: a\n    kind: transform\n    set: {{ x: '1' }}\n    sett: {{}}\n");
    assert_problem(&yaml, "node `a`: unknown field `sett`");
}

#[test]
fn unknown_edge_target() {
    let yaml =
        format!("{HEADER}  - id: a\n    kind: condition\n    if: 'true'\n    then: nowhere\n");
    assert_problem(
        &yaml,
        "node `a`: `then` points at `nowhere`, which is not a node",
    );
}

#[test]
fn cycles_are_refused() {
    let yaml = format!(
        "{HEADER}  - id: a\n    kind: delay\n    duration: 1s\n    next: b\n  - id: b\n    kind: transform\n    set: {{ x: '1' }}\n    next: a\n"
    );
    assert_problem(&yaml, "is on a cycle (a -> b -> a); workflows are acyclic");
}

#[test]
fn unreachable_nodes() {
    let yaml = format!(
        "{HEADER}  - id: a\n    kind: transform\n    set: {{ x: '1' }}\n  - id: island\n    kind: transform\n    set: {{ y: '1' }}\n"
    );
    assert_problem(
        &yaml,
        "node `island`: is unreachable from the trigger `start`",
    );
}

#[test]
fn bad_expressions() {
    let yaml = format!("{HEADER}  - id: a\n    kind: condition\n    if: 'trigger.x =='\n");
    assert_problem(&yaml, "node `a`: `if`: syntax error");
    let yaml = format!("{HEADER}  - id: a\n    kind: transform\n    set: {{ y: 'trigger.(' }}\n");
    assert_problem(&yaml, "node `a`: `set.y`: syntax error");
}

#[test]
fn bad_templates() {
    let yaml = format!(
        "{HEADER}  - id: a\n    kind: action\n    channel: email\n    to: x@example.com\n    content: {{ subject: 'Hi {{{{ trigger.name ' }}\n"
    );
    assert_problem(&yaml, "node `a`: `content.subject`: syntax error");
}

#[test]
fn unknown_channel_and_provider() {
    let yaml = format!("{HEADER}  - id: a\n    kind: action\n    channel: pigeon\n    to: x\n");
    assert_problem(
        &yaml,
        "node `a`: unknown channel `pigeon` (one of: email, sms, push, chat, in_app)",
    );
    let yaml = format!(
        "{HEADER}  - id: a\n    kind: action\n    channel: sms\n    providers: [twilio, sendgrid]\n    to: x\n"
    );
    assert_problem(
        &yaml,
        "node `a`: unknown provider `sendgrid` for channel sms (one of: twilio, sns, vonage)",
    );
}

#[test]
fn trigger_count_and_edges_into_the_trigger() {
    assert_problem(
        "name: t\nversion: 1\nnodes:\n  - id: a\n    kind: delay\n    duration: 1s\n",
        "there is no trigger node",
    );
    let two = format!("{HEADER}  - id: a\n    kind: trigger\n");
    assert_problem(&two, "more than one trigger node");
    let back =
        format!("{HEADER}  - id: a\n    kind: transform\n    set: {{ x: '1' }}\n    next: start\n");
    assert_problem(&back, "node `a`: `next` points at the trigger `start`");
}

#[test]
fn other_mistakes_name_the_node() {
    let duplicate = format!(
        "{HEADER}  - id: a\n    kind: delay\n    duration: 1s\n  - id: a\n    kind: delay\n    duration: 2s\n"
    );
    assert_problem(&duplicate, "node `a`: two nodes have this id");
    let duration = format!("{HEADER}  - id: a\n    kind: delay\n    duration: soon\n");
    assert_problem(&duration, "node `a`: `soon` is not a duration");
    let reserved = format!("{HEADER}  - id: a\n    kind: transform\n    set: {{ trigger: '1' }}\n");
    assert_problem(&reserved, "`set.trigger`: `trigger` is reserved");
    let mode = format!(
        "{HEADER}  - id: a\n    kind: wait_for_events\n    events: [x]\n    key: trigger.k\n    mode: at_least\n"
    );
    assert_problem(&mode, "mode `at_least` needs `count` >= 1");
    let next_on_condition =
        format!("{HEADER}  - id: a\n    kind: condition\n    if: 'true'\n    next: start\n");
    assert_problem(&next_on_condition, "a condition node has no `next`");
    assert_problem(
        "name: t\nversion: 0\nnodes: []\n",
        "`version` must be a positive integer",
    );
}

#[test]
fn digest_mistakes_name_the_field() {
    let digest = |fields: &str| format!("{HEADER}  - id: a\n    kind: digest\n{fields}");
    assert_problem(&digest("    keep: 5\n"), "exactly one of `window`");
    assert_problem(
        &digest("    window: 1h\n    until: \"09:00\"\n"),
        "exactly one of `window`",
    );
    assert_problem(
        &digest("    window: 40 days\n"),
        "`window` must be from 1s to 31 days",
    );
    assert_problem(
        &digest("    until: \"25:00\"\n"),
        "`until` must be a time of day",
    );
    assert_problem(
        &digest("    window: 1h\n    keep: 0\n"),
        "`keep` must be from 1 to 100",
    );
    assert_problem(&digest("    window: 1h\n    key: \"{{ x\"\n"), "`key`");
    assert_problem(&digest("    window: 1h\n    batch: 3\n"), "batch");
    assert!(
        problems(&digest(
            "    until: \"09:00\"\n    keep: 20\n    send_first: true\n"
        ))
        .is_empty()
    );
}

#[test]
fn throttle_mistakes_name_the_field() {
    let throttle = |fields: &str| format!("{HEADER}  - id: a\n    kind: throttle\n{fields}");
    assert_problem(
        &throttle("    limit: 0\n    window: 1h\n"),
        "`limit` must be from 1 to 10000",
    );
    assert_problem(
        &throttle("    limit: 1\n    window: 40 days\n"),
        "`window` must be from 1s to 31 days",
    );
    assert_problem(
        &throttle("    limit: 1\n    window: soon\n"),
        "is not a duration",
    );
    assert_problem(
        &throttle("    limit: 1\n    window: 1h\n    on_limit: queue\n"),
        "`on_limit` is `skip` or `delay`",
    );
    assert_problem(
        &throttle("    limit: 1\n    window: 1h\n    key: \"{{ x\"\n"),
        "`key`",
    );
    assert!(
        problems(&throttle(
            "    limit: 5\n    window: 10m\n    on_limit: delay\n"
        ))
        .is_empty()
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = format!(
        "{HEADER}  - id: a\n    kind: teleport\n  - id: b\n    kind: action\n    channel: pigeon\n    to: x\n"
    );
    let found = problems(&yaml);
    assert!(
        found.len() >= 3,
        "unknown kind, unknown channel, missing `a`: {found:#?}"
    );
}

#[tokio::test]
async fn versions_are_immutable_and_resaving_the_same_content_is_a_no_op() {
    let flow = Flow::without_worker(&[]).await;
    let yaml = format!("{HEADER}  - id: a\n    kind: transform\n    set: {{ x: '1' }}\n");
    let value = parse_text("t.yaml", &yaml).unwrap();
    let (_, saved) = flow
        .engine
        .catalog
        .save(&herald::audit::Actor::cli(), "t.yaml", &value)
        .await
        .unwrap();
    assert_eq!(saved, Saved::Created);
    let (_, again) = flow
        .engine
        .catalog
        .save(&herald::audit::Actor::cli(), "t.yaml", &value)
        .await
        .unwrap();
    assert_eq!(again, Saved::Unchanged);
    let changed = parse_text("t.yaml", &yaml.replace("x: '1'", "x: '2'")).unwrap();
    let refused = flow
        .engine
        .catalog
        .save(&herald::audit::Actor::cli(), "t.yaml", &changed)
        .await
        .expect_err("same version, new content");
    assert!(
        matches!(refused, WorkflowError::VersionConflict { ref name, version: 1 } if name == "t"),
        "{refused}"
    );
    assert!(refused.to_string().contains("bump `version`"));
}

#[tokio::test]
async fn syncing_a_folder_stores_nothing_if_any_file_is_invalid() {
    let flow = Flow::without_worker(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.yaml"),
        format!("{HEADER}  - id: a\n    kind: delay\n    duration: 1s\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: bad\nversion: 1\nnodes:\n  - id: x\n    kind: nope\n",
    )
    .unwrap();
    let error = flow
        .engine
        .catalog
        .sync_dir(&herald::audit::Actor::cli(), dir.path())
        .await
        .expect_err("bad.yaml is invalid");
    let text = error.to_string();
    assert!(
        text.contains("bad.yaml: node `x`: unknown kind `nope`"),
        "{text}"
    );
    let stored = common::scalar_i64(&flow.db.pool, "SELECT count(*) FROM herald_workflows").await;
    assert_eq!(stored, 0);
    std::fs::remove_file(dir.path().join("bad.yaml")).unwrap();
    let synced = flow
        .engine
        .catalog
        .sync_dir(&herald::audit::Actor::cli(), dir.path())
        .await
        .unwrap();
    assert_eq!(synced.len(), 1);
    let listed = flow.engine.catalog.list().await.unwrap();
    assert_eq!(
        (
            listed[0].name.as_str(),
            listed[0].latest_version,
            listed[0].versions
        ),
        ("t", 1, 1)
    );
}

/// A chain `start -> n1 -> n2 -> ... -> n{len}`, whose last node points back at `n1` when `closed`.
fn chain(len: usize, closed: bool) -> serde_json::Value {
    let mut nodes = vec![serde_json::json!({"id": "start", "kind": "trigger", "next": "n1"})];
    for i in 1..=len {
        let next = if i < len {
            Some(format!("n{}", i + 1))
        } else if closed {
            Some("n1".to_string())
        } else {
            None
        };
        let mut node =
            serde_json::json!({"id": format!("n{i}"), "kind": "delay", "duration": "1s"});
        if let Some(next) = next {
            node["next"] = serde_json::Value::String(next);
        }
        nodes.push(node);
    }
    serde_json::json!({"name": "long", "version": 1, "nodes": nodes})
}

fn compile_problems(definition: &serde_json::Value) -> Vec<String> {
    match compile("long.json", definition) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// Security finding 8: the recursive cycle search overflowed the stack on a long chain (100,000 nodes aborted
/// the process). The node count is bounded, and the search is iterative.
#[test]
fn a_very_long_chain_is_refused_without_overflowing_the_stack() {
    let limit = herald::workflow::definition::MAX_NODES;
    let found = compile_problems(&chain(100_000, true));
    assert!(
        found
            .iter()
            .any(|p| p.contains(&format!("at most {limit} nodes"))),
        "{found:?}"
    );
    // At the limit, a cycle closing at the far end is still found.
    let found = compile_problems(&chain(limit - 1, true));
    assert!(
        found.iter().any(|p| p.contains("is on a cycle")),
        "{found:?}"
    );
    assert!(compile_problems(&chain(limit - 1, false)).is_empty());
}
