//! Every API error is an RFC 9457 problem document (`application/problem+json`): `type`, `title`, `status`,
//! `detail`, and for validation failures a list of field `errors`. Handlers return [`ApiError`]; nothing else
//! reaches the client, so a bad request can never become a 500 or a panic.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::channels::callbacks::CallbackError;
use crate::clock::ClockError;
use crate::queue::{ParseError, QueueError};
use crate::recipients::RecipientsError;
use crate::recipients::unsubscribe::TokenError;
use crate::workflow::WorkflowError;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem, e.g. `/problems/validation` (see docs/api.md).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Field-level errors (validation problems only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// Where in the request: a JSON path (`jobs[3].priority`), a header or a path parameter.
    pub field: String,
    pub message: String,
}

/// An error a handler answers with.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// A path or query parameter that does not parse: 400 like any malformed request line, with the parameter
    /// named in `errors` as a validation problem would.
    pub fn bad_parameter(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = FieldError {
            field: field.into(),
            message: message.into(),
        };
        let mut error = Self::bad_request(format!("{}: {}", field.field, field.message));
        error.errors = vec![field];
        error
    }

    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "The body is not valid JSON",
            detail,
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with `Content-Type: application/json`",
        )
    }

    /// One or more fields are wrong; `errors` says which.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "The request is not valid",
            detail,
        );
        error.errors = errors;
        error
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "The body is too large",
            format!("the limit is {limit} bytes (api.max_body_bytes)"),
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or invalid API key",
            detail,
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "The API key lacks the scope",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "see /openapi.json",
        )
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!("this API key is over its rate limit; retry after {retry_after_secs} s"),
        );
        error.retry_after_secs = Some(retry_after_secs);
        error
    }

    /// 429 for a limit that is not a rate (too many of something open at once).
    pub fn too_many(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many",
            "Too many requests",
            detail,
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The database is unavailable",
            detail,
        );
        error.retry_after_secs = Some(2);
        error
    }

    /// The process is stopping: the request was not carried out, and another try (likely reaching another
    /// instance) will be.
    pub fn shutting_down() -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "The server is shutting down",
            "this instance is stopping and did not carry out the request; retry it",
        );
        error.retry_after_secs = Some(1);
        error
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail,
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem's short title, e.g. "Not found" (for the dashboard's error page).
    pub fn title(&self) -> &str {
        self.title
    }

    /// What went wrong, in the words a caller reads.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        ApiError::from(&error)
    }
}

impl From<&QueueError> for ApiError {
    fn from(error: &QueueError) -> Self {
        match error {
            QueueError::Database(error) => database_error(error),
            QueueError::Invalid(ParseError { what, reason }) => {
                ApiError::field(*what, reason.clone())
            }
            QueueError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            QueueError::Conflict(detail) => ApiError::conflict(detail.clone()),
        }
    }
}

impl From<std::sync::Arc<QueueError>> for ApiError {
    fn from(error: std::sync::Arc<QueueError>) -> Self {
        ApiError::from(&*error)
    }
}

impl From<crate::templates::TemplatesError> for ApiError {
    fn from(error: crate::templates::TemplatesError) -> Self {
        use crate::templates::TemplatesError;
        match error {
            TemplatesError::Database(error) => database_error(&error),
            TemplatesError::Invalid(problems) => ApiError::validation(
                problems
                    .into_iter()
                    .map(|message| FieldError {
                        field: "document".into(),
                        message,
                    })
                    .collect(),
            ),
            error @ TemplatesError::VersionConflict { .. } => ApiError::conflict(error.to_string()),
            TemplatesError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            TemplatesError::Render(message) => ApiError::validation(vec![FieldError {
                field: "template".into(),
                message,
            }]),
            TemplatesError::Io(detail) => ApiError::internal(detail),
        }
    }
}

impl From<WorkflowError> for ApiError {
    fn from(error: WorkflowError) -> Self {
        ApiError::from(&error)
    }
}

