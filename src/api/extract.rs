//! Extractors that turn every kind of bad input into a problem document with the offending field named, instead
//! of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, RawPathParams, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::error::{ApiError, FieldError};

/// A JSON body, parsed with the path of the first bad field reported (`jobs[2].priority: invalid type ...`).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(ApiError::unsupported_media_type());
        }
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(usize::MAX);
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| body_error(rejection, limit))?;
        // Every herald body is a JSON object. serde reads a struct from an array too (its fields in order), so
        // `[]` would pass for a body whose fields are all optional: `POST /v1/dead-letters/replay` with `[]` would
        // replay every dead letter. Refused before any type sees it.
        // (Anything that cannot start a JSON value is left to `parse_json`: a 400 for malformed JSON.)
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| matches!(b, b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'))
        {
            return Err(ApiError::field("(body)", "must be a JSON object"));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// The configured body limit, put in request extensions so rejections can name it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large(limit)
    } else {
        ApiError::bad_request(rejection.body_text())
    }
}

/// Parses JSON, telling a syntax error (400) from a well-formed document of the wrong shape (422).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut deserializer).map_err(|error| {
        let path = json_path(error.path());
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::malformed_json(inner.to_string())
        } else {
            ApiError::validation(vec![shape_error(path, &inner)])
        }
    })?;
    // Trailing bytes after the document are a syntax error too.
    deserializer
        .end()
        .map_err(|error| ApiError::malformed_json(error.to_string()))?;
    Ok(value)
}

/// The path serde was at, as clients write it: `jobs[2].priority`, `data.user` (empty at the top).
fn json_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            // A key that is not a string: nothing a client could name.
            Segment::Unknown => {}
        }
    }
    out
}

/// A well-formed document of the wrong shape, as a field error: the offending field's JSON path (a missing field
/// is reported where it belongs, not at its parent) and a message in JSON's terms.
fn shape_error(path: String, error: &serde_json::Error) -> FieldError {
    let message = error.to_string();
    // The position is serde_json's suffix; the field already says where.
    let position = format!(" at line {} column {}", error.line(), error.column());
    let message = message.strip_suffix(&position).unwrap_or(&message);
    let child = |name: &str| match path.as_str() {
        "" => name.to_string(),
        parent => format!("{parent}.{name}"),
    };
    let (field, message) = if let Some(name) = quoted_after(message, "missing field `") {
        (child(name), "is required".to_string())
    } else if let Some(name) = quoted_after(message, "unknown field `") {
        // The path already ends at the unknown key (serde_path_to_error records it before the key is refused).
        let field = if path == name || path.ends_with(&format!(".{name}")) {
            path.clone()
        } else {
            child(name)
        };
        let known = message
            .split_once(", expected ")
            .map(|(_, list)| format!("; expected {}", list.replace('`', "")))
            .unwrap_or_default();
        (field, format!("is not a known field{known}"))
    } else {
        (path.clone(), plain_message(message))
    };
    let field = if field.is_empty() {
        "body".to_string()
    } else {
        field
    };
    FieldError { field, message }
}

/// The name between `prefix` and the next backtick, in serde's "missing field `x`" style messages.
fn quoted_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// serde's type errors name Rust types ("expected i64", "expected struct JobRequest", "a sequence"); clients know
/// JSON's. Other messages (a field's own check, an unknown enum value) are already written for clients.
fn plain_message(message: &str) -> String {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "));
    // rsplit: the value shown first may itself contain ", expected ".
    if let Some((got, expected)) = rest.and_then(|rest| rest.rsplit_once(", expected ")) {
        return format!("expected {}, got {}", json_kind(expected), json_value(got));
    }
    // serde also reads a struct from an array of its fields in order; a wrong-sized one is reported by length.
    if let Some((length, expected)) = message
        .strip_prefix("invalid length ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        return match json_kind(expected).as_str() {
            "an object" => "expected an object, got an array".to_string(),
            kind => format!("expected {kind}, got {length} items"),
        };
    }
    message.to_string()
}

/// What serde's `expected ...` means in JSON's terms.
fn json_kind(expected: &str) -> String {
    let expected = expected.trim();
    // std::any::type_name gives full paths (`alloc::string::String`); serde gives bare names.
    let bare = expected.rsplit("::").next().unwrap_or(expected);
    let kind = match bare {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "u8" => "an integer from 0 to 255",
        "u16" => "an integer from 0 to 65535",
        "u32" => "an integer from 0 to 4294967295",
        "u64" | "u128" | "usize" => "a non-negative integer",
        "f32" | "f64" | "a JSON number" => "a number",
        "bool" | "a boolean" => "true or false",
        "String" | "str" | "a string" | "a borrowed string" => "a string",
        "char" | "a character" => "a single character",
        "a map" | "map" => "an object",
        "a sequence" | "sequence" => "an array",
        "unit" => "null",
        _ if bare.starts_with("struct ") => "an object",
        _ if bare.starts_with("tuple") || bare.starts_with("a tuple") => "an array",
        _ if bare.starts_with("enum ") => "one of the documented values",
        _ => bare,
    };
    kind.to_string()
}

