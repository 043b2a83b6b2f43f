//! Workflow runs: a filtered list, and a run's page: the workflow's node graph with each node coloured by what
//! it did in this run, the timeline (steps, provider attempts, delivery status changes), the deliveries, the
//! run's context, and retry (a failed run, from its failed node) and cancel. Through the engine's `get_run`,
//! `list_runs`, `cancel_run`, `retry_run` and `channels::deliveries::for_run`, as `/v1/runs` uses them.

use std::collections::{BTreeMap, HashMap, VecDeque};

use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::html::{done, encode, esc, esc_short, given, pretty, query, table, time, time_or_dash};
use super::{
    ActionForm, ApiState, PageQuery, Session, action_button, failure, page, refuse_action,
};
use crate::api::error::ApiError;
use crate::api::extract::ApiPath;
use crate::channels::deliveries::{self, Delivery};
use crate::recipients::RecipientId;
use crate::workflow::definition::edges;
use crate::workflow::{RunFilter, RunStatus, RunView, StepStatus, Workflow, valid_name};

/// Runs a list page shows.
const PAGE: i64 = 50;

#[derive(Deserialize, Default)]
pub(super) struct RunQuery {
    workflow: Option<String>,
    status: Option<String>,
    recipient: Option<String>,
    /// Read as a number here, so that a bad one is ignored alone (not the whole query).
    before: Option<String>,
}

/// Runs, newest first, filtered by workflow, status and recipient.
pub(super) async fn list(
    State(state): State<ApiState>,
    Session(caller): Session,
    PageQuery(q): PageQuery<RunQuery>,
) -> Response {
    // A filter that is not a workflow name, a status or a recipient id is refused, never dropped (a list silently
    // widened to every run would mislead).
    let owned = |value: &Option<String>| given(value).map(str::to_string);
    let workflow = owned(&q.workflow);
    let recipient = owned(&q.recipient);
    if let Some(w) = workflow.as_deref().filter(|w| !valid_name(w)) {
        return failure(
            Some(&caller),
            ApiError::field("workflow", format!("{w:?} is not a workflow name")),
        );
    }
    if let Some(r) = recipient
        .as_deref()
        .filter(|r| RecipientId::parse(r).is_err())
    {
        return failure(
            Some(&caller),
            ApiError::field("recipient", format!("{r:?} is not a recipient id")),
        );
    }
    let status = match owned(&q.status) {
        Some(s) => match RunStatus::parse(&s) {
            Some(status) => Some(status),
            None => {
                return failure(
                    Some(&caller),
                    ApiError::field("status", format!("{s:?} is not a run status")),
                );
            }
        },
        None => None,
    };
    let filter = RunFilter {
        workflow: workflow.clone(),
        status,
        recipient: recipient.clone(),
        before: q.before.as_deref().and_then(|b| b.trim().parse().ok()),
        // One more than a page tells whether there is an older page.
        limit: PAGE + 1,
    };
    let mut runs = match state.engine.list_runs(&filter).await {
        Ok(runs) => runs,
        Err(error) => return failure(Some(&caller), error),
    };
    let more = runs.len() as i64 > PAGE;
    runs.truncate(PAGE as usize);
    let (workflow, recipient) = (workflow.as_deref(), recipient.as_deref());
    let rows = run_rows(&runs);
    let options: String = std::iter::once(("", "any"))
        .chain(RunStatus::ALL.iter().map(|s| (s.as_str(), s.as_str())))
        .map(|(value, label)| {
            let selected = if Some(value) == status.map(RunStatus::as_str)
                || (value.is_empty() && status.is_none())
            {
                " selected"
            } else {
                ""
            };
            format!(r#"<option value="{value}"{selected}>{label}</option>"#)
        })
        .collect();
    let older = match runs.last() {
        Some(last) if more => format!(
            r#"<p><a href="/ui/runs{}">Older runs →</a></p>"#,
            query(&[
                ("workflow", workflow),
                ("status", status.map(RunStatus::as_str)),
                ("recipient", recipient),
                ("before", Some(&last.id.to_string())),
            ])
        ),
        _ => String::new(),
    };
    let body = format!(
        r#"<form class="filters" method="get" action="/ui/runs"><label>Workflow<input name="workflow" value="{workflow}"></label><label>Status<select name="status">{options}</select></label><label>Recipient<input name="recipient" value="{recipient}"></label><button type="submit">Filter</button></form>{table}{older}"#,
        workflow = esc(workflow.unwrap_or("")),
        recipient = esc(recipient.unwrap_or("")),
        table = runs_table("runs", &rows),
    );
    page("Runs", Some(&caller), &body)
}

/// Rows of a run list (also the recipient page's).
pub(super) fn run_rows(runs: &[RunView]) -> String {
    runs.iter()
        .map(|run| {
            format!(
                r#"<tr data-id="{id}"><td><a href="/ui/runs/{id}">{id}</a></td><td>{workflow} <span class="wide">v{version}</span></td><td class="{class}">{status}</td><td>{failed}</td><td class="wide">{created}</td><td>{finished}</td></tr>"#,
                id = run.id,
                workflow = esc(&run.workflow),
                version = run.version,
                class = status_class(run.status.as_str()),
                status = run.status.as_str(),
                failed = run
                    .failed_node
                    .as_deref()
                    .map_or(String::new(), |n| format!("{}: {}", esc(n), esc_short(run.error.as_deref().unwrap_or(""), 80))),
                created = time(run.created_at),
                finished = time_or_dash(run.finished_at),
            )
        })
        .collect()
}

pub(super) fn runs_table(id: &str, rows: &str) -> String {
    table(
        id,
        &[
            "Run",
            "Workflow",
            "Status",
            "Failed at",
            "~Started",
            "Finished",
        ],
        rows,
        "No runs.",
    )
}

/// The CSS class of a status word: good, bad or neither.
fn status_class(status: &str) -> &'static str {
    match status {
        "completed" | "sent" | "delivered" => "good",
        "failed" | "bounced" | "dead" => "bad",
        "skipped" | "suppressed" | "unknown" | "cancelled" => "warn",
        _ => "",
    }
}

