//! What an attacker at the API's door tries: ids that bloat every row a request writes, keys that are not keys,
//! floods of unknown keys. Each test names the finding it closes (issue 15).

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn a_job() -> Value {
    json!({"queue": "emails", "kind": "herald.log", "payload": {"to": "ada@example.com"}})
}

/// Enqueues a job with `X-Request-Id: id` and returns (the response's request id, the stored job's).
async fn enqueue_with_request_id(app: &TestApp, id: &str) -> (String, String) {
    let response = app
        .post("/v1/jobs", &app.service_key)
        .header("x-request-id", id)
        .json(&a_job())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let answered = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    let job = app
        .get_json(&format!("/v1/jobs/{}", body["id"]), &app.read_key)
        .await;
    (
        answered,
        job["request_id"].as_str().unwrap_or_default().to_string(),
    )
}

/// Finding 13: `X-Request-Id` was copied onto every job whatever its length.
#[tokio::test]
async fn a_request_id_that_is_not_a_short_visible_token_is_replaced() {
    let app = spawn_app().await;
    let fine = "a".repeat(herald::api::MAX_REQUEST_ID_LEN);
    assert_eq!(
        enqueue_with_request_id(&app, &fine).await,
        (fine.clone(), fine)
    );
    for unfit in [
        "x".repeat(herald::api::MAX_REQUEST_ID_LEN + 1),
        "x".repeat(300_000),
        "two words".to_string(),
    ] {
        let (answered, stored) = enqueue_with_request_id(&app, &unfit).await;
        assert_ne!(answered, unfit);
        assert_eq!(answered.len(), 36, "a generated UUID: {answered}");
        assert_eq!(stored, answered, "the job carries the generated id");
    }
}

/// Finding 2: any string was looked up (its plaintext sent to PostgreSQL) and cached, valid or not. Now a
/// string that is not shaped like a key is refused without a lookup, only valid keys are cached (by digest), and
/// failed authentications are limited per client: past the budget, 429 and no lookup at all.
#[tokio::test]
async fn failed_authentications_are_limited_per_client_and_valid_keys_spend_nothing() {
    use std::num::NonZeroU32;
    let app = spawn_app_with(|s| {
        s.api.auth_failures_per_second = NonZeroU32::MIN;
        s.api.auth_failures_burst = NonZeroU32::new(5).unwrap();
    })
    .await;
    // Valid keys, many times (key_cache_secs = 0 in tests: each one is looked up): never limited.
    for _ in 0..20 {
        let queues = app.get("/v1/queues", &app.read_key).send().await.unwrap();
        assert_eq!(queues.status(), StatusCode::OK);
    }
    // Failures: malformed (100 KB), the wrong alphabet, unknown but well-formed. The first five are 401.
    let mut statuses = Vec::new();
    for junk in [
        "x".repeat(100_000),
        format!("hk_{}", "Z".repeat(48)),
        "hk_abc".to_string(),
        format!("hk_{:048x}", 1),
        format!("hk_{:048x}", 2),
        format!("hk_{:048x}", 3),
        format!("hk_{:048x}", 4),
    ] {
        statuses.push(app.get("/v1/queues", &junk).send().await.unwrap().status());
    }
    assert_eq!(
        &statuses[..5],
        &[StatusCode::UNAUTHORIZED; 5],
        "{statuses:?}"
    );
    assert_eq!(
        &statuses[5..],
        &[StatusCode::TOO_MANY_REQUESTS; 2],
        "{statuses:?}"
    );
    // While the client waits, even a valid key from it is not looked up.
    let blocked = app.get("/v1/queues", &app.read_key).send().await.unwrap();
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(blocked.headers().contains_key("retry-after"));
}

/// Keys minted before digests were computed in Rust (by PostgreSQL's `sha256`) still work: the digests agree.
#[tokio::test]
async fn keys_stored_by_earlier_versions_still_authenticate() {
    let app = spawn_app().await;
    let old = format!("hk_{}", "0123456789abcdef".repeat(3));
    sqlx::query(
        "INSERT INTO herald_api_keys (name, prefix, key_hash, scopes) \
         VALUES ('old', left($1, 11), sha256(convert_to($1, 'UTF8')), '{read}')",
    )
    .bind(&old)
    .execute(&app.db.pool)
    .await
    .unwrap();
    assert!(herald::api::keys::well_formed(&old));
    let queues = app.get("/v1/queues", &old).send().await.unwrap();
    assert_eq!(queues.status(), StatusCode::OK);
}

