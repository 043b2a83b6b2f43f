//! Workflow definitions: parsed from YAML or JSON, validated as a whole, compiled into a [`Workflow`].
//!
//! A definition is data (see `docs/workflows.md`): a name, a version, and nodes. Each node has an `id`, a
//! `kind` and the edges it may follow (`next`, `then`/`else`, `cases`, `on_timeout`, `on_error`). Validation
//! reports every problem at once, each naming the file and node, so a person can fix them in one pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::expr::{Expr, Template};
use crate::channels::ChannelKind;
use crate::recipients::quiet_hours::Window;

/// Context keys the engine owns; a transform may not overwrite them.
pub const RESERVED_KEYS: [&str; 4] = ["trigger", "nodes", "run", "recipient"];

/// One problem in a definition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DefinitionError {
    /// Where the definition came from: a file path, or `request`.
    pub source: String,
    /// The node at fault, if the problem is in one node.
    pub node: Option<String>,
    pub message: String,
}

impl std::fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.node {
            Some(node) => write!(f, "{}: node `{node}`: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// A validated, compiled workflow version.
#[derive(Debug)]
pub struct Workflow {
    pub name: String,
    pub version: i32,
    pub description: Option<String>,
    /// What kind of notification this is (`marketing`, `product`, `security`, …): recipients' preferences can
    /// switch a category off.
    pub category: Option<String>,
    /// Sends bypass recipients' opt-outs and quiet hours (password resets, security alerts).
    pub critical: bool,
    /// The id of the trigger node, where every run starts.
    pub trigger: String,
    pub nodes: HashMap<String, Node>,
    /// No edge leads to more than one node, so a run has at most one step in flight (see `inline.rs`).
    pub sequential: bool,
    /// The definition as stored (JSON), for `GET /v1/workflows`.
    pub definition: Value,
}

impl Workflow {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }

    pub fn trigger_fields(&self) -> &BTreeMap<String, Field> {
        match self.nodes.get(&self.trigger).map(|n| &n.kind) {
            Some(NodeKind::Trigger { fields }) => fields,
            _ => unreachable!("compile() guarantees the trigger node"),
        }
    }
}

#[derive(Debug)]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    /// Followed when the node completes (trigger, action, transform, delay, wait_for_events; a throttle that
    /// lets the run through).
    pub next: Vec<String>,
    /// Followed instead of failing the run when the node exhausts its attempts.
    pub on_error: Option<String>,
}

#[derive(Debug)]
pub enum NodeKind {
    Trigger {
        fields: BTreeMap<String, Field>,
    },
    Action {
        channel: ChannelKind,
        providers: Vec<String>,
        to: Addressee,
        /// A template of the catalogue (`template: order-shipped`), rendered for the channel and the recipient's
        /// locale; `content` fields, if any, override its fields.
        template: Option<String>,
        content: BTreeMap<String, Template>,
        /// Bypasses the recipient's opt-outs and quiet hours (or the whole workflow is `critical`).
        critical: bool,
        /// Quiet hours: send only inside this window of the recipient's day (their time zone).
        window: Option<Window>,
    },
    Condition {
        test: Expr,
        then: Vec<String>,
        otherwise: Vec<String>,
    },
    Branch {
        cases: Vec<(Expr, Vec<String>)>,
        default: Vec<String>,
    },
    Transform {
        set: Vec<(String, Expr)>,
    },
    Delay(DelaySpec),
    WaitForEvents(WaitSpec),
    Throttle(ThrottleSpec),
    Digest(DigestSpec),
}

impl NodeKind {
    /// The node's first template or expression that fails its save-time budget check, as (field, problem);
    /// `dry_runs` counts the checks that ran anything, and none run once it reaches [`MAX_DRY_RUNS`].
    fn budget_problem(&self, dry_runs: &mut usize) -> Option<(String, String)> {
        let mut templates: Vec<(String, &Template)> = Vec::new();
        if let NodeKind::Throttle(ThrottleSpec { key: Some(key), .. })
        | NodeKind::Digest(DigestSpec { key: Some(key), .. }) = self
        {
            templates.push(("key".to_string(), key));
        }
        if let NodeKind::Action { to, content, .. } = self {
            if let Addressee::Raw(to) | Addressee::Recipient(to) = to {
                templates.push(("to".to_string(), to));
            }
            for (field, compiled) in content {
                templates.push((format!("content.{field}"), compiled));
            }
        }
        for (field, template) in templates {
            if !template.is_heavy() || *dry_runs >= MAX_DRY_RUNS {
                continue;
            }
            *dry_runs += 1;
            if let Err(problem) = template.check_budget() {
                return Some((field, problem));
            }
        }
        let expressions: Vec<(String, &Expr)> = match self {
            NodeKind::Condition { test, .. } => vec![("test".into(), test)],
            NodeKind::Branch { cases, .. } => cases
                .iter()
                .enumerate()
                .map(|(i, (e, _))| (format!("cases[{i}].when"), e))
                .collect(),
            NodeKind::Transform { set } => {
                set.iter().map(|(k, e)| (format!("set.{k}"), e)).collect()
            }
            NodeKind::Delay(DelaySpec::Until(e)) => vec![("until".into(), e)],
            NodeKind::WaitForEvents(wait) => vec![("key".into(), &wait.key)],
            _ => Vec::new(),
        };
        for (field, expression) in expressions {
            if !expression.is_heavy() || *dry_runs >= MAX_DRY_RUNS {
                continue;
            }
            *dry_runs += 1;
            if let Err(problem) = expression.check_budget() {
                return Some((field, problem));
            }
        }
        None
    }

