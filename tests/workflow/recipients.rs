//! Recipients: profiles over HTTP, sends resolved from profiles at send time, preferences and skipped deliveries,
//! quiet hours, unsubscribe links, topic fan-out (with a worker killed mid-way) and erase.

use crate::common;

use std::time::Duration;

use crate::common::flows::{Flow, step};
use crate::common::{scalar_i64, spawn_app, spawn_herald_with, wait_until};
use herald::audit::Actor;
use herald::recipients::{Preferences, Profile, store};
use serde_json::{Value, json};

/// A marketing workflow: an email to the recipient named in the data, and a push to the run's recipient.
const PROMO: &str = r#"
name: promo
version: 1
category: marketing
nodes:
  - id: start
    kind: trigger
    fields:
      user: { type: string, required: false }
    next: mail
  - id: mail
    kind: action
    channel: email
    to: { recipient: "{{ trigger.user }}" }
    content:
      subject: "Hi {{ recipient.data.name }}"
      body: "Unsubscribe: {{ unsubscribe_url }}"
    next: ping
  - id: ping
    kind: action
    channel: push
    content:
      title: "Sale"
      body: "for {{ recipient.id }}"
"#;

/// A security alert: critical, with quiet hours (which it bypasses) on one action and not on the other.
const ALERT: &str = r#"
name: alert
version: 1
category: security
critical: true
nodes:
  - id: start
    kind: trigger
    next: mail
  - id: mail
    kind: action
    channel: email
    window: { start: "08:00", end: "09:00" }
    content:
      text: "New sign-in"
"#;

/// A digest sent only between 09:00 and 17:00 in the recipient's zone.
const DAYTIME: &str = r#"
name: daytime
version: 1
category: product
nodes:
  - id: start
    kind: trigger
    next: sms
  - id: sms
    kind: action
    channel: sms
    window: { start: "09:00", end: "17:00" }
    content:
      text: "Your daily summary"
"#;

async fn put(flow: &Flow, id: &str, doc: Value) {
    let profile = Profile::parse(&doc, false).expect("valid profile");
    store::put(&flow.db.pool, &Actor::cli(), id, &profile)
        .await
        .unwrap();
}

async fn start_for(flow: &Flow, workflow: &str, data: Value, recipient: &str) -> i64 {
    match flow
        .engine
        .start_run_for(workflow, data, None, None, Some(recipient.into()))
        .await
        .unwrap()
    {
        herald::workflow::Started::Created { id, .. } => id,
        other => panic!("{other:?}"),
    }
}