/// Finding 18: a 503 told an unauthenticated caller how the database connection failed (host, port, OS error).
#[tokio::test]
async fn an_unreachable_database_is_reported_without_its_details() {
    // Nothing listens on port 9 (discard) here: every connection attempt fails.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy("postgres://herald@127.0.0.1:9/nowhere")
        .unwrap();
    let app = herald::app::App::on_pool(settings(), pool).expect("app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move { app.serve_api(listener, stop).await }
    });
    let response = reqwest::Client::new()
        .get(format!("{address}/v1/queues"))
        .bearer_auth(format!("hk_{}", "ab".repeat(24)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = response.text().await.unwrap();
    for secret in ["127.0.0.1", ":9", "os error", "refused", "nowhere"] {
        assert!(!body.contains(secret), "{secret:?} in {body}");
    }
    stop.cancel();
    let _ = server.await;
}

/// Finding 12: clients trickling partial headers held their connections forever, and enough of them took every
/// file descriptor (`/healthz` stopped answering). Now a client has `header_read_timeout_secs` to send its
/// headers, and at most `max_connections` are served at once.
#[tokio::test]
async fn slow_header_clients_are_cut_off_and_connections_are_capped() {
    use std::num::NonZeroUsize;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|s| {
        s.api.max_connections = NonZeroUsize::new(20).unwrap();
        s.api.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let host = app.address.trim_start_matches("http://").to_string();
    // 40 clients, twice the cap, each sending half a request head and then nothing.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    // A real client is served once the slow ones are cut off (within the timeout, plus slack for CI).
    let started = Instant::now();
    let health = tokio::time::timeout(
        Duration::from_secs(15),
        app.client.get(app.url("/healthz")).send(),
    )
    .await
    .expect("/healthz answers while slow clients hold connections")
    .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // Every slow client's connection is closed by the server (read returns EOF or an error, never hangs).
    for mut stream in slow {
        let mut buffer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut buffer)).await;
        assert!(read.is_ok(), "a slow client's connection stayed open");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Review of finding 12: the header timeout starts only once a connection has spoken HTTP/1, so sockets that
/// send nothing (the server waits to tell HTTP/1 from HTTP/2) held their slots forever and `max_connections` of
/// them locked everyone out. Now a connection on which no byte moves for `idle_timeout_secs` is closed.
#[tokio::test]
async fn silent_connections_are_closed_and_do_not_lock_clients_out() {
    use std::num::NonZeroUsize;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    let app = spawn_app_with(|s| {
        s.api.max_connections = NonZeroUsize::new(10).unwrap();
        s.api.request_timeout = Duration::from_secs(1);
        s.api.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let host = app.address.trim_start_matches("http://").to_string();
    // Twice the cap, each connecting and then saying nothing at all.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(&host).await.unwrap());
    }
    let health = tokio::time::timeout(
        Duration::from_secs(15),
        app.client.get(app.url("/healthz")).send(),
    )
    .await
    .expect("/healthz answers while silent clients hold connections")
    .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    for mut stream in silent {
        let mut buffer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut buffer)).await;
        assert!(read.is_ok(), "a silent connection stayed open");
    }
}

/// Finding 15: scopes were checked by a call inside each handler, so a route could forget one. Now each handler
/// takes `Authorized<Scope>`, and the OpenAPI document names each route's scope. This walks every route the
/// document lists: a key with every scope but the route's is refused (403); a key with only the route's scope is
/// let through (whatever the handler then answers).
#[tokio::test]
async fn every_route_in_the_openapi_document_refuses_a_key_without_its_scope() {
    use herald::api::keys::{self, Scope};
    let app = spawn_app().await;
    let spec: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let Some(scope) = operation["security"][0]["api_key"][0].as_str() else {
                continue; // public: health, callbacks (signed), the document itself
            };
            let needed =
                Scope::parse(scope).unwrap_or_else(|| panic!("{path}: unknown scope {scope}"));
            // A route may need several scopes (minting a feed token: `enqueue` and `read`): the key "without"
            // lacks the first; the key "only" has exactly the listed ones.
            let all_needed: Vec<Scope> = operation["security"][0]["api_key"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Scope::parse(s.as_str().unwrap()).unwrap())
                .collect();
            let others: Vec<Scope> = Scope::ALL.into_iter().filter(|s| *s != needed).collect();
            let (without, _) = keys::create(
                &app.db.pool,
                &herald::audit::Actor::cli(),
                "without",
                &others,
            )
            .await
            .unwrap();
            let (only, _) = keys::create(
                &app.db.pool,
                &herald::audit::Actor::cli(),
                "only",
                &all_needed,
            )
            .await
            .unwrap();
            let url = app.url(
                &path
                    .replace("{id}", "1")
                    .replace("{name}", "welcome")
                    .replace("{channel}", "email")
                    .replace("{address}", "a@example.com"),
            );
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let send = |key: String| {
                app.client
                    .request(method.clone(), &url)
                    .bearer_auth(key)
                    .json(&json!({}))
                    .send()
            };
            let refused = send(without).await.unwrap();
            assert_eq!(
                refused.status(),
                StatusCode::FORBIDDEN,
                "{method} {path} without `{scope}`"
            );
            let allowed = send(only).await.unwrap().status();
            assert!(
                allowed != StatusCode::FORBIDDEN && allowed != StatusCode::UNAUTHORIZED,
                "{method} {path} with only `{scope}`: {allowed}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} routes carry a scope");
}

/// Finding 6: any `enqueue` key could create herald's own jobs (a day-long `herald.sleep` on the workflows queue,
/// forged workflow node jobs). Now `herald.` kinds and herald's own queues are refused; the test kinds only with
/// `jobs.allow_test_kinds`.
#[tokio::test]
async fn herald_internal_kinds_and_queues_are_refused_to_callers() {
    let production = spawn_app_with(|s| s.jobs.allow_test_kinds = false).await;
    let testing = spawn_app().await; // config/test.toml: allow_test_kinds = true
    let enqueue =
        |app: &TestApp, body: Value| app.post("/v1/jobs", &app.service_key).json(&body).send();
    for (app, body, refused_field) in [
        (
            &production,
            json!({"queue": "emails", "kind": "herald.sleep", "payload": {"ms": 86_400_000}}),
            Some("kind"),
        ),
        (
            &production,
            json!({"queue": "emails", "kind": "herald.log"}),
            Some("kind"),
        ),
        (
            &production,
            json!({"queue": "workflows", "kind": "billing.invoice"}),
            Some("queue"),
        ),
        (
            &production,
            json!({"queue": "herald.maintenance", "kind": "billing.invoice"}),
            Some("queue"),
        ),
        (
            &testing,
            json!({"queue": "workflows", "kind": "herald.workflow.node"}),
            Some("queue"),
        ),
        (
            &testing,
            json!({"queue": "emails", "kind": "herald.workflow.node"}),
            Some("kind"),
        ),
        (
            &testing,
            json!({"queue": "emails", "kind": "herald.log"}),
            None,
        ),
        (
            &production,
            json!({"queue": "emails", "kind": "billing.invoice"}),
            None,
        ),
    ] {
        let response = enqueue(app, body.clone()).await.unwrap();
        match refused_field {
            Some(field) => {
                assert_eq!(
                    response.status(),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{body}"
                );
                let problem: Value = response.json().await.unwrap();
                assert!(problem.to_string().contains(field), "{body}: {problem}");
            }
            None => assert_eq!(response.status(), StatusCode::CREATED, "{body}"),
        }
    }
    // The batch endpoint applies the same rules.
    let batch = production
        .post("/v1/jobs/batch", &production.service_key)
        .json(&json!({"jobs": [{"queue": "emails", "kind": "herald.sleep"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// Finding 19: `/docs` loaded Redoc's latest version from a CDN (no integrity, blank offline). Now the page loads
/// only what the binary serves.
#[tokio::test]
async fn the_docs_page_loads_no_third_party_script() {
    let app = spawn_app().await;
    let page = app
        .client
        .get(app.url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    assert!(
        page.contains(r#"src="/docs/redoc.standalone.js""#),
        "{page}"
    );
    let script = app
        .client
        .get(app.url("/docs/redoc.standalone.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(
        script.bytes().await.unwrap().len() > 500_000,
        "the whole bundle"
    );
}

/// Found by schemathesis: serde reads a struct from a JSON array (its fields in order), so `[]` passed for a body
/// whose fields are all optional. `POST /v1/dead-letters/replay` with `[]` would have replayed every dead letter.
/// Every body must be an object.
#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused_before_any_handler_reads_it() {
    let app = spawn_app().await;
    sqlx::query(
        "INSERT INTO herald_dead_letters (job_id, queue, kind, payload, priority, attempt, max_attempts, timeout_ms, \
                                          errors, reason, created_at, failed_at) \
         VALUES (1, 'default', 'herald.noop', '{}', 0, 3, 3, 1000, '[]', 'down', now(), now())",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    for (method, path, key, body) in [
        ("POST", "/v1/dead-letters/replay", &app.admin_key, "[]"),
        (
            "PUT",
            "/v1/recipients/ada/preferences",
            &app.service_key,
            " []",
        ),
        (
            "POST",
            "/v1/jobs",
            &app.service_key,
            r#"["default", "herald.noop"]"#,
        ),
        ("POST", "/v1/jobs", &app.service_key, "42"),
    ] {
        let answer = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(key)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{method} {path} {body}"
        );
        let problem: Value = answer.json().await.unwrap();
        assert!(
            problem.to_string().contains("must be a JSON object"),
            "{problem}"
        );
    }
    let replayed = scalar_i64(
        &app.db.pool,
        "SELECT count(*) FROM herald_dead_letters WHERE replayed_as IS NOT NULL",
    )
    .await;
    assert_eq!(replayed, 0);
    // Not JSON at all is still a 400.
    let garbage = app
        .post("/v1/jobs", &app.service_key)
        .header("Content-Type", "application/json")
        .body("<xml/>")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
}
