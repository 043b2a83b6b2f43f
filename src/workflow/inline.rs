//! Pure nodes evaluated where the run already is, instead of as node jobs of their own.
//!
//! A condition, branch or transform only evaluates expressions over the run's context. As a job of its own such
//! a node cost a claim, a step read, a step write, an ack and an idle pickup (about 5 ms) per run: far more than
//! the expression. So when a run starts past its trigger, or a node finishes, the pure nodes that follow it are
//! evaluated at once, in the same process, and recorded as completed steps by the same statement that starts the
//! run (`START_RUNS`) or finishes the node (`FINISH_STEPS`). Only the first node that is not pure (an action, a
//! delay, a wait) becomes a job.
//!
//! This gives the result a job would have given only where nothing can change the context in between, so the
//! walk is limited to:
//! * sequential workflows (no edge leads to two nodes): a run then has a single step in flight, and the context
//!   the finishing node read plus its own output is exactly what the next node's job would read. In workflows
//!   with parallel branches another branch could change the context meanwhile, so there every node is a job;
//! * at start, nodes that do not read `run`: a run being inserted has no id yet.
//!
//! A pure node whose expression fails is left to its job, which fails, retries and follows `on_error` as any node
//! does. Each node is visited at most once (definitions are acyclic), so a walk is bounded by the node count, and
//! each expression by its fuel (`expr.rs`).

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::definition::{Node, NodeKind, Workflow};
use super::expr;

/// What a node decided: its outcome and output, the context keys it sets, and the nodes to follow.
pub(super) struct Decision {
    pub outcome: String,
    pub output: Value,
    /// Top-level context keys to set (transforms; the trigger's extracted data).
    pub patch: Map<String, Value>,
    pub next: Vec<String>,
}

impl Decision {
    pub(super) fn new(outcome: &str, output: Value, next: &[String]) -> Self {
        Self {
            outcome: outcome.to_string(),
            output,
            patch: Map::new(),
            next: next.to_vec(),
        }
    }
}

/// Evaluates a pure node (condition, branch, transform) in `scope`; `None` for any other kind. An error is the
/// node's failure.
pub(super) fn decide(node: &Node, scope: &minijinja::Value) -> Option<Result<Decision, String>> {
    let decided = match &node.kind {
        NodeKind::Condition {
            test,
            then,
            otherwise,
        } => test.test(scope).map(|result| {
            let (outcome, next) = if result {
                ("then", then)
            } else {
                ("else", otherwise)
            };
            Decision::new(outcome, json!({ "result": result }), next)
        }),
        NodeKind::Branch { cases, default } => branch(cases, default, scope),
        NodeKind::Transform { set } => transform(set, scope).map(|patch| Decision {
            outcome: "set".into(),
            output: Value::Object(patch.clone()),
            patch,
            next: node.next.clone(),
        }),
        _ => return None,
    };
    Some(decided)
}

fn branch(
    cases: &[(expr::Expr, Vec<String>)],
    default: &[String],
    scope: &minijinja::Value,
) -> Result<Decision, String> {
    for (index, (test, next)) in cases.iter().enumerate() {
        if test.test(scope)? {
            let outcome = format!("case_{index}");
            return Ok(Decision::new(&outcome, json!({ "case": index }), next));
        }
    }
    Ok(Decision::new("default", json!({ "case": null }), default))
}

fn transform(
    set: &[(String, expr::Expr)],
    scope: &minijinja::Value,
) -> Result<Map<String, Value>, String> {
    let mut patch = Map::new();
    for (key, value) in set {
        patch.insert(key.clone(), value.eval_json(scope)?);
    }
    Ok(patch)
}

/// Whether any of a pure node's expressions reads `run`.
fn reads_run(node: &Node) -> bool {
    match &node.kind {
        NodeKind::Condition { test, .. } => test.reads_run(),
        NodeKind::Branch { cases, .. } => cases.iter().any(|(test, _)| test.reads_run()),
        NodeKind::Transform { set } => set.iter().any(|(_, value)| value.reads_run()),
        _ => false,
    }
}

/// A pure node completed by a walk, as `START_RUNS` and `FINISH_STEPS` record it.
#[derive(Debug, Serialize)]
pub(super) struct InlineStep {
    pub node: String,
    pub outcome: String,
    pub output: Value,
}

/// The pure nodes a walk completed, and where it stopped.
#[derive(Debug, Default)]
pub(super) struct Walk {
    /// Completed, in order.
    pub steps: Vec<InlineStep>,
    /// The context keys their transforms set, later ones winning.
    pub patch: Map<String, Value>,
    /// The nodes to run as jobs.
    pub next: Vec<String>,
}

/// Whether a run has an id yet (at start it does not: see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunId {
    Known,
    NotYet,
}

/// Evaluates the pure nodes reached from `next`, updating `context` as their jobs would have (outputs under
/// `nodes`, transforms' keys at the top). `run` is the `run` variable expressions see.
pub(super) fn walk(
    workflow: &Workflow,
    context: &mut Value,
    run: &Value,
    run_id: RunId,
    next: Vec<String>,
) -> Walk {
    let mut walk = Walk {
        next,
        ..Walk::default()
    };
    if !workflow.sequential {
        return walk;
    }
    while walk.steps.len() < workflow.nodes.len() {
        let [id] = walk.next.as_slice() else {
            break;
        };
        let Some(node) = workflow.node(id) else {
            break;
        };
        if run_id == RunId::NotYet && reads_run(node) {
            break;
        }
        let scope = expr::scope(context, run);
        let Some(Ok(decision)) = decide(node, &scope) else {
            break;
        };
        record(context, &node.id, &decision);
        walk.patch.extend(decision.patch);
        walk.steps.push(InlineStep {
            node: node.id.clone(),
            outcome: decision.outcome,
            output: decision.output,
        });
        walk.next = decision.next;
    }
    walk
}