    pub fn name(&self) -> &'static str {
        match self {
            NodeKind::Trigger { .. } => "trigger",
            NodeKind::Action { .. } => "action",
            NodeKind::Condition { .. } => "condition",
            NodeKind::Branch { .. } => "branch",
            NodeKind::Transform { .. } => "transform",
            NodeKind::Delay(_) => "delay",
            NodeKind::WaitForEvents(_) => "wait_for_events",
            NodeKind::Throttle(_) => "throttle",
            NodeKind::Digest(_) => "digest",
        }
    }
}

#[derive(Debug)]
pub enum DelaySpec {
    For(Duration),
    /// An expression giving an RFC 3339 timestamp or Unix seconds.
    Until(Expr),
}

/// A throttle node: at most `limit` continuations per key in any `window`-long span (fleet-wide; see
/// `throttle.rs`).
#[derive(Debug)]
pub struct ThrottleSpec {
    pub limit: u32,
    pub window: Duration,
    /// The key's template; `None`: the workflow and the run's recipient.
    pub key: Option<Template>,
    pub on_limit: OnLimit,
}

/// What a throttle node does with a run over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLimit {
    /// Completes as `throttled` and follows no edge: that branch of the run ends.
    Skip,
    /// Reserves the key's next free slot (in arrival order) and parks until it comes.
    Delay,
}

/// A digest node: collects the runs that reach it for one key over a window, and continues once with the batch
/// (see `digest.rs`).
#[derive(Debug)]
pub struct DigestSpec {
    pub window: DigestWindow,
    /// The key's template; `None`: the workflow and the run's recipient.
    pub key: Option<Template>,
    /// How many events the batch keeps (the first ones); every event is counted.
    pub keep: u32,
    /// The first event of a window continues at once (alone); the window's batch is the events after it.
    pub send_first: bool,
}

/// When a digest's window closes, counted from the event that opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestWindow {
    For(Duration),
    /// The next time this time of day comes in the recipient's time zone (UTC without one).
    Until(chrono::NaiveTime),
}

/// The most events a digest batch keeps, the default, and a digest's longest window.
pub const MAX_DIGEST_KEEP: u32 = 100;
pub const DEFAULT_DIGEST_KEEP: u32 = 10;
pub const MAX_DIGEST_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);

/// The most continuations a throttle's window may allow (a take reads that many of the key's newest grants), and
/// its longest window.
pub const MAX_THROTTLE_LIMIT: u32 = 10_000;
pub const MAX_THROTTLE_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);

#[derive(Debug)]
pub struct WaitSpec {
    pub events: Vec<String>,
    /// The correlation key: events whose `key` equals its value count.
    pub key: Expr,
    pub mode: WaitMode,
    pub timeout: Option<Duration>,
    pub on_timeout: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Every listed event name at least once.
    All,
    /// Any one listed event.
    Any,
    /// At least N distinct events (by event id) among the listed names.
    AtLeast(u32),
}

impl WaitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitMode::All => "all",
            WaitMode::Any => "any",
            WaitMode::AtLeast(_) => "at_least",
        }
    }

    /// How many matches satisfy the wait: distinct names for `all`, distinct events otherwise.
    pub fn needed(self, event_names: usize) -> i32 {
        match self {
            WaitMode::All => event_names as i32,
            WaitMode::Any => 1,
            WaitMode::AtLeast(n) => n as i32,
        }
    }
}

/// Whom an action sends to.
#[derive(Debug)]
pub enum Addressee {
    /// `to: "{{ data.email }}"`: the rendered address itself (services without profiles).
    Raw(Template),
    /// `to: { recipient: "{{ data.user_id }}" }`: a recipient's id, whose address for the channel is read from
    /// their profile at send time.
    Recipient(Template),
    /// No `to`: the recipient the run was started for (a trigger's `recipient`, a topic member).
    RunRecipient,
}

