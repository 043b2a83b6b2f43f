//! `/v1/templates`: store template, layout and partial versions, list and read them, and preview a template's
//! every channel for a locale without sending.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{AdminScope, Authorized, ReadScope};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath};
use super::responses::{AdminAuth, JsonBody, ReadAuth};
use super::schemas::StorableObject;
use crate::templates::TemplateSummary;
use crate::templates::catalog::{Preview, Saved};
use crate::templates::document::{valid_locale, valid_name};

/// A template document as `POST /v1/templates` takes it (see docs/templates.md). What it cannot say (which fields
/// each channel has, that a layout places `{{ content }}`, that each part compiles) is checked on save, one error
/// per problem.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TemplateDocument)]
#[allow(dead_code)] // the schema of the body; the handler validates the JSON itself, naming every problem
pub struct TemplateDocumentSchema {
    /// 1-64 characters of `[A-Za-z0-9_.-]`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    name: String,
    #[schema(minimum = 1, maximum = 2147483647)]
    version: i32,
    /// `template` (default), `layout` or `partial`.
    #[schema(pattern = "^(template|layout|partial)$")]
    kind: Option<String>,
    #[schema(pattern = "^[^\\x00]*$")]
    description: Option<String>,
    /// A template's layout (wraps its email parts).
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    layout: Option<String>,
    /// Data for previews: the context the template sees (`trigger`, `recipient`, ...).
    #[schema(value_type = Option<StorableObject>)]
    sample: Option<serde_json::Value>,
    /// A template's variants: `email` (`subject`, `html`, `text`), `sms` (`text`), `push` (`title`, `body`), `chat`
    /// (`text`); each field a template.
    #[schema(value_type = Option<Object>)]
    channels: Option<serde_json::Value>,
    /// Per-locale overrides (`pt-BR`, `pt`, ...), each shaped as `channels`; at most 32.
    #[schema(value_type = Option<Object>)]
    locales: Option<serde_json::Value>,
    /// A layout's or partial's HTML part.
    html: Option<String>,
    /// A layout's or partial's text part.
    text: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SavedTemplate {
    pub name: String,
    pub version: i32,
    /// `template`, `layout` or `partial`.
    pub kind: String,
    /// `created`, or `unchanged` when this exact version was already stored.
    pub status: Saved,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoredTemplate {
    pub name: String,
    pub version: i32,
    /// The document as stored.
    pub document: serde_json::Value,
}

/// What to preview.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// The recipient locale to render for (`pt-BR` falls back to `pt`, then the default variant); none: the
    /// default variants.
    #[schema(max_length = 35, pattern = "^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$")]
    pub locale: Option<String>,
    /// The data the template sees (`trigger`, `recipient`, ...); default: the template's `sample`.
    #[schema(value_type = Option<StorableObject>)]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Store a template, layout or partial version (JSON; see docs/templates.md).
#[utoipa::path(
    post, path = "/v1/templates", tag = "templates",
    request_body(content = TemplateDocumentSchema, description = "A template document"),
    responses(
        (status = 201, description = "Stored", body = SavedTemplate),
        (status = 200, description = "This exact version was already stored", body = SavedTemplate),
        (status = 409, description = "This version is stored with other content", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid document: one error per problem, naming the field", body = Problem, content_type = "application/problem+json"),
        JsonBody, AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn save_template(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiJson(document): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let templates = &state.engine.templates;
    let (saved_document, saved) = templates.save(&admin.actor, "request", &document).await?;
    let status = match saved {
        Saved::Created => StatusCode::CREATED,
        Saved::Unchanged => StatusCode::OK,
    };
    let body = SavedTemplate {
        name: saved_document.name,
        version: saved_document.version,
        kind: saved_document.kind.as_str().to_string(),
        status: saved,
    };
    Ok((status, Json(body)).into_response())
}

/// List templates, layouts and partials (latest version of each).
#[utoipa::path(
    get, path = "/v1/templates", tag = "templates",
    responses((status = 200, description = "The catalogue", body = TemplateList), ReadAuth),
    security(("api_key" = ["read"]))
)]
pub async fn list_templates(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
) -> Result<Json<TemplateList>, ApiError> {
    Ok(Json(TemplateList {
        templates: state.engine.templates.list().await?,
    }))
}

/// The latest version of one template, layout or partial.
#[utoipa::path(
    get, path = "/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    responses(
        (status = 200, description = "The latest version", body = StoredTemplate),
        (status = 404, description = "No such template", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn get_template(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<StoredTemplate>, ApiError> {
    if !valid_name(&name) {
        return Err(ApiError::not_found(format!("template `{name}` not found")));
    }
    let (version, document) = state.engine.templates.latest(&name).await?;
    Ok(Json(StoredTemplate {
        name,
        version,
        document,
    }))
}

/// Render every channel of a template for a locale, with sample data, without sending.
#[utoipa::path(
    post, path = "/v1/templates/{name}/preview", tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    request_body(content = PreviewRequest, description = "The locale and data (both optional)"),
    responses(
        (status = 200, description = "Each channel's rendered content", body = Preview),
        (status = 404, description = "No such template", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A variant failed to render (a missing variable is named), or the request is invalid", body = Problem, content_type = "application/problem+json"),
        JsonBody, ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn preview_template(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<PreviewRequest>,
) -> Result<Json<Preview>, ApiError> {
    if let Some(locale) = &request.locale
        && !valid_locale(locale)
    {
        return Err(ApiError::validation(vec![super::error::FieldError {
            field: "locale".into(),
            message: "is not a locale tag like `pt` or `pt-BR`".into(),
        }]));
    }
    if !valid_name(&name) {
        return Err(ApiError::not_found("no such template"));
    }
    let data = request.data.map(serde_json::Value::Object);
    if data
        .as_ref()
        .is_some_and(crate::templates::document::has_nul)
    {
        return Err(ApiError::field("data", "contains U+0000"));
    }
    let preview = state
        .engine
        .templates
        .preview(&name, request.locale.as_deref(), data)
        .await?;
    Ok(Json(preview))
}
