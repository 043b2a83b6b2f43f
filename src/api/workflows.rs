//! `/v1/workflows`, `/v1/runs`, `/v1/events`: store definitions, trigger and inspect runs, send events.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::{AdminScope, Authorized, EnqueueScope, EventsScope, ReadScope};
use super::error::{ApiError, Problem};
use super::extract::{
    ApiJson, ApiPath, ApiQuery, empty_object, finish_page, idempotency_key_header, page_params,
    request_id,
};
use super::responses::{AdminAuth, EnqueueAuth, JsonBody, ReadAuth};
use super::schemas::{StorableJson, StorableObject};
use crate::queue::IdempotencyKey;
use crate::recipients::RecipientId;
use crate::recipients::store;
use crate::workflow::fanout;
use crate::workflow::{
    EventReceipt, NewEvent, RunFilter, RunStatus, RunView, Saved, Started, WorkflowSummary,
    valid_name,
};

#[derive(Debug, Serialize, ToSchema)]
pub struct SavedWorkflow {
    pub name: String,
    pub version: i32,
    /// `created`, or `unchanged` when this exact version was already stored.
    pub status: Saved,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowDefinition {
    pub name: String,
    pub version: i32,
    /// The definition as stored (see docs/workflows.md).
    pub definition: serde_json::Value,
}

/// Store a workflow definition version (JSON; see docs/workflows.md for the format).
#[utoipa::path(
    post, path = "/v1/workflows", tag = "workflows",
    request_body(content = crate::workflow::definition::Header, description = "A workflow definition"),
    responses(
        (status = 201, description = "Stored", body = SavedWorkflow),
        (status = 200, description = "This exact version was already stored", body = SavedWorkflow),
        (status = 409, description = "This version is stored with other content", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid definition: one error per problem, naming the node", body = Problem, content_type = "application/problem+json"),
        JsonBody, AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn save_workflow(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiJson(definition): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let catalog = &state.engine.catalog;
    let (workflow, saved) = catalog.save(&admin.actor, "request", &definition).await?;
    let status = match saved {
        Saved::Created => StatusCode::CREATED,
        Saved::Unchanged => StatusCode::OK,
    };
    let body = SavedWorkflow {
        name: workflow.name.clone(),
        version: workflow.version,
        status: saved,
    };
    Ok((status, Json(body)).into_response())
}

/// List workflows (latest version of each).
#[utoipa::path(
    get, path = "/v1/workflows", tag = "workflows",
    responses(
        (status = 200, description = "Workflows", body = WorkflowList),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn list_workflows(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
) -> Result<Json<WorkflowList>, ApiError> {
    Ok(Json(WorkflowList {
        workflows: state.engine.catalog.list().await?,
    }))
}

/// The latest version of one workflow.
#[utoipa::path(
    get, path = "/v1/workflows/{name}", tag = "workflows",
    params(("name" = String, Path, description = "Workflow name")),
    responses(
        (status = 200, description = "The latest version", body = WorkflowDefinition),
        (status = 404, description = "No such workflow", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn get_workflow(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<WorkflowDefinition>, ApiError> {
    let workflow = state.engine.catalog.latest(&name).await?;
    Ok(Json(WorkflowDefinition {
        name: workflow.name.clone(),
        version: workflow.version,
        definition: workflow.definition.clone(),
    }))
}

/// Trigger data for a new run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// An object, checked against the trigger node's fields (a field missing or of another type: 422 naming
    /// `data.<field>`); `{}` if absent.
    // An object by type, so that anything else is refused here, naming `data`, before the engine sees it.
    #[serde(default)]
    #[schema(value_type = StorableObject)]
    pub data: serde_json::Map<String, serde_json::Value>,
    /// Makes the trigger idempotent per workflow: 1-255 characters, no control characters (the
    /// `Idempotency-Key` header does the same and wins).
    #[schema(pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]{1,255}$")]
    pub idempotency_key: Option<String>,
    /// Start the run for this recipient (your id for them): its actions address their profile unless they say
    /// otherwise, and templates see it as `recipient`. The profile is read when each action sends.
    #[schema(max_length = 255)]
    pub recipient: Option<String>,
    /// Start one run per member of this topic instead: answered at once (202) with a fan-out id whose progress
    /// `GET /v1/fanouts/{id}` reads; with an idempotency key, a repeat answers the same fan-out. At most
    /// 64 KiB of `data`. Not with `recipient`.
    #[schema(max_length = 128)]
    pub topic: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FanoutStarted {
    /// Read its progress at `GET /v1/fanouts/{id}`.
    pub fanout: i64,
    pub workflow: String,
    pub topic: String,
    /// `created`, or `existing` when the idempotency key had already started this fan-out.
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunStarted {
    pub id: i64,
    pub workflow: String,
    pub version: i32,
    /// `created`, or `existing` when the idempotency key had already started this run.
    pub status: String,
}

/// Start a run of a workflow's latest version.
#[utoipa::path(
    post, path = "/v1/workflows/{name}/runs", tag = "runs",
    params(
        ("name" = String, Path, description = "Workflow name"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~][ -~]{0,254}$", description = "A repeat returns the run the key started"),
    ),
    request_body = RunRequest,
    responses(
        (status = 201, description = "Started", body = RunStarted),
        (status = 200, description = "The idempotency key had already started this run", body = RunStarted),
        (status = 202, description = "A topic trigger: its runs are being started", body = FanoutStarted),
        (status = 404, description = "No such workflow", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Trigger data does not match the trigger's fields", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]))
)]
pub async fn start_run(
    State(state): State<ApiState>,
    _: Authorized<EnqueueScope>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<RunRequest>,
) -> Result<Response, ApiError> {
    // The body's key is checked even when the header wins: it is part of the request.
    if let Some(key) = &request.idempotency_key {
        IdempotencyKey::parse(key)
            .map_err(|e| ApiError::field("idempotency_key", e.to_string()))?;
    }
    let header = idempotency_key_header(&headers)?;
    if let Some(key) = &header {
        IdempotencyKey::parse(key)
            .map_err(|e| ApiError::field("Idempotency-Key", e.to_string()))?;
    }
    let key = header.or(request.idempotency_key);
    let request_id = request_id(&headers).map(String::from);
    let data = serde_json::Value::Object(request.data);
    if let Some(topic) = request.topic {
        return start_fanout(
            &state,
            name,
            topic,
            data,
            request.recipient,
            key,
            request_id,
        )
        .await;
    }
    let recipient = request
        .recipient
        .map(|r| RecipientId::parse(&r).map_err(|e| ApiError::field("recipient", e)))
        .transpose()?;
    let started = state
        .engine
        .start_run_for(
            &name,
            data,
            key,
            request_id,
            recipient.map(|r| r.as_str().to_string()),
        )
        .await?;
    let (status, id, version, label) = match started {
        Started::Created { id, version } => (StatusCode::CREATED, id, version, "created"),
        Started::Existing { id, version } => (StatusCode::OK, id, version, "existing"),
    };
    let body = RunStarted {
        id,
        workflow: name,
        version,
        status: label.into(),
    };
    Ok((status, Json(body)).into_response())
}

/// A topic trigger: checked now, its runs started by fan-out jobs.
async fn start_fanout(
    state: &ApiState,
    workflow: String,
    topic: String,
    data: serde_json::Value,
    recipient: Option<String>,
    key: Option<String>,
    request_id: Option<String>,
) -> Result<Response, ApiError> {
    if recipient.is_some() {
        return Err(ApiError::field("topic", "cannot be given with `recipient`"));
    }
    if !store::valid_topic(&topic) {
        return Err(ApiError::field(
            "topic",
            "must be 1-128 characters of [A-Za-z0-9_.:-]",
        ));
    }
    let started = state
        .engine
        .start_fanout(&workflow, &topic, data, key, request_id)
        .await?;
    let (status, fanout, label) = match started {
        fanout::FanoutStarted::Created(id) => (StatusCode::ACCEPTED, id, "created"),
        // Still 202: the answer to a topic trigger has one shape.
        fanout::FanoutStarted::Existing(id) => (StatusCode::ACCEPTED, id, "existing"),
    };
    let body = FanoutStarted {
        fanout,
        workflow,
        topic,
        status: label.into(),
    };
    Ok((status, Json(body)).into_response())
}

/// A run: status, context and the timeline of its steps.
#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = i64, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run", body = RunView),
        (status = 400, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn get_run(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<RunView>, ApiError> {
    Ok(Json(state.engine.get_run(id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// Only runs of this workflow (a workflow name: 1-64 characters of `[A-Za-z0-9_.-]`).
    #[param(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub workflow: Option<String>,
    /// Only runs in this status.
    #[param(value_type = Option<RunStatus>)]
    pub status: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunPage {
    /// Newest first, without their steps.
    pub runs: Vec<RunView>,
    pub next_cursor: Option<String>,
}

/// List runs, newest first.
#[utoipa::path(
    get, path = "/v1/runs", tag = "runs",
    params(RunQuery),
    responses(
        (status = 200, description = "A page of runs", body = RunPage),
        (status = 400, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad status, limit or cursor", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn list_runs(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiQuery(query): ApiQuery<RunQuery>,
) -> Result<Json<RunPage>, ApiError> {
    let (limit, before) = page_params(query.limit, query.cursor.as_deref())?;
    if let Some(workflow) = query.workflow.as_deref().filter(|w| !valid_name(w)) {
        return Err(ApiError::field(
            "workflow",
            format!("{workflow:?} is not a workflow name (1-64 characters of [A-Za-z0-9_.-])"),
        ));
    }
    // Parsed here rather than by the query extractor, so that a bad one is a 422 naming the values.
    let status = query
        .status
        .as_deref()
        .map(|status| {
            RunStatus::parse(status).ok_or_else(|| {
                let names: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::field("status", format!("must be one of {}", names.join(", ")))
            })
        })
        .transpose()?;
    let filter = RunFilter {
        workflow: query.workflow,
        status,
        recipient: None,
        before,
        limit: limit + 1,
    };
    let mut runs = state.engine.list_runs(&filter).await?;
    let next_cursor = finish_page(&mut runs, limit, |run| run.id);
    Ok(Json(RunPage { runs, next_cursor }))
}

/// Cancel a running run: its pending nodes will not run.
#[utoipa::path(
    post, path = "/v1/runs/{id}/cancel", tag = "runs",
    params(("id" = i64, Path, description = "Run id")),
    responses(
        (status = 400, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "Cancelled", body = RunView),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run is not running", body = Problem, content_type = "application/problem+json"),
        EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]))
)]
pub async fn cancel_run(
    State(state): State<ApiState>,
    caller: Authorized<EnqueueScope>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<RunView>, ApiError> {
    Ok(Json(state.engine.cancel_run(&caller.actor, id).await?))
}

/// Retry a failed run from the node that failed.
#[utoipa::path(
    post, path = "/v1/runs/{id}/retry", tag = "runs",
    params(("id" = i64, Path, description = "Run id")),
    responses(
        (status = 400, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "Running again from the failed node", body = RunView),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run has not failed", body = Problem, content_type = "application/problem+json"),
        AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn retry_run(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<RunView>, ApiError> {
    Ok(Json(state.engine.retry_run(&admin.actor, id).await?))
}

/// An event for wait-for-events nodes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// Your id for the event (1-255 characters, no NUL): a redelivery with the same id counts once. Generated if
    /// absent.
    #[schema(min_length = 1, max_length = 255, pattern = "^[^\\x00]*$")]
    pub id: Option<String>,
    /// The event name wait nodes list, e.g. `kyc.passed` (1-128 characters, no NUL).
    #[schema(min_length = 1, max_length = 128, pattern = "^[^\\x00]*$")]
    pub name: String,
    /// The correlation key wait nodes match, e.g. an order id (1-255 characters, no NUL).
    #[schema(min_length = 1, max_length = 255, pattern = "^[^\\x00]*$")]
    pub key: String,
    /// Any JSON without U+0000 in a string or key; wait nodes expose it as their output. `{}` if absent.
    #[serde(default = "empty_object")]
    #[schema(value_type = StorableJson)]
    pub payload: serde_json::Value,
}

/// Send an event: stored durably, it completes the waits on its key (now or when a run reaches its wait node).
#[utoipa::path(
    post, path = "/v1/events", tag = "events",
    request_body = EventRequest,
    responses(
        (status = 202, description = "Stored; resumed_runs lists the runs whose wait it completed", body = EventReceipt),
        (status = 200, description = "Duplicate event id: nothing changed", body = EventReceipt),
        (status = 422, description = "Bad name, key or id", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["events"]))
)]
pub async fn post_event(
    State(state): State<ApiState>,
    _: Authorized<EventsScope>,
    ApiJson(request): ApiJson<EventRequest>,
) -> Result<Response, ApiError> {
    let event = NewEvent {
        id: request.id,
        name: request.name,
        key: request.key,
        payload: request.payload,
    };
    let receipt = state.engine.ingest_event(event).await?;
    let status = if receipt.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(receipt)).into_response())
}