/// A typed trigger field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    #[serde(rename = "type")]
    pub kind: FieldType,
    #[serde(default = "yes")]
    pub required: bool,
    pub default: Option<Value>,
    pub description: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
    /// An RFC 3339 string.
    Timestamp,
}

impl FieldType {
    pub fn accepts(self, value: &Value) -> bool {
        match self {
            FieldType::String => value.is_string(),
            FieldType::Integer => value.is_i64() || value.is_u64(),
            FieldType::Number => value.is_number(),
            FieldType::Boolean => value.is_boolean(),
            FieldType::Object => value.is_object(),
            FieldType::Array => value.is_array(),
            FieldType::Timestamp => value
                .as_str()
                .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()),
        }
    }
}

/// Parses a definition file's text: YAML (a superset of JSON) unless the name ends in `.json`.
pub fn parse_text(source: &str, text: &str) -> Result<Value, DefinitionError> {
    let parsed = if source.ends_with(".json") {
        serde_json::from_str::<Value>(text).map_err(|e| e.to_string())
    } else {
        serde_yaml_ng::from_str::<Value>(text).map_err(|e| e.to_string())
    };
    parsed.map_err(|message| DefinitionError {
        source: source.to_string(),
        node: None,
        message: format!("not valid YAML/JSON: {message}"),
    })
}

/// The category whose sends can never be `critical`: an opt-out from marketing always holds.
pub const MARKETING: &str = "marketing";
const CRITICAL_MARKETING: &str = "`critical` is refused in the `marketing` category: a recipient's opt-out from marketing always holds";

/// The most nodes a workflow may have: far above any notification flow, and a bound on what validating one costs.
pub const MAX_NODES: usize = 500;

/// Validates a definition and compiles it, or returns every problem found.
pub fn compile(source: &str, definition: &Value) -> Result<Workflow, Vec<DefinitionError>> {
    let mut errors = Errors {
        source,
        list: Vec::new(),
    };
    let header = match Header::deserialize(definition) {
        Ok(header) => header,
        Err(e) => {
            errors.workflow(format!("{e}"));
            return Err(errors.list);
        }
    };
    if !valid_name(&header.name) {
        errors.workflow("`name` must be 1-64 characters of [A-Za-z0-9_.-]");
    }
    if header.category.as_deref().is_some_and(|c| !valid_name(c)) {
        errors.workflow("`category` must be 1-64 characters of [A-Za-z0-9_.-]");
    }
    if header.nodes.len() > MAX_NODES {
        errors.workflow(format!(
            "a workflow has at most {MAX_NODES} nodes (this one has {})",
            header.nodes.len()
        ));
        return Err(errors.list);
    }
    let mut nodes = HashMap::new();
    for raw in &header.nodes {
        if let Some(node) = compile_node(raw, &mut errors)
            && let Some(previous) = nodes.insert(node.id.clone(), node)
        {
            errors.node(&previous.id, "two nodes have this id");
        }
    }
    if header.category.as_deref() == Some(MARKETING) {
        if header.critical {
            errors.workflow(CRITICAL_MARKETING);
        }
        let mut critical: Vec<&String> = nodes
            .values()
            .filter(|n| matches!(n.kind, NodeKind::Action { critical: true, .. }))
            .map(|n| &n.id)
            .collect();
        critical.sort();
        for id in critical {
            errors.node(id, CRITICAL_MARKETING);
        }
    }
    let trigger = check_graph(&nodes, &mut errors);
    match trigger {
        Some(trigger) if errors.list.is_empty() => Ok(Workflow {
            name: header.name,
            version: header.version,
            description: header.description,
            category: header.category,
            critical: header.critical,
            trigger,
            sequential: nodes.values().all(has_no_fan_out),
            nodes,
            definition: definition.clone(),
        }),
        _ => Err(errors.list),
    }
}

/// The most templates and expressions [`check_budgets`] dry-runs in one definition: each costs at most the
/// evaluation budget (a few milliseconds), so a save costs at most a few seconds of one blocking thread however
/// the definition is built. Any beyond are left to their run-time budget.
pub const MAX_DRY_RUNS: usize = 1_000;

