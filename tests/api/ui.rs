//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven over WebDriver),
//! against the real API and, where work must happen, a real worker: log in with a key, watch a queue's depth
//! change, pause and resume it (audited); dead letters filtered, replayed (and run to completion), deleted; a
//! waiting job found and cancelled; a run's graph, timeline and deliveries; a recipient found by email and the
//! reason a send was skipped; templates, analytics and the audit log; a `read` key that sees but cannot act. Every
//! page is photographed (`$CARGO_TARGET_TMPDIR/ui-screenshots/`), on a laptop's window and a phone's. The
//! WebDriver calls are plain JSON over HTTP (the W3C protocol), a few lines each.

use std::time::Duration;

use crate::common::{self, spawn_app, wait_until};
use serde_json::{Value, json};

/// A running `chromedriver` and one headless browser session on it.
struct Browser {
    driver: tokio::process::Child,
    base: String,
    session: String,
    client: reqwest::Client,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Self {
        let binary =
            std::env::var("HERALD_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = common::free_port();
        let driver = tokio::process::Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} ({e}): install chromium and chromium-driver (./test.sh does)")
            });
        let base = format!("http://127.0.0.1:{port}");
        // Every WebDriver call has a deadline: a browser that hangs fails the test instead of holding it.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        wait_until(Duration::from_secs(30), "chromedriver ready", || async {
            client
                .get(format!("{base}/status"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        let chromium =
            std::env::var("HERALD_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"]
            }
        }}});
        let created: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_string();
        Self {
            driver,
            base,
            session,
            client,
        }
    }

    /// A WebDriver command; its answer's value, or the browser's error (`{"error": …}`).
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        // WebDriver refuses a body on GET and DELETE.
        let request = if method == reqwest::Method::POST {
            self.client.request(method, url).json(&body)
        } else {
            self.client.request(method, url)
        };
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        let value = answer["value"].clone();
        if value.get("error").is_some_and(Value::is_string) {
            Err(value)
        } else {
            Ok(value)
        }
    }

    /// A WebDriver command that must succeed: a browser error fails the test rather than passing as nothing.
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|error| panic!("WebDriver {path}: {error}"))
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// The element at `css`, or `None` when the page has none (any other browser error fails the test).
    async fn find(&self, css: &str) -> Option<String> {
        match self
            .try_call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await
        {
            Ok(found) => found[ELEMENT].as_str().map(str::to_string),
            Err(error) if error["error"] == "no such element" => None,
            Err(error) => panic!("finding {css}: {error}"),
        }
    }

    async fn text(&self, css: &str) -> String {
        let Some(element) = self.find(css).await else {
            return String::new();
        };
        // The page may have been replaced between finding and reading (the overview reloads itself): read as empty,
        // the callers poll.
        self.try_call(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            Value::Null,
        )
        .await
        .ok()
        .and_then(|text| text.as_str().map(str::to_string))
        .unwrap_or_default()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Clicks the element at `css`; if the page was replaced between finding and clicking (the overview reloads
    /// itself every 5 s), finds it again on the new page and clicks that.
    async fn click(&self, css: &str) {
        for _ in 0..3 {
            let element = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
            match self
                .try_call(
                    reqwest::Method::POST,
                    &format!("/element/{element}/click"),
                    json!({}),
                )
                .await
            {
                Ok(_) => return,
                Err(error) if error["error"] == "stale element reference" => continue,
                Err(error) => panic!("clicking {css}: {error}"),
            }
        }
        panic!("{css} kept being replaced before it could be clicked");
    }

    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let png = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    /// Resizes the window (a phone: 390 x 844).
    async fn window(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// Logs in with `key` and waits for the overview.
    async fn login(&self, app: &common::TestApp, key: &str) {
        self.go(&app.url("/ui/login")).await;
        self.type_into("#key", key).await;
        self.click("button[type=submit]").await;
        self.until_url("/ui").await;
    }

    async fn stop(mut self) {
        self.call(reqwest::Method::DELETE, "", Value::Null).await;
        let _ = self.driver.kill().await;
    }

    /// Waits until the page's address ends with `suffix` (a click that submits a form returns before the next
    /// page has loaded).
    async fn until_url(&self, suffix: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let at = self.url().await;
            if at.ends_with(suffix) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never reached {suffix} (at {at}: {})",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's address contains `part`.
    async fn until_url_contains(&self, part: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !self.url().await.contains(part) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never reached {part}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the element at `css` contains `expected`, without reloading.
    async fn until_contains(&self, css: &str, expected: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !self.text(css).await.contains(expected) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} never contained {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the element at `css` reads `expected` (the overview refreshes itself every 5 s; reloading now is
    /// what a person would do).
    async fn until_text(&self, page: &str, css: &str, expected: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if self.text(css).await.trim() == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} never read {expected:?} (last {:?})",
                self.text(css).await
            );
            self.go(page).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn an_operator_logs_in_watches_a_queue_and_pauses_and_resumes_it_in_chromium() {
    let app = spawn_app().await;
    let browser = Browser::start().await;
    // Without a session, the dashboard asks for a key.
    browser.go(&app.url("/ui")).await;
    browser.until_url("/ui/login").await;
    browser.type_into("#key", "hk_not_a_key").await;
    browser.click("button[type=submit]").await;
    browser.until_contains(".error", "not valid").await;
    browser.type_into("#key", &app.admin_key).await;
    browser.click("button[type=submit]").await;
    browser.until_url("/ui").await;
    // A queue's depth, as enqueued over the API.
    for _ in 0..3 {
        let enqueued = app
            .post("/v1/jobs", &app.service_key)
            .json(&json!({"queue": "emails", "kind": "send.welcome"}))
            .send()
            .await
            .unwrap();
        assert_eq!(enqueued.status(), 201);
    }
    let overview = app.url("/ui");
    browser
        .until_text(&overview, "tr[data-queue=emails] .depth", "3")
        .await;
    browser.screenshot("overview.png").await;
    // Pause, then resume: the fleet's state changes and the audit log names the key.
    // (A queue has a row of state only once it was paused.)
    let paused = || async {
        sqlx::query_scalar::<_, bool>("SELECT paused FROM herald_queues WHERE name = 'emails'")
            .fetch_optional(&app.db.pool)
            .await
            .unwrap()
            .unwrap_or(false)
    };
    // (The form's submission is left to finish before the page is looked at again: a reload would cancel it.)
    browser.click("button[data-queue=emails]").await;
    wait_until(Duration::from_secs(20), "the queue paused", || async {
        paused().await
    })
    .await;
    browser
        .until_text(&overview, "tr[data-queue=emails] .state", "paused")
        .await;
    browser.click("button[data-queue=emails]").await;
    wait_until(Duration::from_secs(20), "the queue resumed", || async {
        !paused().await
    })
    .await;
    browser
        .until_text(&overview, "tr[data-queue=emails] .state", "running")
        .await;
    let audited = common::scalar_i64(
        &app.db.pool,
        "SELECT count(*) FROM herald_audit_log WHERE action IN ('queue.pause', 'queue.resume') AND actor_name = 'admin'",
    )
    .await;
    assert_eq!(audited, 2);
    browser.click("header .who button").await;
    browser.until_url("/ui/login").await;

    // A read key sees the queues and no action; a forged form (no session token) is refused.
    browser.type_into("#key", &app.read_key).await;
    browser.click("button[type=submit]").await;
    browser.until_url("/ui").await;
    browser
        .until_text(&overview, "tr[data-queue=emails] .depth", "3")
        .await;
    assert!(browser.text("header").await.contains("read only"));
    assert!(browser.find("button[data-queue=emails]").await.is_none());
    let forged = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(app.url("/ui/queues/emails/pause"))
        .header("Cookie", format!("herald_ui={}", app.admin_key))
        .form(&[("csrf", "guessed")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(!paused().await);
    // The key is not readable by a page: HttpOnly, SameSite=Strict, scoped to /ui; and /v1 ignores the cookie.
    let login = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(app.url("/ui/login"))
        .form(&[("key", app.read_key.as_str())])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/ui")
    );
    let v1 = reqwest::Client::new()
        .get(app.url("/v1/queues"))
        .header("Cookie", format!("herald_ui={}", app.read_key))
        .send()
        .await
        .unwrap();
    assert_eq!(v1.status(), 401);
    browser.stop().await;
}

/// `n` dead letters of `queue`, as a worker leaves them after the last attempt.
async fn dead_letters(pool: &sqlx::PgPool, queue: &str, n: i64) {
    sqlx::query(
        "INSERT INTO herald_dead_letters (job_id, queue, kind, payload, priority, attempt, max_attempts, timeout_ms, \
                                          errors, reason, created_at, failed_at) \
         SELECT 1000 + g, $1, 'send.welcome', jsonb_build_object('user', 'u' || g, 'note', '<b>bold</b>'), 0, 3, 3, \
                1000, '[\"timeout\", \"timeout\", \"provider answered 500\"]', 'provider answered 500', now(), now() \
         FROM generate_series(1, $2::int8) g",
    )
    .bind(queue)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn dead_letters_are_filtered_inspected_replayed_after_a_confirmation_and_deleted_in_chromium()
{
    let app = spawn_app().await;
    dead_letters(&app.db.pool, "emails", 3).await;
    dead_letters(&app.db.pool, "sms", 2).await;
    let browser = Browser::start().await;
    browser.go(&app.url("/ui/login")).await;
    browser.type_into("#key", &app.admin_key).await;
    browser.click("button[type=submit]").await;
    browser.until_url("/ui").await;
    let list = app.url("/ui/dead-letters?queue=emails");
    browser.go(&list).await;
    let rows = browser.text("#dead-letters tbody").await;
    assert_eq!(rows.matches("emails").count(), 3, "{rows}");
    assert!(!rows.contains("sms"), "{rows}");
    browser.screenshot("dead-letters.png").await;
    // Replay every match: a confirmation first, with the count; nothing happens before it.
    browser.click("#replay-all").await;
    browser
        .until_contains("#confirm-text", "Replay 3 dead letters of queue emails")
        .await;
    let replayed = "SELECT count(*) FROM herald_jobs WHERE replay_of IS NOT NULL";
    assert_eq!(common::scalar_i64(&app.db.pool, replayed).await, 0);
    browser.click("#confirm").await;
    browser
        .until_contains(".notice", "Replayed 3 dead letters.")
        .await;
    assert_eq!(common::scalar_i64(&app.db.pool, replayed).await, 3);
    // One of the other queue: inspected (the payload shown as text, escaped), replayed, then another deleted.
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM herald_dead_letters WHERE queue = 'sms' ORDER BY id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    browser
        .go(&app.url(&format!("/ui/dead-letters/{}", ids[0])))
        .await;
    assert!(browser.text("pre").await.contains("provider answered 500"));
    assert!(
        browser.text("main").await.contains("<b>bold</b>"),
        "the payload is shown as text"
    );
    browser.click("#replay").await;
    browser.until_contains("#state", "replayed as job").await;
    browser
        .go(&app.url(&format!("/ui/dead-letters/{}", ids[1])))
        .await;
    browser.click("input[name=confirm]").await;
    browser.click("#delete").await;
    browser
        .until_contains(".notice", &format!("Deleted dead letter {}", ids[1]))
        .await;
    let left = "SELECT count(*) FROM herald_dead_letters";
    assert_eq!(common::scalar_i64(&app.db.pool, left).await, 4);
    let audited = common::scalar_i64(
        &app.db.pool,
        "SELECT count(*) FROM herald_audit_log WHERE action IN ('dead_letter.replay', 'dead_letter.delete')",
    )
    .await;
    assert_eq!(audited, 3);
    // Delete every letter of a queue: the confirmation counts them; a letter failing after it is left alone.
    browser.go(&app.url("/ui/dead-letters?queue=emails")).await;
    browser.click("#purge-all").await;
    browser
        .until_contains("#confirm-text", "Delete 3 dead letters of queue emails")
        .await;
    dead_letters(&app.db.pool, "emails", 1).await;
    browser.click("#confirm").await;
    browser
        .until_contains(".notice", "Deleted 3 dead letters.")
        .await;
    let emails = "SELECT count(*) FROM herald_dead_letters WHERE queue = 'emails'";
    assert_eq!(common::scalar_i64(&app.db.pool, emails).await, 1);
    // A filter that is not a queue name is refused, never widened to every queue.
    browser
        .go(&app.url("/ui/dead-letters/purge?queue=no%20such%20queue"))
        .await;
    assert!(browser.find("#confirm").await.is_none());
    assert!(browser.text("main").await.contains("not a queue name"));
    let audited = common::scalar_i64(
        &app.db.pool,
        "SELECT count(*) FROM herald_audit_log WHERE action = 'dead_letter.delete' AND details ->> 'deleted' = '3'",
    )
    .await;
    assert_eq!(audited, 1);
    // A login form posted from another site is refused.
    let cross_site = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(app.url("/ui/login"))
        .header("Origin", "https://attacker.example")
        .form(&[("key", app.read_key.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    assert!(cross_site.headers().get("set-cookie").is_none());
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login_with = |headers: &[(&str, &str)]| {
        let mut request = plain
            .post(app.url("/ui/login"))
            .form(&[("key", app.read_key.as_str())]);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    // `Origin: null` and a browser saying another site are refused; this site's page is not, also behind a proxy
    // that rewrote `Host` (it says the public host in `X-Forwarded-Host`).
    for (headers, status) in [
        (vec![("Origin", "null")], 403),
        (vec![("Sec-Fetch-Site", "cross-site")], 403),
        (vec![("Sec-Fetch-Site", "same-origin")], 303),
        (
            vec![
                ("Origin", "https://herald.example.com"),
                ("X-Forwarded-Host", "herald.example.com"),
            ],
            303,
        ),
    ] {
        let answer = login_with(&headers).await.unwrap();
        assert_eq!(answer.status(), status, "{headers:?}");
    }
    // A query that does not parse (a filter given twice) is refused, not read as "every queue".
    let admin_cookie = format!("herald_ui={}", app.admin_key);
    let twice = plain
        .get(app.url("/ui/dead-letters/purge?queue=emails&queue=emails"))
        .header("Cookie", &admin_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 400);
    assert!(!twice.text().await.unwrap().contains("id=\"confirm\""));
    // A bulk form with a queue that is not a queue name, or without the confirmation's time, deletes nothing.
    let page = plain
        .get(app.url("/ui/dead-letters"))
        .header("Cookie", &admin_cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let before = common::scalar_i64(&app.db.pool, left).await;
    for form in [
        vec![
            ("csrf", csrf.as_str()),
            ("queue", "no such queue"),
            ("kind", ""),
            ("before", "2100-01-01T00:00:00Z"),
        ],
        vec![("csrf", csrf.as_str()), ("queue", ""), ("kind", "")],
    ] {
        let answer = plain
            .post(app.url("/ui/dead-letters/purge"))
            .header("Cookie", &admin_cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_client_error(),
            "{form:?}: {}",
            answer.status()
        );
    }
    assert_eq!(common::scalar_i64(&app.db.pool, left).await, before);
    // A read key sees the list and no action.
    browser.click("header .who button").await;
    browser.until_url("/ui/login").await;
    browser.type_into("#key", &app.read_key).await;
    browser.click("button[type=submit]").await;
    browser.until_url("/ui").await;
    browser.go(&app.url("/ui/dead-letters")).await;
    assert!(browser.text("#dead-letters tbody").await.contains("sms"));
    assert!(browser.find("#replay-all").await.is_none());
    browser
        .go(&app.url(&format!("/ui/dead-letters/{}", ids[0])))
        .await;
    assert!(browser.find("#delete").await.is_none());
    browser.stop().await;
}

/// A worker in this process serving the workflow queue and `default`, with the API's own settings (the `log`
/// sink: every send is recorded as a delivery and reported sent).
fn worker(app: &common::TestApp) -> common::RunningWorker {
    let engine = herald::app::App::on_pool(common::settings(), app.db.pool.clone())
        .expect("app")
        .engine;
    let registry = herald::app::worker_registry(herald::queue::HandlerRegistry::new(), engine);
    common::RunningWorker::start(
        &app.db.pool,
        common::options(&[("workflows", 8), ("default", 4)]),
        registry,
    )
}

/// Sends `body` to `path` with `key` and answers the JSON, asserting a success status.
async fn call(
    app: &common::TestApp,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Value,
) -> Value {
    let response = app
        .client
        .request(method, app.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[tokio::test]
async fn support_and_operators_follow_runs_recipients_jobs_and_templates_in_chromium() {
    let app = spawn_app().await;
    let worker = worker(&app);
    let admin = app.admin_key.clone();
    let service = app.service_key.clone();
    // A recipient who switched SMS off, and a workflow that emails them, then texts them on the pro plan.
    call(
        &app,
        reqwest::Method::PUT,
        "/v1/recipients/ada",
        &service,
        json!({"email": "ada@example.com"}),
    )
    .await;
    call(
        &app,
        reqwest::Method::PUT,
        "/v1/recipients/ada/preferences",
        &service,
        json!({"channels": {"sms": false}}),
    )
    .await;
    call(&app, reqwest::Method::POST, "/v1/workflows", &admin, json!({
        "name": "welcome-ui", "version": 1,
        "nodes": [
            {"id": "signup", "kind": "trigger", "fields": {"plan": {"type": "string"}}, "next": "welcome_email"},
            {"id": "welcome_email", "kind": "action", "channel": "email",
             "content": {"subject": "Welcome", "body": "Hi there"}, "next": "is_pro"},
            {"id": "is_pro", "kind": "condition", "if": "trigger.plan == 'pro'", "then": "welcome_sms", "else": "tag"},
            {"id": "welcome_sms", "kind": "action", "channel": "sms", "content": {"body": "Welcome!"}},
            {"id": "tag", "kind": "transform", "set": {"x": "1"}}
        ]
    })).await;
    let started = call(
        &app,
        reqwest::Method::POST,
        "/v1/workflows/welcome-ui/runs",
        &service,
        json!({"recipient": "ada", "data": {"plan": "pro"}}),
    )
    .await;
    let run = started["id"].as_i64().unwrap();
    wait_until(Duration::from_secs(30), "the run completed", || async {
        common::scalar_i64(
            &app.db.pool,
            &format!("SELECT count(*) FROM herald_runs WHERE id = {run} AND status = 'completed'"),
        )
        .await
            == 1
    })
    .await;
    // A run that waits an hour, to be cancelled from its page.
    call(
        &app,
        reqwest::Method::POST,
        "/v1/workflows",
        &admin,
        json!({
            "name": "later-ui", "version": 1,
            "nodes": [
                {"id": "start", "kind": "trigger", "next": "wait"},
                {"id": "wait", "kind": "delay", "duration": "1h", "next": "remind"},
                {"id": "remind", "kind": "action", "channel": "email", "to": "ada@example.com",
                 "content": {"subject": "Reminder", "body": "Still there?"}}
            ]
        }),
    )
    .await;
    let waiting = call(
        &app,
        reqwest::Method::POST,
        "/v1/workflows/later-ui/runs",
        &service,
        json!({"data": {}}),
    )
    .await;
    let waiting = waiting["id"].as_i64().unwrap();
    // A job for tomorrow, a dead letter the worker can run, a template with a locale, a day of rollups.
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let job = call(&app, reqwest::Method::POST, "/v1/jobs", &service,
        json!({"queue": "emails", "kind": "herald.noop", "run_at": tomorrow, "idempotency_key": "order-42"})).await;
    let job = job["id"].as_i64().unwrap();
    sqlx::query(
        "INSERT INTO herald_dead_letters (job_id, queue, kind, payload, priority, attempt, max_attempts, timeout_ms, \
                                          errors, reason, created_at, failed_at) \
         VALUES (77, 'default', 'herald.noop', '{}', 0, 3, 3, 1000, '[]', 'the provider was down', now(), now())",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    call(&app, reqwest::Method::POST, "/v1/templates", &admin, json!({
        "name": "hello", "version": 1, "description": "A greeting",
        "sample": {"trigger": {"name": "Ada <admin>"}},
        "channels": {"email": {"subject": "Hello {{ trigger.name }}", "html": "<p>Hi {{ trigger.name }}</p>"},
                     "sms": {"text": "Hi {{ trigger.name }}"}},
        "locales": {"pt-BR": {"email": {"subject": "Olá {{ trigger.name }}", "html": "<p>Oi {{ trigger.name }}</p>"}}}
    })).await;
    let today = chrono::Utc::now().date_naive();
    herald::clock::rollups::rebuild(&app.db.pool, &common::settings().clock.rollups, today)
        .await
        .unwrap();

    let browser = Browser::start().await;
    browser.login(&app, &admin).await;
    browser.screenshot("overview.png").await;

    // The run: its graph (each node's outcome), its timeline and deliveries, the skipped SMS and why.
    browser.go(&app.url(&format!("/ui/runs/{run}"))).await;
    browser.until_contains("#status", "completed").await;
    let graph = |node: &str| format!("#graph g[data-node={node}]");
    for (node, state) in [
        ("signup", "completed: accepted"),
        ("welcome_email", "completed: sent"),
        ("is_pro", "completed: then"),
        ("welcome_sms", "completed: skipped"),
    ] {
        let element = browser
            .find(&graph(node))
            .await
            .unwrap_or_else(|| panic!("no node {node}"));
        let attribute = browser
            .call(
                reqwest::Method::GET,
                &format!("/element/{element}/attribute/data-state"),
                Value::Null,
            )
            .await;
        assert_eq!(attribute.as_str(), Some(state), "{node}");
    }
    let tag = browser.find(&graph("tag")).await.unwrap();
    let attribute = browser
        .call(
            reqwest::Method::GET,
            &format!("/element/{tag}/attribute/data-state"),
            Value::Null,
        )
        .await;
    assert_eq!(attribute.as_str(), Some("not reached"));
    let deliveries = browser.text("#deliveries").await;
    assert!(
        deliveries.contains("ada@example.com") && deliveries.contains("sent"),
        "{deliveries}"
    );
    assert!(
        deliveries.contains("preference: opted out of sms"),
        "{deliveries}"
    );
    let timeline = browser.text("#timeline").await;
    // (The `log` sink records no provider call; the timeline's provider attempts are unit-tested in `ui::runs`.)
    assert!(
        timeline.contains("delivery sent") && timeline.contains("delivery skipped"),
        "{timeline}"
    );
    browser.screenshot("run.png").await;
    browser.window(390, 844).await;
    browser.screenshot("run-phone.png").await;
    browser.go(&app.url("/ui")).await;
    browser.screenshot("overview-phone.png").await;
    browser.window(1280, 900).await;

    // Support: find the person by email, then why they got no text.
    browser.go(&app.url("/ui/deliveries")).await;
    browser.type_into("#recipient", "ada@example.com").await;
    browser.click("#search").await;
    browser.until_contains("#deliveries", "skipped").await;
    browser.screenshot("deliveries.png").await;
    // A filter that cannot be used is refused, not dropped (which would list every delivery).
    browser
        .go(&app.url("/ui/deliveries?recipient=ada&since=yesterday"))
        .await;
    assert!(browser.text("main").await.contains("is not a time"));
    assert!(browser.find("#deliveries").await.is_none());
    browser.go(&app.url("/ui/deliveries?recipient=ada")).await;
    browser.click("a[href='/ui/recipients/ada']").await;
    browser.until_url("/ui/recipients/ada").await;
    let why = browser.text("#not-notified").await;
    assert!(
        why.contains("preference: opted out of sms") && why.contains("welcome_sms"),
        "{why}"
    );
    assert!(
        browser
            .text("#preferences")
            .await
            .contains("\"sms\": false")
    );
    browser.screenshot("recipient.png").await;

    // Runs list, then cancel the waiting run from its page (audited).
    browser.go(&app.url("/ui/runs?workflow=later-ui")).await;
    assert!(browser.text("#runs").await.contains("running"));
    browser.screenshot("runs.png").await;
    browser.go(&app.url(&format!("/ui/runs/{waiting}"))).await;
    browser.click("#cancel").await;
    browser.until_contains(".notice", "Cancelled.").await;
    browser.until_contains("#status", "cancelled").await;

    // The queue's scheduled jobs, searched by idempotency key; the job's page; cancel it.
    browser
        .go(&app.url("/ui/queues/emails?state=scheduled&key=order-42"))
        .await;
    assert!(browser.text("#jobs").await.contains("herald.noop"));
    browser.screenshot("queue.png").await;
    browser.click(&format!("a[href='/ui/jobs/{job}']")).await;
    browser.until_contains("#state", "scheduled").await;
    browser.click("#cancel").await;
    browser.until_contains("#state", "cancelled").await;
    browser.screenshot("job.png").await;

    // A dead letter replayed runs to completion on the worker.
    browser.go(&app.url("/ui/dead-letters?queue=default")).await;
    browser.click("#dead-letters a").await;
    browser.click("#replay").await;
    browser.until_contains("#state", "replayed as job").await;
    browser.click("#state a").await;
    browser.until_url_contains("/ui/jobs/").await;
    let job_page = browser.url().await;
    browser.until_text(&job_page, "#state", "completed").await;

    // Templates: the catalogue, a template's variants rendered with its sample (escaped), and a locale's.
    browser.go(&app.url("/ui/templates")).await;
    assert!(browser.text("#templates").await.contains("A greeting"));
    browser.go(&app.url("/ui/templates/hello")).await;
    let preview = browser.text("main").await;
    assert!(
        preview.contains("Hello Ada <admin>") || preview.contains("Hello Ada &lt;admin&gt;"),
        "{preview}"
    );
    browser.screenshot("template.png").await;
    browser
        .go(&app.url("/ui/templates/hello?locale=pt-BR"))
        .await;
    assert!(browser.text("main").await.contains("Olá Ada"));

    // Analytics (today's rollup: two emails accepted, one SMS skipped) and the audit log.
    browser.go(&app.url("/ui/analytics?days=7")).await;
    assert!(
        browser
            .text("#computed")
            .await
            .starts_with("1 of 7 days computed")
    );
    assert!(
        browser.find("#sends-by-provider svg rect").await.is_some(),
        "a bar for today's deliveries by provider"
    );
    assert!(
        browser.find("#sends svg rect").await.is_some(),
        "a bar for today's deliveries"
    );
    browser.screenshot("analytics.png").await;
    browser.go(&app.url("/ui/audit?action=run.cancel")).await;
    assert!(
        browser
            .text("#audit")
            .await
            .contains(&format!("run:{waiting}"))
    );
    browser.go(&app.url("/ui/audit")).await;
    let audit = browser.text("#audit").await;
    assert!(
        audit.contains("job.cancel") && audit.contains("dead_letter.replay"),
        "{audit}"
    );
    browser.screenshot("audit.png").await;

    // A read key sees the run and the recipient, but no action, and the audit log is not for it.
    browser.click("header .who button").await;
    browser.until_url("/ui/login").await;
    browser.login(&app, &app.read_key).await;
    browser.go(&app.url(&format!("/ui/runs/{waiting}"))).await;
    assert!(browser.text("#status").await.contains("cancelled"));
    browser.go(&app.url(&format!("/ui/runs/{run}"))).await;
    assert!(browser.find("#graph").await.is_some());
    assert!(
        browser
            .find("form button#cancel, form button#retry")
            .await
            .is_none()
    );
    browser.go(&app.url("/ui/audit")).await;
    assert!(browser.text("main").await.contains("admin scope"));
    browser.stop().await;
    worker.stop().await;
}

/// `/docs` shares its origin with `/ui`, so its policy lets only the vendored Redoc script run; under that policy
/// Redoc still renders the whole reference.
#[tokio::test]
async fn the_api_reference_renders_in_chromium_under_its_script_policy() {
    let app = spawn_app().await;
    let page = app.client.get(app.url("/docs")).send().await.unwrap();
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    let scripts = policy
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src"));
    assert_eq!(scripts, Some("script-src 'self'"), "{policy}");
    let browser = Browser::start().await;
    browser.go(&app.url("/docs")).await;
    // Redoc draws each operation's path in its right-hand panel once it has fetched and rendered /openapi.json.
    browser.until_contains("body", "/v1/jobs/batch").await;
    browser
        .until_contains("body", "/v1/runs/{id}/deliveries")
        .await;
    browser.screenshot("docs.png").await;
    browser.stop().await;
}
