//! Routes: which topic's messages become what. Each message is matched against the routes of its topic, in
//! order; the first whose filter matches decides the target (a queue job, a workflow run, an event for
//! wait-for-events nodes, or a recipient profile to create or replace). A message that cannot be decoded or matches no route is an error the caller
//! dead-letters.

use crate::recipients::types::contains_nul;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::message::RawMessage;
use crate::queue::{IdempotencyKey, JobKind, NewJob, QueueName};
use crate::workflow::NewEvent;

/// One route as written in config (`[[bridge.routes]]`). Flat on purpose: TOML arrays of tables read best
/// that way, and unknown keys are refused. Field values are JSON pointers (`/order/id`) into the message.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    pub topic: String,
    /// `job`, `workflow`, `event` or `recipient`.
    pub target: String,
    /// Only messages whose header of this name equals `equals`.
    pub when_header: Option<String>,
    /// Only messages whose JSON field at this pointer equals `equals`.
    pub when_field: Option<String>,
    pub equals: Option<String>,
    /// job: the queue and job kind.
    pub queue: Option<String>,
    pub kind: Option<String>,
    /// job: the payload (default: the whole message); event: the event's payload; workflow: the trigger data;
    /// recipient: the profile document (email, phone, locale, timezone, devices, chat, data).
    pub payload: Option<String>,
    /// workflow: the workflow to start.
    pub workflow: Option<String>,
    /// job and workflow: the idempotency key's field. Workflows default to `kafka:<topic>:<partition>:<offset>`.
    pub idempotency_key: Option<String>,
    /// event: the event name, or `event_field` to read it from the message.
    pub event: Option<String>,
    pub event_field: Option<String>,
    /// event: the correlation key's field (required); recipient: the recipient id's field (required).
    pub key: Option<String>,
    /// event: the event id's field (default: `kafka:<topic>:<partition>:<offset>`, so a redelivery counts once).
    pub event_id: Option<String>,
}

/// A route's config is wrong: found at start, never at the first message.
#[derive(Debug, thiserror::Error)]
#[error("bridge route {index} (topic `{topic}`): {problem}")]
pub struct RouteConfigError {
    pub index: usize,
    pub topic: String,
    pub problem: String,
}

/// What one message becomes.
#[derive(Debug, Clone)]
pub enum Routed {
    Job(NewJob),
    Run {
        workflow: String,
        data: Value,
        idempotency_key: String,
    },
    Event(NewEvent),
    /// A profile to create or replace (a PUT): the id, and the profile document (checked by the store's caller).
    Recipient {
        id: String,
        profile: Value,
    },
}

/// The route a target's message takes, with everything checked.
#[derive(Debug, Clone)]
struct Route {
    topic: String,
    filter: Option<Filter>,
    target: Target,
}

#[derive(Debug, Clone)]
enum Filter {
    Header { name: String, equals: String },
    Field { pointer: String, equals: String },
}

#[derive(Debug, Clone)]
enum Target {
    Job {
        queue: QueueName,
        kind: JobKind,
        payload: Option<String>,
        idempotency_key: Option<String>,
    },
    Workflow {
        workflow: String,
        data: Option<String>,
        idempotency_key: Option<String>,
    },
    Event {
        name: EventName,
        key: String,
        event_id: Option<String>,
        payload: Option<String>,
    },
    Recipient {
        id: String,
        profile: Option<String>,
    },
}

#[derive(Debug, Clone)]
enum EventName {
    Fixed(String),
    Field(String),
}

/// The routing table, checked.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(settings: &[RouteSettings]) -> Result<Self, RouteConfigError> {
        let routes = settings
            .iter()
            .enumerate()
            .map(|(index, route)| {
                check_route(route).map_err(|problem| RouteConfigError {
                    index,
                    topic: route.topic.clone(),
                    problem,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { routes })
    }

    /// The topics to subscribe to, each once, in config order.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = Vec::new();
        for route in &self.routes {
            if !topics.contains(&route.topic) {
                topics.push(route.topic.clone());
            }
        }
        topics
    }

    /// The queues a topic's messages can land in (workflow runs and events land in `workflow_queue`), for
    /// backpressure.
    pub fn queues_fed_by(&self, topic: &str, workflow_queue: &str) -> Vec<String> {
        let mut queues: Vec<String> = Vec::new();
        for route in self.routes.iter().filter(|r| r.topic == topic) {
            let queue = match &route.target {
                Target::Job { queue, .. } => queue.as_str(),
                Target::Workflow { .. } | Target::Event { .. } => workflow_queue,
                // Profiles are written, not queued.
                Target::Recipient { .. } => continue,
            };
            if !queues.iter().any(|q| q == queue) {
                queues.push(queue.to_string());
            }
        }
        queues
    }

    /// Decodes a message and routes it. The error says why, for the dead-letter row.
    pub fn route(&self, message: &RawMessage) -> Result<Routed, String> {
        if let Some(problem) = &message.problem {
            return Err(problem.clone());
        }
        let body = decode(message)?;
        if contains_nul(&body) {
            // serde_json accepts \u0000; Postgres's jsonb and text refuse it.
            return Err(
                "the payload contains a NUL character (\\u0000), which cannot be stored".into(),
            );
        }
        let route = self
            .routes
            .iter()
            .filter(|r| r.topic == message.topic)
            .find(|r| r.filter.as_ref().is_none_or(|f| f.matches(message, &body)))
            .ok_or_else(|| format!("no route matches this message of topic `{}`", message.topic))?;
        route.target.build(message, body)
    }
}