/// Checks a new definition's templates and expressions against their CPU and output budget, when it is saved
/// (the API, `herald workflows sync`, the sync at start) and by `herald workflows check`: those that do more
/// than lookups are run once without data (see `Template::check_budget`), and the first over budget is
/// reported. Not part of [`compile`]: a version stored before this check existed must still load for its runs
/// in flight, so the catalog checks only versions it does not hold yet. CPU-bound: call it off the async runtime.
pub fn check_budgets(source: &str, workflow: &Workflow) -> Result<(), Vec<DefinitionError>> {
    let mut ids: Vec<&String> = workflow.nodes.keys().collect();
    ids.sort();
    let mut dry_runs = 0;
    for id in ids {
        if let Some((field, problem)) = workflow.nodes[id].kind.budget_problem(&mut dry_runs) {
            let mut errors = Errors {
                source,
                list: Vec::new(),
            };
            errors.node(id, format!("`{field}`: {problem}"));
            return Err(errors.list);
        }
    }
    Ok(())
}

/// A definition's top level, as `compile` reads it first; the API's OpenAPI document describes
/// `POST /v1/workflows` with it. What it cannot say (each node's fields by kind, that the edges form a graph with
/// one trigger) `compile` checks, one error per problem; see docs/workflows.md.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WorkflowDocument)]
pub struct Header {
    /// 1-64 characters of `[A-Za-z0-9_.-]`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    name: String,
    /// A positive version number.
    #[schema(minimum = 1, maximum = 2147483647)]
    #[serde(deserialize_with = "positive_version")]
    version: i32,
    /// No U+0000 (the definition is stored as `jsonb`).
    #[schema(pattern = "^[^\\x00]*$")]
    description: Option<String>,
    /// What kind of notification this is (`marketing`, `product`, `security`, …): recipients can opt out of a
    /// category. 1-64 characters of `[A-Za-z0-9_.-]`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    category: Option<String>,
    /// Every send bypasses recipients' opt-outs and quiet hours (password resets, security alerts). Refused on
    /// the `marketing` category.
    #[serde(default)]
    critical: bool,
    /// The nodes (at most 500): objects with an `id`, a `kind` and that kind's fields.
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 500)]
    nodes: Vec<Value>,
}

fn positive_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    let version = i64::deserialize(d)?;
    i32::try_from(version)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| serde::de::Error::custom("`version` must be a positive integer"))
}

/// A workflow name or node id: 1-64 characters of `[A-Za-z0-9_.-]`.
pub use crate::recipients::valid_name;

struct Errors<'a> {
    source: &'a str,
    list: Vec<DefinitionError>,
}

impl Errors<'_> {
    fn workflow(&mut self, message: impl Into<String>) {
        self.list.push(DefinitionError {
            source: self.source.to_string(),
            node: None,
            message: message.into(),
        });
    }
    fn node(&mut self, node: &str, message: impl Into<String>) {
        self.list.push(DefinitionError {
            source: self.source.to_string(),
            node: Some(node.to_string()),
            message: message.into(),
        });
    }
}