/// Applies a node's decision to the context as `FINISH_STEPS` does: its patch at the top level, its output as
/// `nodes.<id>`.
pub(super) fn record(context: &mut Value, node: &str, decision: &Decision) {
    if !context.is_object() {
        *context = Value::Object(Map::new());
    }
    let Some(map) = context.as_object_mut() else {
        return;
    };
    for (key, value) in &decision.patch {
        map.insert(key.clone(), value.clone());
    }
    let nodes = map
        .entry("nodes")
        .or_insert_with(|| Value::Object(Map::new()));
    if !nodes.is_object() {
        *nodes = Value::Object(Map::new());
    }
    if let Some(nodes) = nodes.as_object_mut() {
        nodes.insert(node.to_string(), decision.output.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::definition::{compile, parse_text};

    fn workflow(yaml: &str) -> Workflow {
        let raw = parse_text("test.yaml", yaml).unwrap();
        compile("test.yaml", &raw).unwrap()
    }

    const CHAIN: &str = r#"
name: chain
version: 1
nodes:
  - { id: start, kind: trigger, fields: { amount: { type: number } }, next: big }
  - { id: big, kind: condition, if: "trigger.amount > 100", then: tag, else: notify }
  - { id: tag, kind: transform, set: { tier: "'gold'" }, next: route }
  - id: route
    kind: branch
    cases: [ { when: "tier == 'gold'", next: notify } ]
    default: notify
  - { id: notify, kind: action, channel: email, to: "a@example.com", content: { subject: "hi" } }
"#;

    /// A walk from one node.
    fn walk_from(
        workflow: &Workflow,
        context: &mut Value,
        run: &Value,
        run_id: RunId,
        node: &str,
    ) -> Walk {
        walk(workflow, context, run, run_id, vec![node.to_string()])
    }

    fn start_context(amount: i64) -> Value {
        json!({ "trigger": { "amount": amount }, "nodes": { "start": { "amount": amount } } })
    }

    #[test]
    fn a_walk_completes_pure_nodes_in_order_and_stops_at_the_first_job() {
        let workflow = workflow(CHAIN);
        let mut context = start_context(500);
        let walked = walk_from(&workflow, &mut context, &json!({}), RunId::NotYet, "big");
        let nodes: Vec<&str> = walked.steps.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(nodes, ["big", "tag", "route"]);
        let outcomes: Vec<&str> = walked.steps.iter().map(|s| s.outcome.as_str()).collect();
        assert_eq!(outcomes, ["then", "set", "case_0"]);
        assert_eq!(walked.next, ["notify"]);
        assert_eq!(
            walked.patch,
            Map::from_iter([("tier".into(), json!("gold"))])
        );
        assert_eq!(context["tier"], "gold");
        assert_eq!(context["nodes"]["big"], json!({ "result": true }));
        assert_eq!(context["nodes"]["route"], json!({ "case": 0 }));

        let mut context = start_context(5);
        let walked = walk_from(&workflow, &mut context, &json!({}), RunId::NotYet, "big");
        assert_eq!(walked.steps.len(), 1);
        assert_eq!(walked.steps[0].outcome, "else");
        assert_eq!(walked.next, ["notify"]);
    }

    #[test]
    fn workflows_with_parallel_branches_run_every_node_as_a_job() {
        let workflow = workflow(
            r#"
name: fan
version: 1
nodes:
  - { id: start, kind: trigger, next: [a, b] }
  - { id: a, kind: condition, if: "true", then: c }
  - { id: b, kind: condition, if: "true", then: c }
  - { id: c, kind: transform, set: { x: "1" } }
"#,
        );
        assert!(!workflow.sequential);
        let mut context = json!({});
        let walked = walk_from(&workflow, &mut context, &json!({}), RunId::Known, "a");
        assert!(walked.steps.is_empty());
        assert_eq!(walked.next, ["a"]);
    }

    #[test]
    fn a_node_that_reads_run_waits_for_the_runs_id_and_a_failing_one_is_left_to_its_job() {
        let workflow = workflow(
            r#"
name: reads
version: 1
nodes:
  - { id: start, kind: trigger, next: odd }
  - { id: odd, kind: condition, if: "run.id % 2 == 1", then: broken }
  - { id: broken, kind: transform, set: { x: "1 / 0" }, next: last }
  - { id: last, kind: transform, set: { y: "2" } }
"#,
        );
        assert!(workflow.sequential);
        let mut context = json!({});
        let at_start = walk_from(&workflow, &mut context, &json!({}), RunId::NotYet, "odd");
        assert!(at_start.steps.is_empty());
        assert_eq!(at_start.next, ["odd"]);

        let run = json!({ "id": 7, "workflow": "reads", "version": 1 });
        let later = walk_from(&workflow, &mut context, &run, RunId::Known, "odd");
        assert_eq!(later.steps.len(), 1);
        assert_eq!(
            later.next,
            ["broken"],
            "the division by zero is left to the node's job"
        );
        assert!(context.get("x").is_none());
    }
}