fn decode(message: &RawMessage) -> Result<Value, String> {
    let payload = message
        .payload
        .as_deref()
        .ok_or("the message has no payload (a tombstone)")?;
    serde_json::from_slice(payload).map_err(|e| format!("the payload is not valid JSON: {e}"))
}

impl Filter {
    fn matches(&self, message: &RawMessage, body: &Value) -> bool {
        match self {
            Filter::Header { name, equals } => message
                .header(name)
                .is_some_and(|value| value == equals.as_bytes()),
            Filter::Field { pointer, equals } => {
                body.pointer(pointer).and_then(scalar_text).as_deref() == Some(equals)
            }
        }
    }
}

impl Target {
    fn build(&self, message: &RawMessage, body: Value) -> Result<Routed, String> {
        match self {
            Target::Job {
                queue,
                kind,
                payload,
                idempotency_key,
            } => {
                let mut job = NewJob::new(queue.clone(), kind.clone(), select(&body, payload)?)
                    .trace_parent(message.traceparent());
                if let Some(pointer) = idempotency_key {
                    let key = IdempotencyKey::parse(&required_text(&body, pointer)?)
                        .map_err(|e| format!("idempotency key: {e}"))?;
                    job = job.idempotency_key(key);
                }
                Ok(Routed::Job(job))
            }
            Target::Workflow {
                workflow,
                data,
                idempotency_key,
            } => Ok(Routed::Run {
                workflow: workflow.clone(),
                idempotency_key: match idempotency_key {
                    Some(pointer) => required_text(&body, pointer)?,
                    None => message.position_key(),
                },
                data: select(&body, data)?,
            }),
            Target::Event {
                name,
                key,
                event_id,
                payload,
            } => Ok(Routed::Event(NewEvent {
                id: Some(match event_id {
                    Some(pointer) => required_text(&body, pointer)?,
                    None => message.position_key(),
                }),
                name: match name {
                    EventName::Fixed(name) => name.clone(),
                    EventName::Field(pointer) => required_text(&body, pointer)?,
                },
                key: required_text(&body, key)?,
                payload: select(&body, payload)?,
            })),
            Target::Recipient {
                id: id_pointer,
                profile,
            } => {
                let id = required_text(&body, id_pointer)?;
                let mut profile = select(&body, profile)?;
                // A whole message as the profile: its top-level id field is not a profile field.
                if let (Some(object), Some(field)) =
                    (profile.as_object_mut(), top_level_field(id_pointer))
                {
                    object.remove(field);
                }
                Ok(Routed::Recipient { id, profile })
            }
        }
    }
}

/// `user_id` for the pointer `/user_id` (a field of the message's top level), else nothing.
fn top_level_field(pointer: &str) -> Option<&str> {
    pointer
        .strip_prefix('/')
        .filter(|rest| !rest.contains('/') && !rest.contains('~'))
}

/// The part of the body at `pointer`, or the whole body.
fn select(body: &Value, pointer: &Option<String>) -> Result<Value, String> {
    match pointer {
        None => Ok(body.clone()),
        Some(pointer) => body
            .pointer(pointer)
            .cloned()
            .ok_or_else(|| format!("the message has no field `{pointer}`")),
    }
}

/// Keys, ids and names taken from a message: non-empty, at most 255 characters (they are indexed), printable.
fn required_text(body: &Value, pointer: &str) -> Result<String, String> {
    let value = body
        .pointer(pointer)
        .ok_or_else(|| format!("the message has no field `{pointer}`"))?;
    scalar_text(value)
        .filter(|text| !text.is_empty() && text.chars().count() <= 255)
        .filter(|text| !text.chars().any(char::is_control))
        .ok_or_else(|| {
            format!(
                "the field `{pointer}` must be a string or number of 1-255 printable characters"
            )
        })
}

/// Strings as they are, numbers and booleans as written; anything else has no text.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn check_route(route: &RouteSettings) -> Result<Route, String> {
    if route.topic.trim().is_empty() {
        return Err("`topic` is empty".into());
    }
    for pointer in [
        &route.when_field,
        &route.payload,
        &route.idempotency_key,
        &route.event_field,
        &route.key,
        &route.event_id,
    ]
    .into_iter()
    .flatten()
    {
        if !pointer.starts_with('/') {
            return Err(format!(
                "`{pointer}` is not a JSON pointer (write `/field`)"
            ));
        }
    }
    Ok(Route {
        topic: route.topic.clone(),
        filter: check_filter(route)?,
        target: check_target(route)?,
    })
}

