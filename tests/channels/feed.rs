//! The in-app feed: an `in_app` action stores a feed item (once, whatever the sink); the feed API lists, filters,
//! pages, counts and marks; a live stream delivers new items through LISTEN/NOTIFY; recipient tokens open their own
//! recipient's feed and nothing else; CORS answers browsers on the feed routes only.

use std::time::Duration;

use crate::common;
use crate::common::{spawn_app_with, wait_until};
use serde_json::{Value, json};

const NEWS: &str = r#"{
  "name": "news", "version": 1, "category": "product",
  "nodes": [
    { "id": "start", "kind": "trigger", "fields": { "headline": { "type": "string" } }, "next": "feed" },
    { "id": "feed", "kind": "action", "channel": "in_app",
      "content": { "title": "{{ trigger.headline }}", "body": "Read more", "action_url": "https://app.example/n",
                   "icon": "star" } }
  ]
}"#;

async fn app_with_worker() -> (common::TestApp, common::RunningWorker) {
    app_with(|_| {}).await
}

async fn app_with(
    adjust: impl FnOnce(&mut herald::config::Settings),
) -> (common::TestApp, common::RunningWorker) {
    let app = spawn_app_with(|settings| {
        settings.feed.cors_origins = vec!["https://app.example".into()];
        settings.feed.max_streams_per_recipient = 2;
        adjust(settings);
    })
    .await;
    let engine = herald::app::App::on_pool(common::settings(), app.db.pool.clone())
        .unwrap()
        .engine;
    let worker = common::RunningWorker::start(
        &app.db.pool,
        common::options(&[("workflows", 4)]),
        herald::app::worker_registry(herald::queue::HandlerRegistry::new(), engine),
    );
    let stored = app
        .post("/v1/workflows", &app.admin_key)
        .json(&serde_json::from_str::<Value>(NEWS).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    for id in ["ada", "bob"] {
        let put = app
            .put(&format!("/v1/recipients/{id}"), &app.admin_key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success());
    }
    (app, worker)
}

async fn notify(app: &common::TestApp, recipient: &str, headline: &str) {
    let started = app
        .post("/v1/workflows/news/runs", &app.service_key)
        .json(&json!({"recipient": recipient, "data": {"headline": headline}}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
}

async fn token(app: &common::TestApp, recipient: &str, ttl: u64) -> String {
    let minted: Value = app
        .post(
            &format!("/v1/recipients/{recipient}/feed/token"),
            &app.service_key,
        )
        .json(&json!({"ttl_secs": ttl}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    minted["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn in_app_sends_become_a_feed_that_lists_counts_and_marks() {
    let (app, worker) = app_with_worker().await;
    for i in 0..3 {
        notify(&app, "ada", &format!("news {i}")).await;
    }
    notify(&app, "bob", "for bob").await;
    let ada_feed = || app.get_json("/v1/recipients/ada/feed", &app.read_key);
    wait_until(Duration::from_secs(20), "ada's three items", || async {
        ada_feed().await["items"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    let page = ada_feed().await;
    // Newest first (by when each send stored it: concurrent workers may store them in any order).
    let mut titles: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    let ids_desc: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    assert!(ids_desc.windows(2).all(|w| w[0] > w[1]), "{ids_desc:?}");
    titles.sort_unstable();
    assert_eq!(titles, ["news 0", "news 1", "news 2"]);
    let newest = &page["items"][0];
    assert_eq!(newest["body"], "Read more");
    assert_eq!(newest["action_url"], "https://app.example/n");
    assert_eq!(newest["workflow"], "news");
    assert_eq!(newest["category"], "product");
    assert_eq!(newest["data"], json!({"icon": "star"}));
    assert_eq!(page["counts"], json!({"unseen": 3, "unread": 3}));
    // Pages of two, newest first, by cursor.
    let first = app
        .get_json("/v1/recipients/ada/feed?limit=2", &app.read_key)
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app
        .get_json(
            &format!("/v1/recipients/ada/feed?limit=2&cursor={cursor}"),
            &app.read_key,
        )
        .await;
    assert_eq!(second["items"][0]["id"], page["items"][2]["id"]);
    assert!(second["next_cursor"].is_null());
    // Mark: all seen; one read; one archived (out of the listing and the counts).
    let ids: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    let mark = |body: Value| {
        app.post("/v1/recipients/ada/feed/mark", &app.service_key)
            .json(&body)
            .send()
    };
    let marked: Value = mark(json!({"all": true, "as": "seen"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(marked["changed"], 3);
    mark(json!({"ids": [ids[0]], "as": "read"})).await.unwrap();
    mark(json!({"ids": [ids[1]], "as": "archived"}))
        .await
        .unwrap();
    let counts = app
        .get_json("/v1/recipients/ada/feed/counts", &app.read_key)
        .await;
    assert_eq!(counts, json!({"unseen": 0, "unread": 1}));
    let unread = app
        .get_json("/v1/recipients/ada/feed?state=unread", &app.read_key)
        .await;
    assert_eq!(unread["items"].as_array().unwrap().len(), 1);
    let archived = app
        .get_json("/v1/recipients/ada/feed?state=archived", &app.read_key)
        .await;
    assert_eq!(archived["items"][0]["id"], ids[1]);
    // Bad requests: named, never a 500.
    assert_eq!(mark(json!({"as": "read"})).await.unwrap().status(), 422);
    assert_eq!(
        mark(json!({"all": true, "as": "gone"}))
            .await
            .unwrap()
            .status(),
        422
    );
    let bad = app
        .get("/v1/recipients/ada/feed?state=odd", &app.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let bad = app
        .get("/v1/recipients/ada/feed?cursor=x", &app.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    // A read key cannot mark.
    let refused = app
        .post("/v1/recipients/ada/feed/mark", &app.read_key)
        .json(&json!({"all": true, "as": "read"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    // The same send retried after a crash (same idempotency key) stores no second item.
    let items = common::scalar_i64(&app.db.pool, "SELECT count(*) FROM herald_feed_items").await;
    assert_eq!(items, 4);
    worker.stop().await;
}

#[tokio::test]
async fn a_recipient_token_opens_its_own_feed_only_and_not_once_expired_or_forged() {
    let (app, worker) = app_with_worker().await;
    notify(&app, "ada", "hello").await;
    let ada = token(&app, "ada", 600).await;
    let client = reqwest::Client::new();
    let with_token = |path: &str, token: &str| {
        client
            .get(app.url(path))
            .header("Authorization", format!("Bearer {token}"))
            .send()
    };
    wait_until(Duration::from_secs(20), "ada's item", || async {
        let page: Value = with_token("/v1/recipients/ada/feed", &ada)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["items"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    // Ada's token on Bob's feed: refused. On any other route: not an API key.
    assert_eq!(
        with_token("/v1/recipients/bob/feed", &ada)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        with_token("/v1/recipients/bob/feed/stream", &ada)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(with_token("/v1/jobs/1", &ada).await.unwrap().status(), 401);
    // As a query parameter (EventSource cannot set headers).
    let counts = client
        .get(app.url(&format!("/v1/recipients/ada/feed/counts?token={ada}")))
        .send()
        .await
        .unwrap();
    assert_eq!(counts.status(), 200);
    // The token may mark its own feed.
    let marked = client
        .post(app.url("/v1/recipients/ada/feed/mark"))
        .header("Authorization", format!("Bearer {ada}"))
        .json(&json!({"all": true, "as": "read"}))
        .send()
        .await
        .unwrap();
    assert_eq!(marked.status(), 200);
    // Forged: Bob's payload under Ada's signature; garbage; an expired token.
    let bob = token(&app, "bob", 600).await;
    let forged = format!(
        "{}.{}",
        bob.split_once('.').unwrap().0,
        ada.split_once('.').unwrap().1
    );
    assert_eq!(
        with_token("/v1/recipients/bob/feed", &forged)
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        with_token("/v1/recipients/ada/feed", "feed_x.y")
            .await
            .unwrap()
            .status(),
        401
    );
    let signer = herald::feed::tokens::TokenSigner::load(&app.db.pool)
        .await
        .unwrap();
    let expired = signer.mint("ada", chrono::Utc::now() - chrono::Duration::seconds(1));
    let refused = with_token("/v1/recipients/ada/feed", &expired)
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("expired"));
    // Minting needs a service key, and a lifetime within the limit.
    let no_key = client
        .post(app.url("/v1/recipients/ada/feed/token"))
        .header("Authorization", format!("Bearer {ada}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let too_long = app
        .post("/v1/recipients/ada/feed/token", &app.service_key)
        .json(&json!({"ttl_secs": 999_999}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status(), 422);
    // CORS: the feed routes answer a browser's preflight from the configured origin; other routes do not.
    let preflight = |path: &str| {
        client
            .request(reqwest::Method::OPTIONS, app.url(path))
            .header("Origin", "https://app.example")
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
    };
    let feed = preflight("/v1/recipients/ada/feed").await.unwrap();
    assert_eq!(
        feed.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://app.example")
    );
    let jobs = preflight("/v1/jobs").await.unwrap();
    assert!(jobs.headers().get("access-control-allow-origin").is_none());
    worker.stop().await;
}

#[tokio::test]
async fn a_live_stream_receives_new_items_and_counts_through_listen_notify() {
    // Connections idle for a second are closed; a live stream's is not (its client has nothing to send).
    let (app, worker) = app_with(|settings| {
        settings.api.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let ada = token(&app, "ada", 600).await;
    let mut stream = reqwest::Client::new()
        .get(app.url(&format!("/v1/recipients/ada/feed/stream?token={ada}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("text/event-stream")
    );
    let mut received = String::new();
    let mut read_until = async |needle: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !received.contains(needle) {
            let chunk = tokio::time::timeout_at(deadline, stream.chunk())
                .await
                .unwrap_or_else(|_| panic!("no `{needle}` in: {received}"))
                .unwrap()
                .expect("the stream stays open");
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    // First the counts, then each new item (written by the worker, woken by its NOTIFY), then the counts again.
    read_until("event: counts").await;
    // Past the idle timeout (this is the scenario: a listener with nothing to say), the stream is still open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    notify(&app, "ada", "live one").await;
    notify(&app, "bob", "not for ada").await;
    read_until("live one").await;
    read_until("\"unseen\":1").await;
    assert!(received.contains("event: item"), "{received}");
    assert!(!received.contains("not for ada"), "{received}");
    // A recipient may have two streams open here (this test's setting): a third is refused, 429.
    let open = |_: ()| {
        reqwest::Client::new()
            .get(app.url(&format!("/v1/recipients/ada/feed/stream?token={ada}")))
            .send()
    };
    let second = open(()).await.unwrap();
    assert_eq!(second.status(), 200);
    let third = open(()).await.unwrap();
    assert_eq!(third.status(), 429);
    drop(second);
    drop(stream);
    // Closed streams free their places (the server sees the client leave when it next writes or reads).
    wait_until(
        Duration::from_secs(20),
        "a place for a new stream",
        || async { open(()).await.unwrap().status() == 200 },
    )
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn in_app_actions_address_recipients_and_links_must_be_http() {
    let (app, worker) = app_with_worker().await;
    // A raw address cannot be a feed.
    let raw = json!({"name": "raw", "version": 1, "nodes": [
        {"id": "start", "kind": "trigger", "next": "feed"},
        {"id": "feed", "kind": "action", "channel": "in_app", "to": "ada", "content": {"title": "x"}}]});
    let refused = app
        .post("/v1/workflows", &app.admin_key)
        .json(&raw)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.unwrap().contains("recipient"));
    // A `javascript:` link is refused at the send (the node fails; nothing is stored).
    let script = json!({"name": "script", "version": 1, "nodes": [
        {"id": "start", "kind": "trigger", "next": "feed"},
        {"id": "feed", "kind": "action", "channel": "in_app",
         "content": {"title": "x", "action_url": "javascript:alert(1)"}}]});
    let stored = app
        .post("/v1/workflows", &app.admin_key)
        .json(&script)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let run: Value = app
        .post("/v1/workflows/script/runs", &app.service_key)
        .json(&json!({"recipient": "ada", "data": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = run["id"].as_i64().unwrap();
    wait_until(Duration::from_secs(20), "the run failed", || async {
        app.get_json(&format!("/v1/runs/{run_id}"), &app.read_key)
            .await["status"]
            == "failed"
    })
    .await;
    let items = common::scalar_i64(&app.db.pool, "SELECT count(*) FROM herald_feed_items").await;
    assert_eq!(items, 0);
    // Minting a token needs read and enqueue: an enqueue-only key could otherwise read any feed through one.
    let (enqueue_only, _) = herald::api::keys::create(
        &app.db.pool,
        &herald::audit::Actor::cli(),
        "enqueue-only",
        &[herald::api::keys::Scope::Enqueue],
    )
    .await
    .unwrap();
    let minted = app
        .post("/v1/recipients/ada/feed/token", &enqueue_only)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(minted.status(), 403);
    worker.stop().await;
}
