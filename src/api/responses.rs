//! The problem answers many endpoints share, as OpenAPI response groups: each handler's `#[utoipa::path]` lists
//! its success and its own errors, plus the groups that apply to it.
//!
//! * [`ReadAuth`], [`EnqueueAuth`], [`AdminAuth`]: what the `Caller` extractor answers on every endpoint that
//!   needs a key (401 no or unknown key, 403 wrong scope, 429 over the key's rate limit). One group per scope so
//!   the 403 says which scope is missing.
//! * [`JsonBody`]: what the `ApiJson` extractor answers before the handler runs (400 not JSON, 413 too large,
//!   415 not `application/json`). Each JSON endpoint documents its own 422, since what is invalid differs.
//!
//! The variants are never built: these types only describe responses that `ApiError` produces.

#![allow(dead_code)] // the variants exist for the derive, see above

use utoipa::IntoResponses;

use super::error::Problem;

#[derive(IntoResponses)]
pub enum ReadAuth {
    #[response(
        status = 401,
        description = "Missing or unknown key",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    #[response(
        status = 403,
        description = "Key lacks the read scope",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    #[response(
        status = 429,
        description = "Rate limited",
        content_type = "application/problem+json"
    )]
    RateLimited(Problem),
}

#[derive(IntoResponses)]
pub enum EnqueueAuth {
    #[response(
        status = 401,
        description = "Missing or unknown key",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    #[response(
        status = 403,
        description = "Key lacks the enqueue scope",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    #[response(
        status = 429,
        description = "Rate limited",
        content_type = "application/problem+json"
    )]
    RateLimited(Problem),
}

#[derive(IntoResponses)]
pub enum AdminAuth {
    #[response(
        status = 401,
        description = "Missing or unknown key",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    #[response(
        status = 403,
        description = "Key lacks the admin scope",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    #[response(
        status = 429,
        description = "Rate limited",
        content_type = "application/problem+json"
    )]
    RateLimited(Problem),
}

#[derive(IntoResponses)]
pub enum JsonBody {
    #[response(
        status = 400,
        description = "Malformed JSON",
        content_type = "application/problem+json"
    )]
    MalformedJson(Problem),
    #[response(
        status = 413,
        description = "Body too large",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    #[response(
        status = 415,
        description = "Not application/json",
        content_type = "application/problem+json"
    )]
    NotJson(Problem),
}