/// The deliveries of a run: (node, recipient, status, error).
async fn deliveries(flow: &Flow, run: i64) -> Vec<(String, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT node_id, recipient, status, error FROM herald_deliveries WHERE run_id = $1 \
         ORDER BY node_id, recipient",
    )
    .bind(run)
    .fetch_all(&flow.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn sends_read_the_profile_at_send_time_and_skips_are_recorded_with_their_reason() {
    let flow = Flow::without_worker(&[PROMO, ALERT]).await;
    let apns = "AB".repeat(32);
    put(&flow, "ada", json!({
        "email": "ada@example.com", "data": {"name": "Ada"},
        "devices": [{"provider": "fcm", "token": "fcm-ada-1"}, {"provider": "fcm", "token": "fcm-ada-2"},
                    {"provider": "apns", "token": apns, "label": "iPhone"}]
    }))
    .await;
    put(
        &flow,
        "bob",
        json!({"email": "bob@example.com", "data": {"name": "Bob"}}),
    )
    .await;
    let ada = start_for(&flow, "promo", json!({"user": "ada"}), "ada").await;
    let bob = start_for(&flow, "promo", json!({"user": "bob"}), "bob").await;
    let nobody = start_for(&flow, "promo", json!({"user": "carol"}), "carol").await;
    // Bob opts out of marketing email after his run started and before it sends: the send sees it.
    let prefs: Preferences =
        serde_json::from_value(json!({"categories": {"marketing": {"email": false}}})).unwrap();
    store::set_preferences(&flow.db.pool, &Actor::cli(), "bob", &prefs)
        .await
        .unwrap();
    // And would opt out of everything: a critical workflow still reaches him, at once despite its window.
    let all_off: Preferences = serde_json::from_value(
        json!({"channels": {"email": false}, "categories": {"marketing": {"email": false}}}),
    )
    .unwrap();
    store::set_preferences(&flow.db.pool, &Actor::cli(), "bob", &all_off)
        .await
        .unwrap();
    let alert = start_for(&flow, "alert", json!({}), "bob").await;
    let flow = flow.with_worker();
    for run in [ada, bob, nobody, alert] {
        flow.finished(run, "completed").await;
    }

    // Ada: her email, every device (one delivery each, through its own provider), templates see her profile.
    let mail = flow.recorder.to("ada@example.com");
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].content["subject"], "Hi Ada");
    assert!(
        mail[0].content["body"].contains("/v1/unsubscribe/"),
        "{:?}",
        mail[0].content
    );
    for (token, provider) in [
        ("fcm-ada-1", "fcm"),
        ("fcm-ada-2", "fcm"),
        (&*apns.to_lowercase(), "apns"),
    ] {
        let sent = flow.recorder.to(token);
        assert_eq!(sent.len(), 1, "{token}");
        assert_eq!(sent[0].providers, [provider]);
        assert_eq!(sent[0].content["body"], "for ada");
    }
    let run = flow.run(ada).await;
    assert_eq!(step(&run, "ping").outcome.as_deref(), Some("sent"));
    let recorded = deliveries(&flow, ada).await;
    assert_eq!(recorded.len(), 4);
    assert!(recorded.iter().all(|d| d.2 == "sent"), "{recorded:?}");

    // Bob: the email skipped for his preference, the push skipped for want of a device; the run went on.
    assert!(
        flow.recorder.to("bob@example.com").len() == 1,
        "only the critical alert reached Bob"
    );
    let bob_deliveries = deliveries(&flow, bob).await;
    assert_eq!(bob_deliveries.len(), 2, "{bob_deliveries:?}");
    assert_eq!(bob_deliveries[0].1, "recipient:bob");
    assert_eq!(bob_deliveries[0].2, "skipped");
    assert!(
        bob_deliveries[0]
            .3
            .as_deref()
            .unwrap()
            .starts_with("preference:"),
        "{bob_deliveries:?}"
    );
    assert!(
        bob_deliveries[1]
            .3
            .as_deref()
            .unwrap()
            .starts_with("no_address:"),
        "{bob_deliveries:?}"
    );
    assert_eq!(
        step(&flow.run(bob).await, "mail").outcome.as_deref(),
        Some("skipped")
    );

    // Carol has no profile: both sends skipped, no_address.
    let carol = deliveries(&flow, nobody).await;
    assert_eq!(carol.len(), 2);
    assert!(
        carol
            .iter()
            .all(|d| d.2 == "skipped" && d.3.as_deref().unwrap().starts_with("no_address"))
    );

    // The critical alert went out at once, outside its window, despite Bob's opt-outs.
    assert_eq!(deliveries(&flow, alert).await[0].2, "sent");
    flow.stop().await;
}

#[test]
fn critical_is_refused_in_the_marketing_category() {
    for definition in [
        PROMO.replace("version: 1\n", "version: 1\ncritical: true\n"),
        PROMO.replace(
            "    channel: push\n",
            "    channel: push\n    critical: true\n",
        ),
    ] {
        let value = herald::workflow::definition::parse_text("t.yaml", &definition).unwrap();
        let errors = herald::workflow::definition::compile("t.yaml", &value).unwrap_err();
        assert!(
            errors.iter().any(|e| e
                .message
                .contains("`critical` is refused in the `marketing`")),
            "{errors:?}"
        );
    }
}

