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

/// An auth group; only the 403's text differs between scopes. (Not formatted by rustfmt, which does not settle on
/// an indentation for a macro variable inside an attribute.)
#[rustfmt::skip]
macro_rules! auth_group {
    ($name:ident, $forbidden:tt) => {
        #[derive(IntoResponses)]
        pub enum $name {
            #[response(
                status = 401,
                description = "Missing or unknown key",
                content_type = "application/problem+json"
            )]
            Unauthorized(Problem),
            #[response(
                status = 403,
                description = $forbidden,
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
    };
}

auth_group!(ReadAuth, "Key lacks the read scope");
auth_group!(EnqueueAuth, "Key lacks the enqueue scope");
auth_group!(AdminAuth, "Key lacks the admin scope");

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