impl From<&WorkflowError> for ApiError {
    fn from(error: &WorkflowError) -> Self {
        match error {
            WorkflowError::Database(error) => database_error(error),
            WorkflowError::Queue(error) => ApiError::from(error),
            WorkflowError::Invalid(problems) => ApiError::validation(
                problems
                    .iter()
                    .map(|p| FieldError {
                        field: p
                            .node
                            .as_ref()
                            .map_or_else(|| "definition".into(), |n| format!("nodes.{n}")),
                        message: p.message.clone(),
                    })
                    .collect(),
            ),
            WorkflowError::InvalidInput(problems) => ApiError::validation(
                problems
                    .iter()
                    .map(|(field, message)| FieldError {
                        field: field.clone(),
                        message: message.clone(),
                    })
                    .collect(),
            ),
            WorkflowError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            error @ (WorkflowError::VersionConflict { .. } | WorkflowError::Conflict(_)) => {
                ApiError::conflict(error.to_string())
            }
            WorkflowError::Io(detail) => ApiError::internal(detail.clone()),
            WorkflowError::Provider(error) => ApiError::internal(error.to_string()),
            WorkflowError::Shared(shared) => ApiError::from(&**shared),
        }
    }
}

impl From<RecipientsError> for ApiError {
    fn from(error: RecipientsError) -> Self {
        match error {
            RecipientsError::Database(error) => database_error(&error),
            RecipientsError::Invalid(problems) => ApiError::validation(
                problems
                    .into_iter()
                    .map(|(field, message)| FieldError { field, message })
                    .collect(),
            ),
            RecipientsError::NotFound(_) => ApiError::not_found(error.to_string()),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Malformed => ApiError::bad_request(error.to_string()),
            TokenError::Forged => ApiError::forbidden(error.to_string()),
            TokenError::Expired => {
                Self::new(StatusCode::GONE, "expired", "Expired", error.to_string())
            }
        }
    }
}

impl From<CallbackError> for ApiError {
    fn from(error: CallbackError) -> Self {
        match error {
            CallbackError::BadSignature | CallbackError::Stale => {
                ApiError::unauthorized(error.to_string())
            }
            CallbackError::Malformed(_) => ApiError::bad_request(error.to_string()),
            CallbackError::ForeignTopic => ApiError::forbidden(error.to_string()),
            CallbackError::NotConfigured(_) => ApiError::not_found(error.to_string()),
            // Which URL failed and how is for the logs: the caller is not authenticated yet.
            CallbackError::Certificate(_) | CallbackError::Subscription(_) => {
                tracing::warn!(%error, "callback could not be verified or confirmed");
                ApiError::unavailable(
                    "the callback could not be verified at the moment; send it again later",
                )
            }
            CallbackError::Database(error) => database_error(&error),
        }
    }
}

impl From<ClockError> for ApiError {
    fn from(error: ClockError) -> Self {
        match error {
            ClockError::Database(error) => database_error(&error),
            ClockError::Queue(error) => ApiError::from(&error),
            ClockError::Workflow(error) => ApiError::from(error),
            ClockError::UnknownSchedule(_) => ApiError::not_found(error.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        database_error(&error)
    }
}

/// Connection trouble is the database being unavailable (503, retry); anything else is a bug (500).
/// What a caller learns when the database cannot be reached.
const UNAVAILABLE: &str = "the database cannot be reached at the moment; try again shortly";

fn database_error(error: &sqlx::Error) -> ApiError {
    match error {
        // The details (a host and port, a TLS error) are for the logs, not for whoever called: the answer may
        // reach an unauthenticated client (a provider callback, a bad key's lookup).
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => {
            tracing::warn!(%error, "database unavailable");
            ApiError::unavailable(UNAVAILABLE)
        }
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")) =>
        {
            tracing::warn!(%error, "database unavailable");
            ApiError::unavailable(UNAVAILABLE)
        }
        // Data exceptions: a value PostgreSQL cannot store, such as "\u0000" inside a JSON string.
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22")) => {
            ApiError::field(
                "body",
                format!(
                    "PostgreSQL cannot store a value in this request: {}",
                    db.message()
                ),
            )
        }
        _ => {
            tracing::error!(%error, "database error");
            ApiError::internal("a database error occurred; it has been logged")
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: format!("/problems/{}", self.slug),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
            errors: self.errors,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