#[tokio::test]
async fn quiet_hours_park_the_send_until_the_window_opens_in_the_recipients_zone() {
    let flow = Flow::start(&[DAYTIME]).await;
    // A zone where it is outside 09:00-17:00 now, whatever time the test runs: 12 hours from one inside it.
    let now = chrono::Utc::now();
    let zone = [
        "Pacific/Kiritimati",
        "Asia/Tokyo",
        "Europe/Paris",
        "America/New_York",
        "Pacific/Honolulu",
    ]
    .into_iter()
    .find(|zone| {
        let tz: chrono_tz::Tz = zone.parse().unwrap();
        let hour = chrono::Timelike::hour(&now.with_timezone(&tz));
        !(8..18).contains(&hour)
    })
    .expect("one of five zones spread over the day is at night");
    put(
        &flow,
        "night",
        json!({"phone": "+14155550123", "timezone": zone}),
    )
    .await;
    let run = start_for(&flow, "daytime", json!({}), "night").await;
    flow.step_reaches(run, "sms", "waiting").await;
    assert!(
        flow.recorder.to("+14155550123").is_empty(),
        "nothing sent at night"
    );
    // The send waits as a scheduled job, due at the window's next opening in the recipient's zone.
    let due: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT run_at FROM herald_jobs WHERE kind = 'herald.workflow.node' AND payload->>'phase' = 'resume'",
    )
    .fetch_one(&flow.db.pool)
    .await
    .unwrap();
    let window = herald::recipients::quiet_hours::Window::parse("09:00", "17:00").unwrap();
    let expected = window.next_opening(now, zone.parse().unwrap()).unwrap();
    assert!(
        (due - expected).num_seconds().abs() <= 5,
        "due {due}, expected {expected} ({zone})"
    );
    let local = due.with_timezone(&zone.parse::<chrono_tz::Tz>().unwrap());
    assert_eq!(local.format("%H:%M").to_string(), "09:00");
    // The resume runs while it is still night there (a queue held it, or a clock is off): the send parks again,
    // with a new timer at the same opening, and nothing goes out.
    let resume = "SELECT id FROM herald_jobs WHERE payload->>'phase' = 'resume'";
    let first_timer = scalar_i64(&flow.db.pool, resume).await;
    sqlx::query("UPDATE herald_jobs SET run_at = now() WHERE payload->>'phase' = 'resume'")
        .execute(&flow.db.pool)
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "a new timer", || async {
        let timers: Vec<i64> = sqlx::query_scalar(resume)
            .fetch_all(&flow.db.pool)
            .await
            .unwrap();
        timers.len() == 1 && timers[0] != first_timer
    })
    .await;
    let again: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT run_at FROM herald_jobs WHERE payload->>'phase' = 'resume'")
            .fetch_one(&flow.db.pool)
            .await
            .unwrap();
    assert!(
        (again - expected).num_seconds().abs() <= 5,
        "again {again}, expected {expected}"
    );
    assert_eq!(step(&flow.run(run).await, "sms").status.as_str(), "waiting");
    assert!(flow.recorder.to("+14155550123").is_empty());
    // The window opens (the recipient now lives where it is day, and the timer comes due): one message.
    let day = [
        "Asia/Kolkata",
        "Asia/Tokyo",
        "Europe/Paris",
        "America/New_York",
        "Pacific/Honolulu",
    ]
    .into_iter()
    .find(|zone| {
        let tz: chrono_tz::Tz = zone.parse().unwrap();
        (10..16).contains(&chrono::Timelike::hour(
            &chrono::Utc::now().with_timezone(&tz),
        ))
    })
    .expect("one of five zones spread over the day is in its working hours");
    put(
        &flow,
        "night",
        json!({"phone": "+14155550123", "timezone": day}),
    )
    .await;
    sqlx::query("UPDATE herald_jobs SET run_at = now() WHERE payload->>'phase' = 'resume'")
        .execute(&flow.db.pool)
        .await
        .unwrap();
    flow.finished(run, "completed").await;
    assert_eq!(flow.recorder.to("+14155550123").len(), 1);
    flow.stop().await;
}

/// The workflow the HTTP tests trigger: one email to the run's recipient.
const NEWS: &str = r#"{
  "name": "news", "version": 1, "category": "marketing",
  "nodes": [
    { "id": "start", "kind": "trigger", "next": "mail" },
    { "id": "mail", "kind": "action", "channel": "email", "content": { "text": "{{ unsubscribe_url }}" } }
  ]
}"#;