fn check_filter(route: &RouteSettings) -> Result<Option<Filter>, String> {
    match (&route.when_header, &route.when_field, &route.equals) {
        (None, None, None) => Ok(None),
        (Some(name), None, Some(equals)) => Ok(Some(Filter::Header {
            name: name.clone(),
            equals: equals.clone(),
        })),
        (None, Some(pointer), Some(equals)) => Ok(Some(Filter::Field {
            pointer: pointer.clone(),
            equals: equals.clone(),
        })),
        (Some(_), Some(_), _) => Err("give `when_header` or `when_field`, not both".into()),
        (None, None, Some(_)) => Err("`equals` needs `when_header` or `when_field`".into()),
        (_, _, None) => Err("`when_header`/`when_field` needs `equals`".into()),
    }
}

fn check_target(route: &RouteSettings) -> Result<Target, String> {
    let need = |value: &Option<String>, name: &str| {
        value
            .clone()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| format!("target `{}` needs `{name}`", route.target))
    };
    match route.target.as_str() {
        "job" => Ok(Target::Job {
            queue: QueueName::parse(&need(&route.queue, "queue")?).map_err(|e| e.to_string())?,
            kind: JobKind::parse(&need(&route.kind, "kind")?).map_err(|e| e.to_string())?,
            payload: route.payload.clone(),
            idempotency_key: route.idempotency_key.clone(),
        }),
        "workflow" => Ok(Target::Workflow {
            workflow: need(&route.workflow, "workflow")?,
            data: route.payload.clone(),
            idempotency_key: route.idempotency_key.clone(),
        }),
        "event" => Ok(Target::Event {
            name: match (&route.event, &route.event_field) {
                (Some(name), None) => EventName::Fixed(name.clone()),
                (None, Some(pointer)) => EventName::Field(pointer.clone()),
                _ => return Err("target `event` needs one of `event` or `event_field`".into()),
            },
            key: need(&route.key, "key")?,
            event_id: route.event_id.clone(),
            payload: route.payload.clone(),
        }),
        "recipient" => Ok(Target::Recipient {
            id: need(&route.key, "key")?,
            profile: route.payload.clone(),
        }),
        other => Err(format!(
            "unknown target `{other}` (expected job, workflow, event or recipient)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, payload: &str) -> RawMessage {
        RawMessage {
            topic: topic.into(),
            partition: 2,
            offset: 41,
            key: None,
            headers: vec![("type".into(), Some(b"signup".to_vec()))],
            payload: Some(payload.as_bytes().to_vec()),
            problem: None,
        }
    }

    fn route(target: &str) -> RouteSettings {
        RouteSettings {
            topic: "t".into(),
            target: target.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_config_mistake_is_refused_with_the_route_named() {
        let error = Router::new(&[route("job")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "bridge route 0 (topic `t`): target `job` needs `queue`"
        );
        let mut bad_pointer = route("event");
        bad_pointer.event = Some("paid".into());
        bad_pointer.key = Some("order".into());
        assert!(
            Router::new(&[bad_pointer])
                .unwrap_err()
                .problem
                .contains("JSON pointer")
        );
        assert!(Router::new(&[route("teleport")]).is_err());
    }

    #[test]
    fn the_first_matching_route_decides_and_events_default_to_the_position_as_id() {
        let mut by_header = route("event");
        by_header.when_header = Some("type".into());
        by_header.equals = Some("signup".into());
        by_header.event = Some("signed-up".into());
        by_header.key = Some("/user".into());
        let mut fallback = route("job");
        fallback.queue = Some("default".into());
        fallback.kind = Some("k".into());
        let router = Router::new(&[by_header, fallback]).unwrap();
        match router.route(&message("t", r#"{"user": 7}"#)).unwrap() {
            Routed::Event(event) => {
                assert_eq!(event.key, "7");
                assert_eq!(event.name, "signed-up");
                assert_eq!(event.id.as_deref(), Some("kafka:t:2:41"));
            }
            other => panic!("expected an event, got {other:?}"),
        }
        let mut other_type = message("t", r#"{"user": 7}"#);
        other_type.headers.clear();
        assert!(matches!(router.route(&other_type), Ok(Routed::Job(_))));
    }

    #[test]
    fn undecodable_and_unroutable_messages_say_why() {
        let mut event = route("event");
        event.event = Some("e".into());
        event.key = Some("/order".into());
        let router = Router::new(&[event]).unwrap();
        assert!(
            router
                .route(&message("t", "{not json"))
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(
            router
                .route(&message("t", "{}"))
                .unwrap_err()
                .contains("no field `/order`")
        );
        assert!(
            router
                .route(&message("elsewhere", "{}"))
                .unwrap_err()
                .contains("no route")
        );
        let nul = router.route(&message("t", r#"{"order": "a", "note": "x\u0000y"}"#));
        assert!(nul.unwrap_err().contains("NUL"));
        let long_key = format!(r#"{{"order": "{}"}}"#, "k".repeat(256));
        assert!(
            router
                .route(&message("t", &long_key))
                .unwrap_err()
                .contains("1-255")
        );
    }
}