/// A JSON value's type and, for scalars, the value, for messages: `string "high"`, `an array`.
pub fn json_type(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => format!("boolean `{b}`"),
        serde_json::Value::Number(n) => format!("number `{n}`"),
        // Display writes a JSON string: quoted and escaped.
        serde_json::Value::String(_) => format!("string {value}"),
        serde_json::Value::Array(_) => "an array".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

/// serde's description of the value it got, in JSON's terms (`map` is an object, `sequence` an array).
fn json_value(got: &str) -> &str {
    match got {
        "map" => "an object",
        "sequence" => "an array",
        "unit value" => "null",
        other => other,
    }
}

/// Path parameters; a malformed one (`/v1/jobs/abc`) is a 400 naming the parameter.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => {
                // The parameters' names, for a rejection that only says where (a single value, a tuple index).
                let names: Vec<String> = RawPathParams::from_request_parts(parts, state)
                    .await
                    .map(|raw| raw.iter().map(|(name, _)| name.to_string()).collect())
                    .unwrap_or_default();
                Err(path_error(rejection, &names))
            }
        }
    }
}

/// A path parameter that does not parse, named, with what was expected in JSON's terms rather than axum's
/// "Cannot parse `abc` to a `i64`". Other rejections (a routing bug, not the client's) keep axum's words.
fn path_error(rejection: PathRejection, names: &[String]) -> ApiError {
    let PathRejection::FailedToDeserializePathParams(failed) = &rejection else {
        return ApiError::bad_request(rejection.body_text());
    };
    let (name, value, expected) = match failed.kind() {
        ErrorKind::ParseErrorAtKey {
            key,
            value,
            expected_type,
        } => (Some(key.as_str()), value, *expected_type),
        ErrorKind::ParseErrorAtIndex {
            index,
            value,
            expected_type,
        } => (names.get(*index).map(String::as_str), value, *expected_type),
        ErrorKind::ParseError {
            value,
            expected_type,
        } => (
            names
                .first()
                .filter(|_| names.len() == 1)
                .map(String::as_str),
            value,
            *expected_type,
        ),
        _ => return ApiError::bad_request(rejection.body_text()),
    };
    ApiError::bad_parameter(
        name.unwrap_or("path"),
        format!("expected {}, got `{value}`", json_kind(expected)),
    )
}

/// Query parameters; bad ones are a 400 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// The default body of optional JSON fields (`payload`, `data`): an empty object.
pub fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// The request id (`X-Request-Id`, set by the middleware if the client sent none), stored with what it creates.
pub fn request_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get("x-request-id").and_then(|v| v.to_str().ok())
}

/// The `Idempotency-Key` header if present; it wins over a key in the body, since it is what HTTP clients and
/// proxies know to retry with.
pub fn idempotency_key_header(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|value| {
            value
                .to_str()
                .map(str::to_string)
                .map_err(|_| ApiError::field("Idempotency-Key", "must be visible ASCII"))
        })
        .transpose()
}

/// A page's size when the request names none.
pub const DEFAULT_PAGE: i64 = 50;
/// The largest page a list endpoint serves (`limit`); the OpenAPI document states it as each `limit`'s maximum.
pub const MAX_PAGE: i64 = 500;

/// A list endpoint's `limit` (1 to [`MAX_PAGE`], default [`DEFAULT_PAGE`]) and `cursor` (the previous page's
/// last id).
pub fn page_params(
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<(i64, Option<i64>), ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    // Exactly the documented `^[0-9]{1,18}$` (an id, as `next_cursor` gives it): `+5` or a 19-digit number would
    // parse, but no page hands them out.
    let well_formed =
        |c: &str| (1..=18).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit());
    let before = cursor
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|_| well_formed(c))
                .ok_or_else(|| ApiError::field("cursor", "not a cursor from this API"))
        })
        .transpose()?;
    Ok((limit, before))
}

/// Cuts a page fetched with `limit + 1` rows back to `limit`; the extra row says there is a next page, whose
/// cursor is the last kept item's id.
pub fn finish_page<T>(items: &mut Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> Option<String> {
    if items.len() as i64 <= limit {
        return None;
    }
    items.truncate(limit as usize);
    items.last().map(|item| id(item).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only deserialized
    struct Outer {
        count: Option<i64>,
        small: Option<u8>,
        items: Option<Vec<Inner>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // only deserialized
    struct Inner {
        name: String,
    }

    /// The field errors of parsing `json` as [`Outer`], as `field: message` lines.
    async fn errors(json: &str) -> String {
        let error = parse_json::<Outer>(json.as_bytes()).unwrap_err();
        let response = error.into_response();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        problem["detail"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn shape_errors_name_the_json_path_in_json_terms() {
        let cases = [
            (
                r#"{"count": "x"}"#,
                r#"count: expected an integer, got string "x""#,
            ),
            (
                r#"{"count": 1.5}"#,
                "count: expected an integer, got floating point `1.5`",
            ),
            (
                r#"{"small": 300}"#,
                "small: expected an integer from 0 to 255, got integer `300`",
            ),
            (
                r#"{"items": {}}"#,
                "items: expected an array, got an object",
            ),
            (
                r#"{"items": [{"name": "a"}, 5]}"#,
                "items[1]: expected an object, got integer `5`",
            ),
            (
                r#"{"items": [{"name": "a"}, {}]}"#,
                "items[1].name: is required",
            ),
            (
                r#"{"items": [{"name": null}]}"#,
                "items[0].name: expected a string, got null",
            ),
            (
                r#"{"colour": 1}"#,
                "colour: is not a known field; expected one of count, small, items",
            ),
            ("[]", "body: expected an object, got an array"),
        ];
        for (json, expected) in cases {
            assert_eq!(errors(json).await, expected, "{json}");
        }
    }
}