#[tokio::test]
async fn profiles_preferences_topics_and_unsubscribe_over_http() {
    let app = spawn_app().await;
    let key = &app.service_key;
    let put = |id: &str, body: Value| {
        app.client
            .put(app.url(&format!("/v1/recipients/{id}")))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let created = put("ada", json!({"email": "Ada@Example.com", "timezone": "Europe/London",
        "devices": [{"provider": "fcm", "token": "tok-1", "label": "Pixel"}], "data": {"plan": "pro"}}))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let replaced = put(
        "ada",
        json!({"email": "Ada@Example.com", "locale": "en-GB"}),
    )
    .await
    .unwrap();
    assert_eq!(replaced.status(), 200);
    let body: Value = replaced.json().await.unwrap();
    assert_eq!(
        body["timezone"],
        Value::Null,
        "a PUT replaces the whole profile"
    );
    assert_eq!(body["devices"], json!([]));

    // Every bad field named at once.
    let bad = put(
        "bob",
        json!({"email": "nope", "phone": "12", "timezone": "Mars/Base",
        "devices": [{"provider": "apns", "token": "xyz"}], "nickname": "b"}),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), 422);
    let problem: Value = bad.json().await.unwrap();
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for field in ["email", "phone", "timezone", "devices[0].token", "nickname"] {
        assert!(fields.contains(&field), "{field} in {problem}");
    }

    // PATCH merges; null clears.
    let patched: Value = app
        .client
        .patch(app.url("/v1/recipients/ada"))
        .bearer_auth(key)
        .json(&json!({"locale": null, "phone": "+447700900123", "data": {"team": "core"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["locale"], Value::Null);
    assert_eq!(patched["phone"], "+447700900123");
    assert_eq!(patched["data"], json!({"team": "core"}));
    let missing = app
        .client
        .patch(app.url("/v1/recipients/zed"))
        .bearer_auth(key)
        .json(&json!({"phone": "+447700900123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // Removing a field a profile cannot have is refused, not ignored (schemathesis found `{"": null}` taken).
    for field in ["", "nickname"] {
        let unknown = app
            .client
            .patch(app.url("/v1/recipients/ada"))
            .bearer_auth(key)
            .json(&json!({ field: null }))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 422, "{field:?}");
    }

    // Batch: per-item results; the invalid item is not written.
    let batch: Value = app.post("/v1/recipients/batch", key)
        .json(&json!({"recipients": [{"id": "bob", "email": "bob@example.com"}, {"id": "cy", "email": "x"},
                                     {"email": "no-id@example.com"}, {"id": "ada", "email": "ada@example.com"}]}))
        .send().await.unwrap().json().await.unwrap();
    let statuses: Vec<&str> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["created", "invalid", "invalid", "updated"],
        "{batch}"
    );
    assert_eq!(
        app.get("/v1/recipients/cy", key)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Search by email, any case.
    let found = app
        .get_json("/v1/recipients?email=BOB@example.com", key)
        .await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
    assert_eq!(found["items"][0]["id"], "bob");

    // Preferences.
    let prefs = app
        .client
        .put(app.url("/v1/recipients/bob/preferences"))
        .bearer_auth(key)
        .json(&json!({"channels": {"pigeon": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(prefs.status(), 422);
    let prefs = app
        .client
        .put(app.url("/v1/recipients/bob/preferences"))
        .bearer_auth(key)
        .json(&json!({"workflows": {"news": {"all": false}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(prefs.status(), 200);
    assert_eq!(
        app.get_json("/v1/recipients/bob/preferences", key).await["workflows"]["news"]["all"],
        false
    );

    // Topics: unknown ids are named and nothing is added; members listed in pages.
    let unknown = app
        .client
        .put(app.url("/v1/topics/news/recipients"))
        .bearer_auth(key)
        .json(&json!({"recipients": ["ada", "ghost"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 422);
    assert!(unknown.text().await.unwrap().contains("ghost"));
    let added: Value = app
        .client
        .put(app.url("/v1/topics/news/recipients"))
        .bearer_auth(key)
        .json(&json!({"recipients": ["ada", "bob", "ada"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(added["changed"], 2);
    let first = app
        .get_json("/v1/topics/news/recipients?limit=1", key)
        .await;
    assert_eq!(first["items"], json!(["ada"]));
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app
        .get_json(
            &format!("/v1/topics/news/recipients?limit=1&cursor={cursor}"),
            key,
        )
        .await;
    assert_eq!(second["items"], json!(["bob"]));
    assert!(second.get("next_cursor").is_none());

    // Unsubscribe: a real link from a send, then a forged and an expired one.
    let stored = app
        .post("/v1/workflows", &app.admin_key)
        .json(&serde_json::from_str::<Value>(NEWS).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let engine = herald::app::App::on_pool(common::settings(), app.db.pool.clone())
        .unwrap()
        .engine;
    let signer = engine.unsubscribe_signer().await.unwrap();
    let token = signer.token(
        "ada",
        "news",
        Some("marketing"),
        herald::channels::ChannelKind::Email,
        chrono::Utc::now(),
    );
    let link = signer.url(&token);
    assert!(link.ends_with(&format!("/v1/unsubscribe/{token}")));
    // The payload changed (the signature no longer matches it).
    let first = token.chars().next().unwrap();
    let forged = format!("{}{}", if first == 'e' { 'f' } else { 'e' }, &token[1..]);
    let answer = app
        .client
        .post(app.url(&format!("/v1/unsubscribe/{forged}")))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    let old = signer.token(
        "ada",
        "news",
        Some("marketing"),
        herald::channels::ChannelKind::Email,
        chrono::Utc::now() - chrono::Duration::days(61),
    );
    let answer = app
        .client
        .post(app.url(&format!("/v1/unsubscribe/{old}")))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 410);
    assert_eq!(
        app.get_json("/v1/recipients/ada/preferences", key).await["categories"],
        json!({})
    );
    // Opening the link in a browser shows a button and changes nothing.
    let page = app
        .client
        .get(app.url(&format!("/v1/unsubscribe/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.text()
            .await
            .unwrap()
            .contains(&format!("action=\"/v1/unsubscribe/{token}\""))
    );
    assert_eq!(
        app.get_json("/v1/recipients/ada/preferences", key).await["categories"],
        json!({})
    );
    let answer = app
        .client
        .post(app.url(&format!("/v1/unsubscribe/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "no API key needed");
    // A second click (a retrying mail client) changes and records nothing more.
    let again = app
        .client
        .post(app.url(&format!("/v1/unsubscribe/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let prefs = app.get_json("/v1/recipients/ada/preferences", key).await;
    assert_eq!(prefs["categories"]["marketing"]["email"], false);
    let audited = scalar_i64(&app.db.pool,
        "SELECT count(*) FROM herald_audit_log WHERE action = 'recipient.unsubscribe' AND target = 'ada'").await;
    assert_eq!(audited, 1);

    // Erase needs admin.
    assert_eq!(
        app.delete("/v1/recipients/ada", key)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let erased = app
        .delete("/v1/recipients/ada", &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 202);
    assert_eq!(
        app.get("/v1/recipients/ada", key)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.delete("/v1/recipients/ada", &app.admin_key)
            .send()
            .await
            .unwrap()
            .status(),
        202,
        "erasing again, or an id that never had a profile, is accepted: runs may have been started for it"
    );
}

#[tokio::test]
async fn erase_scrubs_runs_steps_deliveries_and_events_and_keeps_the_counts() {
    let flow = Flow::start(&[PROMO]).await;
    put(
        &flow,
        "eve",
        json!({"email": "eve@example.com", "data": {"name": "Eve"},
        "devices": [{"provider": "fcm", "token": "fcm-eve"}]}),
    )
    .await;
    put(
        &flow,
        "ann",
        json!({"email": "ann@example.com", "data": {"name": "Ann"}}),
    )
    .await;
    let runs = [
        start_for(&flow, "promo", json!({"user": "eve"}), "eve").await,
        start_for(&flow, "promo", json!({"user": "eve"}), "eve").await,
        start_for(&flow, "promo", json!({"user": "ann"}), "ann").await,
        // Ann's run, whose email addresses Eve: that node's record of Eve's address goes too.
        start_for(&flow, "promo", json!({"user": "eve"}), "ann").await,
    ];
    for run in runs {
        flow.finished(run, "completed").await;
    }
    flow.event("clicked", "eve", "ev-1").await;
    let pool = &flow.db.pool;
    let deliveries_before = scalar_i64(pool, "SELECT count(*) FROM herald_deliveries").await;

    let erasure = flow
        .engine
        .erase_recipient(&Actor::cli(), "eve")
        .await
        .unwrap();
    // The first pass leaves the last one scheduled for after the longest a send can take: bring it forward.
    wait_until(Duration::from_secs(20), "the first pass ran", || async {
        scalar_i64(
            pool,
            "SELECT count(*) FROM herald_jobs WHERE kind = 'herald.recipients.erase' \
                          AND payload->>'last' = 'true'",
        )
        .await
            == 1
    })
    .await;
    sqlx::query("UPDATE herald_jobs SET run_at = now() WHERE kind = 'herald.recipients.erase'")
        .execute(pool)
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "the erasure completed", || async {
        scalar_i64(
            pool,
            &format!(
                "SELECT count(*) FROM herald_erasures WHERE id = {erasure} AND status = 'completed'"
            ),
        )
        .await
            == 1
    })
    .await;
    // Nothing of Eve's is left anywhere; Ann's history is untouched; the counts are the same.
    for table in [
        "herald_runs",
        "herald_run_steps",
        "herald_deliveries",
        "herald_events",
        "herald_erasures",
    ] {
        let left: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT t::text FROM {table} t WHERE t::text ILIKE '%eve@example.com%' OR t::text ILIKE '%fcm-eve%' \
             OR t::text LIKE '%\"Eve\"%'"))
        .fetch_all(pool)
        .await
        .unwrap();
        assert!(left.is_empty(), "{table} still holds Eve's data: {left:?}");
    }
    assert_eq!(
        scalar_i64(pool, "SELECT count(*) FROM herald_deliveries").await,
        deliveries_before
    );
    assert_eq!(
        scalar_i64(
            pool,
            "SELECT count(*) FROM herald_runs WHERE context = '{\"erased\": true}'"
        )
        .await,
        2
    );
    assert_eq!(
        scalar_i64(
            pool,
            "SELECT count(*) FROM herald_deliveries WHERE recipient = 'ann@example.com'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar_i64(
            pool,
            "SELECT count(*) FROM herald_recipients WHERE id = 'eve'"
        )
        .await,
        0
    );
    assert_eq!(
        scalar_i64(
            pool,
            "SELECT count(*) FROM herald_events WHERE key = 'eve' AND payload = '{}'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar_i64(
            pool,
            "SELECT count(*) FROM herald_audit_log WHERE action = 'recipient.erase'"
        )
        .await,
        1
    );
    flow.stop().await;
}

/// A workflow whose run does nothing but record that it started (the fan-out test counts runs, not sends).
const RELEASE: &str = r#"
name: release
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      version: { type: string }
"#;

#[tokio::test]
async fn a_topic_fan_out_killed_mid_way_resumes_with_exactly_one_run_per_member() {
    const MEMBERS: i64 = 20_000;
    let flow = Flow::without_worker(&[RELEASE]).await;
    let pool = &flow.db.pool;
    sqlx::query("INSERT INTO herald_recipients (id) SELECT 'r' || lpad(i::text, 6, '0') FROM generate_series(1, $1) i")
        .bind(MEMBERS)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO herald_topic_members (topic, recipient_id) SELECT 'all', id FROM herald_recipients")
        .execute(pool)
        .await
        .unwrap();
    let bad = flow
        .engine
        .start_fanout("release", "all", json!({}), None, None)
        .await;
    assert!(
        bad.is_err(),
        "trigger data is checked before anything is stored"
    );
    let fanout = flow
        .engine
        .start_fanout(
            "release",
            "all",
            json!({"version": "2.0"}),
            Some("v2".into()),
            None,
        )
        .await
        .unwrap()
        .id();

    let args = ["worker", "--queues", "workflows:4"];
    let mut victim = spawn_herald_with(&flow.db.url, &args, &[]);
    let runs = "SELECT count(*) FROM herald_runs WHERE workflow = 'release'";
    wait_until(
        Duration::from_secs(60),
        "the fan-out started runs",
        || async { scalar_i64(pool, runs).await > 0 },
    )
    .await;
    victim.kill().await.unwrap();
    let at_kill = scalar_i64(pool, runs).await;
    assert!(
        at_kill < MEMBERS,
        "the kill must land mid-way ({at_kill} of {MEMBERS})"
    );
    // The trigger repeated with its key (a client's retry): the same fan-out, not a second.
    let again = flow
        .engine
        .start_fanout(
            "release",
            "all",
            json!({"version": "2.0"}),
            Some("v2".into()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        herald::workflow::fanout::FanoutStarted::Existing(fanout)
    );
    let huge = json!({"version": "x".repeat(70_000)});
    let refused = flow
        .engine
        .start_fanout("release", "all", huge, None, None)
        .await;
    assert!(refused.is_err(), "a topic trigger's data is bounded");
    // The topic was cut into lanes (20,000 members, `fanout_lanes` 4) before the kill: the first job's first
    // transaction splits it.
    let lanes = format!("SELECT count(*) FROM herald_fanout_lanes WHERE fanout_id = {fanout}");
    assert_eq!(scalar_i64(pool, &lanes).await, 4);
    // Duplicates of lane jobs (a retry racing the original; a job queued before lanes existed names none, which
    // reads as lane 0) must not make a second run for anyone.
    flow.db
        .enqueue(vec![
            common::job(
                "workflows",
                "herald.workflow.fanout",
                json!({"fanout": fanout}),
            ),
            common::job(
                "workflows",
                "herald.workflow.fanout",
                json!({"fanout": fanout, "lane": 2}),
            ),
        ])
        .await;

    let flow = flow.with_worker();
    wait_until(
        Duration::from_secs(120),
        "the fan-out completed",
        || async { flow.engine.fanout(fanout).await.unwrap().status == "completed" },
    )
    .await;
    assert_eq!(scalar_i64(&flow.db.pool, runs).await, MEMBERS);
    let doubled = scalar_i64(&flow.db.pool,
        "SELECT count(*) FROM (SELECT recipient_id FROM herald_runs GROUP BY recipient_id HAVING count(*) > 1) d").await;
    assert_eq!(doubled, 0);
    assert_eq!(flow.engine.fanout(fanout).await.unwrap().runs, MEMBERS);
    // Equal lanes (5,000 members each), all done, and each lane's runs are the members of its range.
    let lanes: Vec<(i32, i64, bool)> = sqlx::query_as(
        "SELECT lane, runs, done FROM herald_fanout_lanes WHERE fanout_id = $1 ORDER BY lane",
    )
    .bind(fanout)
    .fetch_all(&flow.db.pool)
    .await
    .unwrap();
    assert_eq!(
        lanes,
        vec![
            (0, 5_000, true),
            (1, 5_000, true),
            (2, 5_000, true),
            (3, 5_000, true)
        ]
    );
    let run = flow
        .run(scalar_i64(&flow.db.pool, "SELECT min(id) FROM herald_runs").await)
        .await;
    assert_eq!(
        run.context["recipient"]["id"]
            .as_str()
            .map(|s| s.starts_with('r')),
        Some(true)
    );
    flow.stop().await;
}

/// A fan-out stored by a process older than lanes (a rolling deploy: its row has no lane, its job names none)
/// is taken up by a new worker: lane 0 is made for it, the topic is cut, and each member gets one run.
#[tokio::test]
async fn a_fan_out_stored_before_lanes_existed_completes_with_one_run_per_member() {
    const MEMBERS: i64 = 12_001;
    let flow = Flow::without_worker(&[RELEASE]).await;
    let pool = &flow.db.pool;
    sqlx::query("INSERT INTO herald_recipients (id) SELECT 'o' || lpad(i::text, 6, '0') FROM generate_series(1, $1) i")
        .bind(MEMBERS)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO herald_topic_members (topic, recipient_id) SELECT 'old', id FROM herald_recipients")
        .execute(pool)
        .await
        .unwrap();
    // What an older API process wrote: the fan-out row alone, and a job without a lane.
    let fanout: i64 = sqlx::query_scalar(
        "INSERT INTO herald_fanouts (workflow, topic, data, status) \
         VALUES ('release', 'old', '{\"version\": \"1.0\"}', 'running') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    flow.db
        .enqueue(vec![common::job(
            "workflows",
            "herald.workflow.fanout",
            json!({"fanout": fanout}),
        )])
        .await;
    let flow = flow.with_worker();
    wait_until(
        Duration::from_secs(120),
        "the fan-out completed",
        || async { flow.engine.fanout(fanout).await.unwrap().status == "completed" },
    )
    .await;
    let pool = &flow.db.pool;
    let runs = "SELECT count(DISTINCT recipient_id) FROM herald_runs WHERE workflow = 'release'";
    assert_eq!(scalar_i64(pool, runs).await, MEMBERS);
    assert_eq!(
        scalar_i64(pool, "SELECT count(*) FROM herald_runs").await,
        MEMBERS
    );
    // 12,001 members in 4 lanes of 3,001, 3,001, 3,001 and 2,998.
    let lanes: Vec<i64> = sqlx::query_scalar(
        "SELECT runs FROM herald_fanout_lanes WHERE fanout_id = $1 AND done ORDER BY lane",
    )
    .bind(fanout)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(lanes, vec![3_001, 3_001, 3_001, 2_998]);
    assert_eq!(flow.engine.fanout(fanout).await.unwrap().runs, MEMBERS);
    flow.stop().await;
}

/// The examples in jobs/ that address recipients: a topic fan-out honouring a marketing opt-out, and a critical
/// alert that bypasses it.
#[tokio::test]
async fn the_recipient_examples_in_jobs_run_as_documented() {
    let release = common::flows::example("release_notes.yaml");
    let alert = common::flows::example("security_alert.yaml");
    let flow = Flow::start(&[&release, &alert]).await;
    put(
        &flow,
        "ada",
        json!({"email": "ada@example.com", "data": {"name": "Ada"},
        "timezone": "UTC", "devices": [{"provider": "fcm", "token": "fcm-ada"}]}),
    )
    .await;
    put(&flow, "bob", json!({"email": "bob@example.com"})).await;
    let no_marketing: Preferences =
        serde_json::from_value(json!({"categories": {"marketing": {"all": false}}})).unwrap();
    store::set_preferences(&flow.db.pool, &Actor::cli(), "bob", &no_marketing)
        .await
        .unwrap();
    store::add_members(
        &flow.db.pool,
        &Actor::cli(),
        "release-notes",
        &["ada".into(), "bob".into()],
    )
    .await
    .unwrap();
    let data = json!({"version": "2.0", "url": "https://acme.test/2.0"});
    let fanout = flow
        .engine
        .start_fanout("release_notes", "release-notes", data, None, None)
        .await
        .unwrap()
        .id();
    wait_until(Duration::from_secs(20), "the fan-out completed", || async {
        flow.engine.fanout(fanout).await.unwrap().status == "completed"
    })
    .await;
    wait_until(
        Duration::from_secs(20),
        "ada's email and bob's skips",
        || async {
            // Ada's push may go out first (or wait for its window): count her email and Bob's skips only.
            scalar_i64(
                &flow.db.pool,
                "SELECT count(*) FROM herald_deliveries WHERE (recipient = 'ada@example.com' AND status = 'sent') \
                 OR (recipient = 'recipient:bob' AND status = 'skipped')",
            )
            .await
                == 3
        },
    )
    .await;
    let mail = flow.recorder.to("ada@example.com");
    assert_eq!(mail.len(), 1);
    assert!(
        mail[0].content["body"].starts_with("Hi Ada, Acme 2.0 is here"),
        "{:?}",
        mail[0].content
    );
    assert!(mail[0].content["unsubscribe_url"].contains("/v1/unsubscribe/"));
    assert!(
        flow.recorder.to("bob@example.com").is_empty(),
        "bob opted out of marketing"
    );
    let skipped = scalar_i64(&flow.db.pool,
        "SELECT count(*) FROM herald_deliveries WHERE recipient = 'recipient:bob' AND status = 'skipped' AND error LIKE 'preference:%'").await;
    assert_eq!(
        skipped, 2,
        "bob's email and push, each skipped for his preference"
    );

    // The security alert reaches bob anyway, at once.
    let run = start_for(&flow, "security_alert", json!({"device": "Firefox"}), "bob").await;
    flow.finished(run, "completed").await;
    let alert_mail = flow.recorder.to("bob@example.com");
    assert_eq!(alert_mail.len(), 1);
    assert!(alert_mail[0].content["body"].starts_with("Hi there, someone signed in from Firefox"));
    flow.stop().await;
}

/// The command line does what the API does: a profile, preferences, a topic, and a topic trigger.
#[tokio::test]
async fn recipients_and_topics_from_the_command_line() {
    let flow = Flow::without_worker(&[RELEASE]).await;
    let herald = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("DATABASE_URL", &flow.db.url)
            .env("HERALD_ENV", "test")
            .env("RUST_LOG", "error")
            .output()
            .expect("run herald");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        (output.status.success(), stdout, stderr)
    };
    let (ok, out, err) = herald(&[
        "recipients",
        "put",
        "cli-ada",
        "--profile",
        r#"{"email": "ada@example.com", "timezone": "Europe/Berlin"}"#,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"timezone\": \"Europe/Berlin\""), "{out}");
    let (ok, _, err) = herald(&[
        "recipients",
        "put",
        "cli-bob",
        "--profile",
        r#"{"email": "nope"}"#,
    ]);
    assert!(!ok);
    assert!(err.contains("email"), "the bad field is named: {err}");
    let (ok, out, err) = herald(&[
        "recipients",
        "preferences",
        "cli-ada",
        "--set",
        r#"{"channels": {"sms": false}}"#,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"sms\": false"), "{out}");
    let (ok, _, err) = herald(&["topics", "add", "cli-news", "cli-ada"]);
    assert!(ok, "{err}");
    let (ok, out, _) = herald(&["topics", "members", "cli-news"]);
    assert!(ok && out.contains("cli-ada"), "{out}");
    let (ok, out, err) = herald(&[
        "workflows",
        "trigger",
        "release",
        "--topic",
        "cli-news",
        "--data",
        r#"{"version": "3"}"#,
    ]);
    assert!(ok, "{err}");
    let started: Value = serde_json::from_str(&out).unwrap();
    let fanout = started["fanout"].as_i64().unwrap();
    let (ok, out, _) = herald(&["workflows", "fanout", &fanout.to_string()]);
    assert!(ok && out.contains("\"topic\": \"cli-news\""), "{out}");
    let (ok, out, err) = herald(&["recipients", "erase", "cli-ada"]);
    assert!(ok, "{err}");
    assert!(out.contains("erasure"), "{out}");
    let (ok, _, _) = herald(&["recipients", "get", "cli-ada"]);
    assert!(!ok, "erased");
    flow.stop().await;
}