/// One run: graph, timeline, deliveries, context; retry and cancel for admins.
pub(super) async fn run_page(
    State(state): State<ApiState>,
    Session(caller): Session,
    ApiPath(id): ApiPath<i64>,
    PageQuery(q): PageQuery<DoneQuery>,
) -> Response {
    let run = match state.engine.get_run(id).await {
        Ok(run) => run,
        Err(error) => return failure(Some(&caller), error),
    };
    let sends = match deliveries::for_run(&state.pool, id).await {
        Ok(sends) => sends,
        Err(error) => return failure(Some(&caller), error),
    };
    // A definition that cannot be read (removed by hand) leaves the rest of the page useful.
    let graph = match state
        .engine
        .catalog
        .version(&run.workflow, run.version)
        .await
    {
        Ok(workflow) => graph(&workflow, &run),
        Err(error) => format!(
            r#"<p class="warn">No graph: {}</p>"#,
            esc(&error.to_string())
        ),
    };
    let mut actions = String::new();
    if caller.admin {
        if run.status == RunStatus::Failed {
            actions.push_str(&action_button(
                &caller,
                &format!("/ui/runs/{id}/retry"),
                "retry",
                "Retry from the failed node",
            ));
        }
        if run.status == RunStatus::Running {
            actions.push_str(&action_button(
                &caller,
                &format!("/ui/runs/{id}/cancel"),
                "cancel",
                "Cancel the run",
            ));
        }
    }
    let actions = if actions.is_empty() {
        actions
    } else {
        format!(r#"<div class="actions">{actions}</div>"#)
    };
    let recipient = run
        .context
        .pointer("/recipient/id")
        .and_then(|v| v.as_str())
        .map_or("–".to_string(), |r| {
            format!(r#"<a href="/ui/recipients/{}">{}</a>"#, encode(r), esc(r))
        });
    let body = format!(
        r#"{notice}<dl><dt>Workflow</dt><dd><a href="/ui/runs?workflow={wf_q}">{workflow}</a> v{version}</dd><dt>Status</dt><dd id="status" class="{class}">{status}</dd><dt>Recipient</dt><dd>{recipient}</dd><dt>Epoch</dt><dd>{epoch}</dd><dt>Started</dt><dd>{created}</dd><dt>Finished</dt><dd>{finished}</dd><dt>Failed node</dt><dd>{failed}</dd><dt>Error</dt><dd>{error}</dd><dt>Idempotency key</dt><dd>{key}</dd></dl>{actions}<h2>Graph</h2>{graph}<h2>Timeline</h2>{timeline}<h2>Deliveries</h2>{deliveries}<h2>Context</h2><pre>{context}</pre>"#,
        notice = done(q.done.as_deref()),
        wf_q = encode(&run.workflow),
        workflow = esc(&run.workflow),
        version = run.version,
        class = status_class(run.status.as_str()),
        status = run.status.as_str(),
        epoch = run.epoch,
        created = time(run.created_at),
        finished = time_or_dash(run.finished_at),
        failed = esc(run.failed_node.as_deref().unwrap_or("–")),
        error = esc(run.error.as_deref().unwrap_or("–")),
        key = esc(run.idempotency_key.as_deref().unwrap_or("–")),
        timeline = timeline(&run, &sends),
        deliveries = delivery_table("deliveries", &sends),
        context = pretty(&run.context),
    );
    page(&format!("Run {id}"), Some(&caller), &body)
}

#[derive(Deserialize, Default)]
pub(super) struct DoneQuery {
    done: Option<String>,
}

/// Retry (a failed run, from its failed node) or cancel (a running run): admin, the session's token; audited
/// by the engine as `run.retry` and `run.cancel`.
pub(super) async fn run_action(
    State(state): State<ApiState>,
    Session(caller): Session,
    ApiPath((id, action)): ApiPath<(i64, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refused) = refuse_action(&caller, &form.csrf) {
        return refused;
    }
    let outcome = match action.as_str() {
        "retry" => state
            .engine
            .retry_run(&caller.actor, id)
            .await
            .map(|_| "retrying"),
        "cancel" => state
            .engine
            .cancel_run(&caller.actor, id)
            .await
            .map(|_| "cancelled"),
        _ => return failure(Some(&caller), ApiError::not_found("no such action")),
    };
    match outcome {
        Ok(code) => Redirect::to(&format!("/ui/runs/{id}?done={code}")).into_response(),
        Err(error) => failure(Some(&caller), error),
    }
}

/// A table of deliveries with their provider attempts (the run page's and the support pages').
pub(super) fn delivery_table(id: &str, sends: &[Delivery]) -> String {
    let rows: String = sends
        .iter()
        .map(|d| {
            let attempts: Vec<String> = d
                .attempts
                .as_array()
                .map(|a| a.iter().map(attempt_text).collect())
                .unwrap_or_default();
            format!(
                r#"<tr data-id="{id}"><td><a href="/ui/runs/{run}">{run}</a> · {node}</td><td>{recipient}</td><td>{channel}</td><td class="{class}">{status}</td><td>{provider}</td><td>{attempts}</td><td>{error}</td><td class="wide">{at}</td></tr>"#,
                id = d.id,
                run = d.run_id,
                node = esc(&d.node_id),
                recipient = esc_short(&d.recipient, 60),
                channel = esc(&d.channel),
                class = status_class(d.status.as_str()),
                status = d.status.as_str(),
                provider = esc(d.provider.as_deref().unwrap_or("–")),
                attempts = attempts.join("<br>"),
                error = esc_short(d.error.as_deref().unwrap_or(""), 160),
                at = time(d.created_at),
            )
        })
        .collect();
    table(
        id,
        &[
            "Run · node",
            "To",
            "Channel",
            "Status",
            "Provider",
            "Provider attempts",
            "Reason",
            "~At",
        ],
        &rows,
        "No deliveries.",
    )
}

/// One provider attempt as a line: `sendgrid: failed (503, 120 ms)`.
fn attempt_text(attempt: &serde_json::Value) -> String {
    let field = |name: &str| attempt.get(name).and_then(|v| v.as_str()).unwrap_or("");
    let latency = attempt
        .get("latency_ms")
        .and_then(serde_json::Value::as_u64)
        .map_or(String::new(), |ms| format!(", {ms} ms"));
    let reason = field("reason");
    let reason = if reason.is_empty() {
        String::new()
    } else {
        format!(": {}", esc_short(reason, 80))
    };
    format!(
        "{}: {}{reason}{latency}",
        esc(field("provider")),
        esc(field("outcome"))
    )
}

/// The run's story in time order: each step's start and end, each delivery status change, each provider
/// attempt. An attempt recorded without its time is placed just after its delivery went `sending` (attempts are
/// made while it is). Every detail is escaped once, where it is made.
fn timeline(run: &RunView, sends: &[Delivery]) -> String {
    // (time, node, event, detail as HTML)
    let mut events: Vec<(DateTime<Utc>, String, String, String)> = Vec::new();
    for step in &run.steps {
        let node = format!("{} (epoch {})", step.node, step.epoch);
        if let Some(at) = step.started_at {
            events.push((
                at,
                node.clone(),
                "started".into(),
                format!("attempt {}", step.attempts),
            ));
        }
        if let Some(at) = step.finished_at {
            let what = match &step.outcome {
                Some(outcome) => format!("{}: {outcome}", step.status.as_str()),
                None => step.status.as_str().to_string(),
            };
            let error = esc_short(step.error.as_deref().unwrap_or(""), 200);
            events.push((at, node, what, error));
        } else if step.started_at.is_none() {
            events.push((
                step.enqueued_at,
                node,
                step.status.as_str().to_string(),
                String::new(),
            ));
        }
    }
    let time_of = |v: &serde_json::Value| {
        v.get("at")
            .and_then(|a| a.as_str())
            .and_then(|a| DateTime::parse_from_rfc3339(a).ok())
            .map(|a| a.with_timezone(&Utc))
    };
    let text = |v: &serde_json::Value, name: &str| {
        v.get(name)
            .and_then(|f| f.as_str())
            .unwrap_or("")
            .to_string()
    };
    for d in sends {
        let node = format!("{} → {}", d.node_id, d.channel);
        let mut sending = d.created_at;
        for change in d.history.as_array().into_iter().flatten() {
            let at = time_of(change).unwrap_or(d.updated_at);
            let status = text(change, "status");
            if status == "sending" {
                sending = at;
            }
            let detail = [text(change, "source"), text(change, "reason")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            events.push((
                at,
                node.clone(),
                format!("delivery {status}"),
                esc_short(&detail, 160),
            ));
        }
        for attempt in d.attempts.as_array().into_iter().flatten() {
            let at = time_of(attempt).unwrap_or(sending);
            events.push((
                at,
                node.clone(),
                "provider attempt".into(),
                attempt_text(attempt),
            ));
        }
    }
    // Stable: of events at the same instant, a delivery's `sending` stays before its attempts.
    events.sort_by_key(|e| e.0);
    // A run retried many times, or pushing to many devices, has a long story: the page shows its latest part.
    let dropped = events.len().saturating_sub(MAX_TIMELINE);
    let rows: String = events[dropped..]
        .iter()
        .map(|(at, node, what, detail)| {
            format!(
                r#"<tr><td class="n">{}</td><td>{}</td><td>{}</td><td>{detail}</td></tr>"#,
                at.format("%H:%M:%S%.3f"),
                esc(node),
                esc(what)
            )
        })
        .collect();
    let earlier = if dropped > 0 {
        format!(
            "<p>{dropped} earlier events are not shown (the API has them: <code>GET /v1/runs/{{id}}</code>).</p>"
        )
    } else {
        String::new()
    };
    earlier
        + &table(
            "timeline",
            &["#Time (UTC)", "Node", "Event", "Detail"],
            &rows,
            "Nothing happened yet.",
        )
}

/// The most timeline rows a run page shows.
const MAX_TIMELINE: usize = 2_000;

/// How a node did in this run: the colour and word of its latest step in the run's current epoch (an earlier
/// epoch's step shows faded; a node the run never reached is white).
fn node_state(run: &RunView) -> HashMap<&str, (StepStatus, Option<&str>, bool)> {
    let mut states = HashMap::new();
    for step in &run.steps {
        let current = step.epoch == run.epoch;
        let keep = match states.get(step.node.as_str()) {
            Some((_, _, was_current)) => current || !was_current,
            None => true,
        };
        if keep {
            states.insert(
                step.node.as_str(),
                (step.status, step.outcome.as_deref(), current),
            );
        }
    }
    states
}

fn node_fill(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Completed => "#cdeccf",
        StepStatus::Failed => "#f6c4c4",
        StepStatus::Cancelled => "#e2e3e6",
        StepStatus::Running | StepStatus::Pending => "#cfe0f6",
        StepStatus::Waiting => "#fbe3b8",
    }
}

const NODE_W: f64 = 150.0;
const NODE_H: f64 = 46.0;
const GAP_X: f64 = 50.0;
const GAP_Y: f64 = 22.0;

/// The workflow as layers left to right (each node at its shortest distance from the trigger), as SVG: boxes
/// coloured by the node's state in this run, arrows labelled with the edge's field when it is not `next`.
fn graph(workflow: &Workflow, run: &RunView) -> String {
    let mut depth: HashMap<&str, usize> = HashMap::new();
    let mut queue = VecDeque::from([(workflow.trigger.as_str(), 0usize)]);
    while let Some((id, d)) = queue.pop_front() {
        if depth.contains_key(id) {
            continue;
        }
        depth.insert(id, d);
        if let Some(node) = workflow.node(id) {
            for (_, target) in edges(node) {
                if !depth.contains_key(target) {
                    queue.push_back((target, d + 1));
                }
            }
        }
    }
    // Nodes no edge reaches from the trigger (a definition's leftovers) go in a last column.
    let last = depth.values().copied().max().unwrap_or(0) + 1;
    let mut layers: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    let mut ids: Vec<&str> = workflow.nodes.keys().map(String::as_str).collect();
    ids.sort_unstable();
    for id in ids {
        layers
            .entry(*depth.get(id).unwrap_or(&last))
            .or_default()
            .push(id);
    }
    // Fewer crossings: each column in the order of the mean row of the nodes that lead to it (the barycentre
    // heuristic), column by column from the trigger; ties by id.
    let mut parents: HashMap<&str, Vec<&str>> = HashMap::new();
    for node in workflow.nodes.values() {
        for (_, target) in edges(node) {
            parents.entry(target).or_default().push(node.id.as_str());
        }
    }
    let mut row_of: HashMap<&str, f64> = HashMap::new();
    for nodes in layers.values_mut() {
        let weight = |id: &str| {
            let rows: Vec<f64> = parents
                .get(id)
                .into_iter()
                .flatten()
                .filter_map(|p| row_of.get(p).copied())
                .collect();
            if rows.is_empty() {
                f64::MAX
            } else {
                rows.iter().sum::<f64>() / rows.len() as f64
            }
        };
        let mut keyed: Vec<(f64, &str)> = nodes.iter().map(|id| (weight(id), *id)).collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        *nodes = keyed.into_iter().map(|(_, id)| id).collect();
        for (row, id) in nodes.iter().enumerate() {
            row_of.insert(id, row as f64);
        }
    }
    let mut position: HashMap<&str, (f64, f64)> = HashMap::new();
    for (column, (_, nodes)) in layers.iter().enumerate() {
        for (row, id) in nodes.iter().enumerate() {
            position.insert(
                id,
                (
                    10.0 + column as f64 * (NODE_W + GAP_X),
                    10.0 + row as f64 * (NODE_H + GAP_Y),
                ),
            );
        }
    }
    let width = 20.0 + layers.len() as f64 * (NODE_W + GAP_X) - GAP_X;
    let tallest = layers.values().map(Vec::len).max().unwrap_or(1) as f64;
    let height = 20.0 + tallest * (NODE_H + GAP_Y) - GAP_Y;
    let states = node_state(run);
    let mut arrows = String::new();
    let mut boxes = String::new();
    let mut sorted: Vec<&crate::workflow::definition::Node> = workflow.nodes.values().collect();
    sorted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    for node in sorted {
        let Some(&(x, y)) = position.get(node.id.as_str()) else {
            continue;
        };
        for (label, target) in edges(node) {
            let Some(&(tx, ty)) = position.get(target) else {
                continue;
            };
            let taken = states.contains_key(node.id.as_str()) && states.contains_key(target);
            let (x1, y1, x2, y2) = (x + NODE_W, y + NODE_H / 2.0, tx, ty + NODE_H / 2.0);
            arrows.push_str(&format!(
                r##"<path d="M{x1:.0},{y1:.0} C{c1:.0},{y1:.0} {c2:.0},{y2:.0} {x2:.0},{y2:.0}" fill="none" stroke="{stroke}" stroke-width="{w}" marker-end="url(#arrow)"/>"##,
                c1 = x1 + GAP_X / 2.0,
                c2 = x2 - GAP_X / 2.0,
                stroke = if taken { "#1d2330" } else { "#9aa0ad" },
                w = if taken { 2 } else { 1 },
            ));
            if label != "next" {
                arrows.push_str(&format!(
                    r#"<text x="{:.0}" y="{:.0}" font-size="10" text-anchor="middle">{}</text>"#,
                    (x1 + x2) / 2.0,
                    (y1 + y2) / 2.0 - 4.0,
                    esc(label)
                ));
            }
        }
        let (fill, word, opacity) = match states.get(node.id.as_str()) {
            Some((status, outcome, current)) => (
                node_fill(*status),
                outcome.map_or(status.as_str().to_string(), |o| {
                    format!("{}: {o}", status.as_str())
                }),
                if *current { "1" } else { "0.5" },
            ),
            None => ("#ffffff", "not reached".to_string(), "1"),
        };
        boxes.push_str(&format!(
            r##"<g class="node" data-node="{id}" data-state="{word}" opacity="{opacity}"><title>{id} ({kind}): {word}</title><rect x="{x:.0}" y="{y:.0}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{fill}" stroke="#1d2330"/><text x="{tx:.0}" y="{ty1:.0}" font-size="12" font-weight="600">{label}</text><text x="{tx:.0}" y="{ty2:.0}" font-size="10">{kind} · {short}</text></g>"##,
            id = esc(&node.id),
            word = esc(&word),
            kind = node.kind.name(),
            label = esc_short(&node.id, 17),
            short = esc_short(&word, 16),
            tx = x + 8.0,
            ty1 = y + 19.0,
            ty2 = y + 36.0,
        ));
    }
    let legend = [
        ("completed", StepStatus::Completed),
        ("failed", StepStatus::Failed),
        ("running or pending", StepStatus::Running),
        ("waiting", StepStatus::Waiting),
        ("cancelled", StepStatus::Cancelled),
    ]
    .iter()
    .map(|(label, status)| {
        format!(
            r#"<span><span class="swatch" style="background:{}"></span>{label}</span>"#,
            node_fill(*status)
        )
    })
    .collect::<String>();
    format!(
        r##"<figure id="graph"><div class="scroll"><svg viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" role="img" aria-labelledby="graph-title"><title id="graph-title">The nodes of {workflow} and what each did in this run</title><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#1d2330"/></marker></defs>{arrows}{boxes}</svg></div><figcaption class="legend">{legend}<span><span class="swatch" style="background:#fff;border:1px solid #1d2330"></span>not reached</span></figcaption></figure>"##,
        workflow = esc(&workflow.name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::DeliveryStatus;
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_timeline_interleaves_steps_provider_attempts_and_status_changes_in_time_order() {
        let run = RunView {
            id: 1,
            workflow: "w".into(),
            version: 1,
            status: RunStatus::Completed,
            epoch: 1,
            pending: 0,
            context: json!({}),
            idempotency_key: None,
            failed_node: None,
            error: None,
            created_at: at("2026-12-03T10:00:00Z"),
            updated_at: at("2026-12-03T10:00:05Z"),
            finished_at: Some(at("2026-12-03T10:00:05Z")),
            steps: vec![crate::workflow::StepView {
                node: "email".into(),
                epoch: 1,
                status: StepStatus::Completed,
                outcome: Some("sent".into()),
                output: None,
                error: None,
                attempts: 1,
                enqueued_at: at("2026-12-03T10:00:00Z"),
                started_at: Some(at("2026-12-03T10:00:01Z")),
                finished_at: Some(at("2026-12-03T10:00:04Z")),
            }],
        };
        let delivery = Delivery {
            id: 9,
            run_id: 1,
            node_id: "email".into(),
            recipient: "ada@example.com".into(),
            channel: "email".into(),
            status: DeliveryStatus::Sent,
            provider: Some("ses".into()),
            provider_message_id: Some("m-1".into()),
            attempts: json!([
                {"provider": "sendgrid", "outcome": "transient", "reason": "<503>", "latency_ms": 120},
                {"provider": "ses", "outcome": "sent", "latency_ms": 40}
            ]),
            history: json!([
                {"status": "sending", "at": "2026-12-03T10:00:02Z", "source": "send"},
                {"status": "sent", "at": "2026-12-03T10:00:03.5Z", "source": "send"}
            ]),
            error: None,
            created_at: at("2026-12-03T10:00:01.5Z"),
            updated_at: at("2026-12-03T10:00:03.5Z"),
        };
        let html = timeline(&run, &[delivery]);
        let order = [
            "email (epoch 1)</td><td>started",
            "delivery sending",
            "sendgrid: transient: &lt;503&gt;, 120 ms",
            "ses: sent, 40 ms",
            "delivery sent",
            "completed: sent",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|part| {
                html.find(part)
                    .unwrap_or_else(|| panic!("{part} in {html}"))
            })
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{html}");
        assert!(
            !html.contains("<503>"),
            "a provider's reason is escaped once"
        );
        assert!(!html.contains("&amp;lt;"), "and not twice");
    }
}