/// One edge list: a single id or a list of ids.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Targets {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Targets {
    fn into_vec(self) -> Vec<String> {
        match self {
            Targets::None => Vec::new(),
            Targets::One(id) => vec![id],
            Targets::Many(ids) => ids,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerSpec {
    #[serde(default)]
    fields: BTreeMap<String, Field>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionSpec {
    channel: String,
    #[serde(default)]
    providers: Vec<String>,
    to: Option<ToSpec>,
    template: Option<String>,
    #[serde(default)]
    content: BTreeMap<String, String>,
    #[serde(default)]
    critical: bool,
    window: Option<WindowSpec>,
}

/// An action's `to`: an address template, or `{recipient: <id template>}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ToSpec {
    Raw(String),
    Recipient(RecipientTo),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientTo {
    recipient: String,
}

/// Quiet hours: `window: {start: "08:00", end: "21:00"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSpec {
    start: String,
    end: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionSpec {
    #[serde(rename = "if")]
    test: String,
    #[serde(default)]
    then: Targets,
    #[serde(default, rename = "else")]
    otherwise: Targets,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BranchSpec {
    cases: Vec<CaseSpec>,
    #[serde(default)]
    default: Targets,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    when: String,
    next: Targets,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransformSpec {
    set: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelaySpecRaw {
    duration: Option<String>,
    until: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottleSpecRaw {
    limit: u32,
    window: String,
    key: Option<String>,
    on_limit: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DigestSpecRaw {
    window: Option<String>,
    until: Option<String>,
    key: Option<String>,
    keep: Option<u32>,
    #[serde(default)]
    send_first: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitSpecRaw {
    events: Vec<String>,
    key: String,
    #[serde(default = "mode_all")]
    mode: String,
    count: Option<u32>,
    timeout: Option<String>,
    #[serde(default)]
    on_timeout: Targets,
}

fn mode_all() -> String {
    "all".into()
}

const KINDS: &str =
    "trigger, action, condition, branch, transform, delay, wait_for_events, throttle, digest";

/// Compiles one node; problems go to `errors` and the node is dropped.
fn compile_node(raw: &Value, errors: &mut Errors) -> Option<Node> {
    let Some(map) = raw.as_object() else {
        errors.workflow("every entry of `nodes` must be a mapping with `id` and `kind`");
        return None;
    };
    let mut map = map.clone();
    let id = match map.remove("id") {
        Some(Value::String(id)) if valid_name(&id) => id,
        _ => {
            errors.workflow("a node has no valid `id` (1-64 characters of [A-Za-z0-9_.-])");
            return None;
        }
    };
    let kind = match map.remove("kind") {
        Some(Value::String(kind)) => kind,
        _ => {
            errors.node(&id, format!("`kind` is missing (one of: {KINDS})"));
            return None;
        }
    };
    let next = take_targets(&mut map, "next", &id, errors);
    let on_error = match map.remove("on_error") {
        None | Some(Value::Null) => None,
        Some(Value::String(target)) => Some(target),
        Some(_) => {
            errors.node(&id, "`on_error` must be one node id");
            None
        }
    };
    let rest = Value::Object(map);
    let mut problems = Vec::new();
    let compiled = match kind.as_str() {
        "trigger" => spec::<TriggerSpec>(rest).map(|s| NodeKind::Trigger { fields: s.fields }),
        "action" => spec::<ActionSpec>(rest).and_then(|s| compile_action(s, &mut problems)),
        "condition" => spec::<ConditionSpec>(rest).and_then(|s| {
            Ok(NodeKind::Condition {
                test: Expr::compile(&s.test).map_err(|e| format!("`if`: {e}"))?,
                then: s.then.into_vec(),
                otherwise: s.otherwise.into_vec(),
            })
        }),
        "branch" => spec::<BranchSpec>(rest).and_then(compile_branch),
        "transform" => {
            spec::<TransformSpec>(rest).and_then(|s| compile_transform(s, &mut problems))
        }
        "delay" => spec::<DelaySpecRaw>(rest).and_then(compile_delay),
        "wait_for_events" => spec::<WaitSpecRaw>(rest).and_then(compile_wait),
        "throttle" => spec::<ThrottleSpecRaw>(rest).and_then(compile_throttle),
        "digest" => spec::<DigestSpecRaw>(rest).and_then(compile_digest),
        other => Err(format!("unknown kind `{other}` (one of: {KINDS})")),
    };
    for problem in problems {
        errors.node(&id, problem);
    }
    let kind = match compiled {
        Ok(kind) => kind,
        Err(message) => {
            errors.node(&id, message);
            return None;
        }
    };
    let takes_next = !matches!(kind, NodeKind::Condition { .. } | NodeKind::Branch { .. });
    if !takes_next && !next.is_empty() {
        errors.node(
            &id,
            format!("a {} node has no `next`; use its own edges", kind.name()),
        );
    }
    if matches!(kind, NodeKind::Trigger { .. }) && on_error.is_some() {
        errors.node(&id, "a trigger node cannot have `on_error`");
    }
    Some(Node {
        id,
        kind,
        next,
        on_error,
    })
}

fn take_targets(
    map: &mut Map<String, Value>,
    key: &str,
    id: &str,
    errors: &mut Errors,
) -> Vec<String> {
    match map.remove(key).map(serde_json::from_value::<Targets>) {
        None => Vec::new(),
        Some(Ok(targets)) => targets.into_vec(),
        Some(Err(_)) => {
            errors.node(
                id,
                format!("`{key}` must be a node id or a list of node ids"),
            );
            Vec::new()
        }
    }
}

fn spec<T: serde::de::DeserializeOwned>(rest: Value) -> Result<T, String> {
    serde_json::from_value(rest).map_err(|e| e.to_string())
}

fn compile_action(spec: ActionSpec, problems: &mut Vec<String>) -> Result<NodeKind, String> {
    let channel = ChannelKind::parse(&spec.channel).ok_or_else(|| {
        format!(
            "unknown channel `{}` (one of: {})",
            spec.channel,
            ChannelKind::ALL.map(|c| c.as_str()).join(", ")
        )
    })?;
    for provider in &spec.providers {
        if channel.provider(provider).is_none() {
            problems.push(format!(
                "unknown provider `{provider}` for channel {} (one of: {})",
                channel.as_str(),
                channel.provider_names().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if channel == ChannelKind::InApp && matches!(spec.to, Some(ToSpec::Raw(_))) {
        problems.push(
            "an in_app action sends to a recipient's feed: `to: { recipient: ... }`, or no `to` (the run's recipient)"
                .into(),
        );
    }
    let to = match &spec.to {
        None => Addressee::RunRecipient,
        Some(ToSpec::Raw(to)) => {
            Addressee::Raw(Template::compile(to).map_err(|e| format!("`to`: {e}"))?)
        }
        Some(ToSpec::Recipient(to)) => Addressee::Recipient(
            Template::compile(&to.recipient).map_err(|e| format!("`to.recipient`: {e}"))?,
        ),
    };
    let window = match &spec.window {
        None => None,
        Some(w) => match Window::parse(&w.start, &w.end) {
            Ok(window) => Some(window),
            Err(e) => {
                problems.push(format!("`window`: {e}"));
                None
            }
        },
    };
    if let Some(name) = &spec.template
        && !crate::templates::document::valid_name(name)
    {
        problems.push("`template` must name a template (1-64 characters of [A-Za-z0-9_.-])".into());
    }
    let mut content = BTreeMap::new();
    for (field, source) in spec.content {
        // HTML parts escape the values they insert; the other fields are plain text.
        let compiled = if is_html_field(&field) {
            Template::compile_html(&source)
        } else {
            Template::compile(&source)
        };
        match compiled {
            Ok(template) => {
                content.insert(field, template);
            }
            Err(e) => problems.push(format!("`content.{field}`: {e}")),
        }
    }
    Ok(NodeKind::Action {
        channel,
        providers: spec.providers,
        to,
        template: spec.template,
        content,
        critical: spec.critical,
        window,
    })
}

/// Message fields that hold HTML: `html` (an email's HTML part) and any `*_html`.
fn is_html_field(field: &str) -> bool {
    field == "html" || field.ends_with("_html")
}

fn compile_branch(spec: BranchSpec) -> Result<NodeKind, String> {
    if spec.cases.is_empty() {
        return Err("`cases` must list at least one case".into());
    }
    let mut cases = Vec::new();
    for (index, case) in spec.cases.into_iter().enumerate() {
        let test = Expr::compile(&case.when).map_err(|e| format!("`cases[{index}].when`: {e}"))?;
        cases.push((test, case.next.into_vec()));
    }
    Ok(NodeKind::Branch {
        cases,
        default: spec.default.into_vec(),
    })
}

fn compile_transform(spec: TransformSpec, problems: &mut Vec<String>) -> Result<NodeKind, String> {
    let mut set = Vec::new();
    for (key, source) in spec.set {
        if RESERVED_KEYS.contains(&key.as_str()) {
            problems.push(format!("`set.{key}`: `{key}` is reserved by the engine"));
            continue;
        }
        match Expr::compile(&source) {
            Ok(expr) => set.push((key, expr)),
            Err(e) => problems.push(format!("`set.{key}`: {e}")),
        }
    }
    Ok(NodeKind::Transform { set })
}

fn compile_delay(spec: DelaySpecRaw) -> Result<NodeKind, String> {
    match (spec.duration, spec.until) {
        (Some(duration), None) => Ok(NodeKind::Delay(DelaySpec::For(parse_duration(&duration)?))),
        (None, Some(until)) => Ok(NodeKind::Delay(DelaySpec::Until(
            Expr::compile(&until).map_err(|e| format!("`until`: {e}"))?,
        ))),
        _ => Err(
            "a delay needs exactly one of `duration` (\"10m\") or `until` (an expression)".into(),
        ),
    }
}

fn compile_throttle(spec: ThrottleSpecRaw) -> Result<NodeKind, String> {
    if !(1..=MAX_THROTTLE_LIMIT).contains(&spec.limit) {
        return Err(format!("`limit` must be from 1 to {MAX_THROTTLE_LIMIT}"));
    }
    let window = parse_duration(&spec.window)?;
    if window < Duration::from_secs(1) || window > MAX_THROTTLE_WINDOW {
        return Err("`window` must be from 1s to 31 days".into());
    }
    let key = spec
        .key
        .map(|key| Template::compile(&key).map_err(|e| format!("`key`: {e}")))
        .transpose()?;
    let on_limit = match spec.on_limit.as_deref() {
        None | Some("skip") => OnLimit::Skip,
        Some("delay") => OnLimit::Delay,
        Some(other) => return Err(format!("`on_limit` is `skip` or `delay`, not `{other}`")),
    };
    Ok(NodeKind::Throttle(ThrottleSpec {
        limit: spec.limit,
        window,
        key,
        on_limit,
    }))
}

fn compile_digest(spec: DigestSpecRaw) -> Result<NodeKind, String> {
    let window = match (spec.window, spec.until) {
        (Some(window), None) => {
            let window = parse_duration(&window)?;
            if window < Duration::from_secs(1) || window > MAX_DIGEST_WINDOW {
                return Err("`window` must be from 1s to 31 days".into());
            }
            DigestWindow::For(window)
        }
        (None, Some(until)) => DigestWindow::Until(
            chrono::NaiveTime::parse_from_str(&until, "%H:%M")
                .map_err(|_| "`until` must be a time of day as HH:MM (00:00-23:59)".to_string())?,
        ),
        _ => {
            return Err(
                "a digest needs exactly one of `window` (\"1h\") or `until` (\"09:00\")".into(),
            );
        }
    };
    let keep = spec.keep.unwrap_or(DEFAULT_DIGEST_KEEP);
    if !(1..=MAX_DIGEST_KEEP).contains(&keep) {
        return Err(format!("`keep` must be from 1 to {MAX_DIGEST_KEEP}"));
    }
    let key = spec
        .key
        .map(|key| Template::compile(&key).map_err(|e| format!("`key`: {e}")))
        .transpose()?;
    Ok(NodeKind::Digest(DigestSpec {
        window,
        key,
        keep,
        send_first: spec.send_first,
    }))
}

fn compile_wait(spec: WaitSpecRaw) -> Result<NodeKind, String> {
    if spec.events.is_empty() {
        return Err("`events` must list at least one event name".into());
    }
    let unique: HashSet<&String> = spec.events.iter().collect();
    if unique.len() != spec.events.len() {
        return Err("`events` lists a name twice".into());
    }
    let mode = match (spec.mode.as_str(), spec.count) {
        ("all", None) => WaitMode::All,
        ("any", None) => WaitMode::Any,
        ("at_least", Some(n)) if n >= 1 => WaitMode::AtLeast(n),
        ("at_least", _) => return Err("mode `at_least` needs `count` >= 1".into()),
        ("all" | "any", Some(_)) => return Err("`count` only goes with mode `at_least`".into()),
        (other, _) => return Err(format!("unknown mode `{other}` (all, any, at_least)")),
    };
    let timeout = spec.timeout.as_deref().map(parse_duration).transpose()?;
    let on_timeout = spec.on_timeout.into_vec();
    if timeout.is_none() && !on_timeout.is_empty() {
        return Err("`on_timeout` needs a `timeout`".into());
    }
    Ok(NodeKind::WaitForEvents(WaitSpec {
        events: spec.events,
        key: Expr::compile(&spec.key).map_err(|e| format!("`key`: {e}"))?,
        mode,
        timeout,
        on_timeout,
    }))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 30s, 10m, 2h: {e}"))
}

/// The catalogue templates a workflow's actions name: (node, template, channel).
pub fn template_uses(workflow: &Workflow) -> Vec<(&str, &str, ChannelKind)> {
    workflow
        .nodes
        .values()
        .filter_map(|node| match &node.kind {
            NodeKind::Action {
                template: Some(template),
                channel,
                ..
            } => Some((node.id.as_str(), template.as_str(), *channel)),
            _ => None,
        })
        .collect()
}

/// Whether each of the node's edge lists (`next`, `then`, `else`, each case, `default`, `on_timeout`) names at
/// most one node: following any of them starts no parallel branch.
fn has_no_fan_out(node: &Node) -> bool {
    let single = |targets: &[String]| targets.len() <= 1;
    let own = match &node.kind {
        NodeKind::Condition {
            then, otherwise, ..
        } => single(then) && single(otherwise),
        NodeKind::Branch { cases, default } => {
            cases.iter().all(|(_, targets)| single(targets)) && single(default)
        }
        NodeKind::WaitForEvents(wait) => single(&wait.on_timeout),
        _ => true,
    };
    own && single(&node.next)
}

/// Every edge of a node, with the name of the field that holds it.
pub fn edges(node: &Node) -> Vec<(&'static str, &str)> {
    let mut edges: Vec<(&'static str, &str)> =
        node.next.iter().map(|t| ("next", t.as_str())).collect();
    match &node.kind {
        NodeKind::Condition {
            then, otherwise, ..
        } => {
            edges.extend(then.iter().map(|t| ("then", t.as_str())));
            edges.extend(otherwise.iter().map(|t| ("else", t.as_str())));
        }
        NodeKind::Branch { cases, default } => {
            for (_, targets) in cases {
                edges.extend(targets.iter().map(|t| ("cases", t.as_str())));
            }
            edges.extend(default.iter().map(|t| ("default", t.as_str())));
        }
        NodeKind::WaitForEvents(wait) => {
            edges.extend(wait.on_timeout.iter().map(|t| ("on_timeout", t.as_str())));
        }
        _ => {}
    }
    if let Some(target) = &node.on_error {
        edges.push(("on_error", target));
    }
    edges
}

/// Checks edges, the single trigger, reachability and cycles. Returns the trigger's id.
fn check_graph(nodes: &HashMap<String, Node>, errors: &mut Errors) -> Option<String> {
    let mut ids: Vec<&String> = nodes.keys().collect();
    ids.sort();
    for id in &ids {
        for (field, target) in edges(&nodes[*id]) {
            if !nodes.contains_key(target) {
                errors.node(
                    id,
                    format!("`{field}` points at `{target}`, which is not a node"),
                );
            } else if matches!(nodes[target].kind, NodeKind::Trigger { .. }) {
                errors.node(id, format!("`{field}` points at the trigger `{target}`"));
            }
        }
    }
    let triggers: Vec<&&String> = ids
        .iter()
        .filter(|id| matches!(nodes[**id].kind, NodeKind::Trigger { .. }))
        .collect();
    let trigger = match triggers.as_slice() {
        [one] => (**one).clone(),
        [] => {
            errors.workflow("there is no trigger node (exactly one is needed)");
            return None;
        }
        _ => {
            errors.workflow("there is more than one trigger node (exactly one is needed)");
            return None;
        }
    };
    let reachable = reachable_from(nodes, &trigger);
    for id in &ids {
        if !reachable.contains(id.as_str()) {
            errors.node(id, format!("is unreachable from the trigger `{trigger}`"));
        }
    }
    if let Some(cycle) = find_cycle(nodes, &ids) {
        errors.node(
            &cycle[0],
            format!(
                "is on a cycle ({}); workflows are acyclic",
                cycle.join(" -> ")
            ),
        );
    }
    Some(trigger)
}

fn reachable_from<'a>(nodes: &'a HashMap<String, Node>, start: &'a str) -> HashSet<&'a str> {
    let mut seen = HashSet::from([start]);
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        for (_, target) in nodes.get(id).map(edges).unwrap_or_default() {
            if nodes.contains_key(target) && seen.insert(target) {
                stack.push(target);
            }
        }
    }
    seen
}

/// Depth-first search with colours; returns one cycle's path if there is one. Iterative, with an explicit stack:
/// a definition is client input, and a recursive walk down a long chain of nodes overflowed the thread's stack
/// and aborted the API process.
fn find_cycle(nodes: &HashMap<String, Node>, ids: &[&String]) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        Grey,
        Black,
    }
    let mut colour: HashMap<&str, Colour> = HashMap::new();
    for start in ids {
        if colour.contains_key(start.as_str()) {
            continue;
        }
        // The path from `start`, each node with the edges it has left to follow.
        let mut path: Vec<(&str, std::vec::IntoIter<(&'static str, &str)>)> = Vec::new();
        colour.insert(start.as_str(), Colour::Grey);
        path.push((start.as_str(), edges(&nodes[start.as_str()]).into_iter()));
        while let Some((_, next_edges)) = path.last_mut() {
            let Some((_, target)) = next_edges.next() else {
                if let Some((done, _)) = path.pop() {
                    colour.insert(done, Colour::Black);
                }
                continue;
            };
            match colour.get(target) {
                Some(Colour::Grey) => {
                    let at = path.iter().position(|(id, _)| *id == target).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[at..].iter().map(|(id, _)| id.to_string()).collect();
                    cycle.push(target.to_string());
                    return Some(cycle);
                }
                Some(Colour::Black) => {}
                None => {
                    if let Some((id, node)) = nodes.get_key_value(target) {
                        colour.insert(id.as_str(), Colour::Grey);
                        path.push((id.as_str(), edges(node).into_iter()));
                    }
                }
            }
        }
    }
    None
}

/// Checks trigger data against the trigger's fields: returns the extracted data (declared fields only, defaults
/// applied) or one message per bad field.
pub fn extract_trigger(
    fields: &BTreeMap<String, Field>,
    data: &Value,
) -> Result<Value, Vec<(String, String)>> {
    let Some(input) = data.as_object() else {
        return Err(vec![("data".into(), "must be a JSON object".into())]);
    };
    let mut extracted = Map::new();
    let mut problems = Vec::new();
    for (name, field) in fields {
        match input.get(name).filter(|v| !v.is_null()) {
            Some(value) if field.kind.accepts(value) => {
                extracted.insert(name.clone(), value.clone());
            }
            Some(_) => problems.push((
                name.clone(),
                format!("must be of type {:?}", field.kind).to_lowercase(),
            )),
            None => match (&field.default, field.required) {
                (Some(default), _) => {
                    extracted.insert(name.clone(), default.clone());
                }
                (None, true) => problems.push((name.clone(), "is required".into())),
                (None, false) => {}
            },
        }
    }
    if fields.is_empty() {
        // A trigger without declared fields passes its data through untouched.
        return Ok(data.clone());
    }
    if problems.is_empty() {
        Ok(Value::Object(extracted))
    } else {
        Err(problems)
    }
}
