//! Token hygiene: a push device its provider reports gone (FCM `UNREGISTERED`, against a fake FCM server speaking
//! the v1 API) is deactivated on the recipient's profile and not sent to again; their other devices still are.

use crate::common;

use crate::common::flows::{Flow, step};
use crate::fake_provider::{FakeProvider, Reply};
use herald::audit::Actor;
use herald::recipients::{Profile, store};
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde_json::json;

const PING: &str = r#"
name: ping
version: 1
nodes:
  - id: start
    kind: trigger
    next: push
  - id: push
    kind: action
    channel: push
    providers: [fcm]
    content:
      title: "Ping"
      body: "for {{ recipient.id }}"
"#;

fn unregistered() -> Reply {
    Reply::json(
        404,
        json!({ "error": { "code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
            "details": [{ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                          "errorCode": "UNREGISTERED" }] } }),
    )
}

fn accepted() -> Reply {
    Reply::json(200, json!({ "name": "projects/acme-app/messages/0:1" }))
}

#[tokio::test]
async fn a_device_fcm_reports_unregistered_is_deactivated_and_not_sent_to_again() {
    let fake = FakeProvider::start(accepted()).await;
    let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let private_pem = String::from_utf8(rsa.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let key_file = json!({
        "type": "service_account", "project_id": "acme-app", "client_email": "herald@acme-app.iam.gserviceaccount.com",
        "private_key": private_pem, "token_uri": format!("{}/token", fake.url()),
    });
    let mut settings = common::settings();
    settings.channels.sink = herald::channels::Sink::Providers;
    settings.channels.chains.push = vec!["fcm".into()];
    settings.providers.0.insert(
        "fcm".into(),
        json!({ "base_url": fake.url(), "service_account_json": key_file.to_string(), "timeout_ms": 2000 }),
    );
    // The token exchange, then the devices in their stored order (by token): the live one, the gone one.
    fake.script([
        Reply::json(
            200,
            json!({ "access_token": "ya29.t", "expires_in": 3599, "token_type": "Bearer" }),
        ),
        accepted(),
        unregistered(),
    ]);
    let flow = Flow::with_providers(&[PING], &settings).await.with_worker();
    let profile = Profile::parse(
        &json!({"devices": [{"provider": "fcm", "token": "a-live-token"}, {"provider": "fcm", "token": "b-gone-token"}]}),
        false,
    )
    .unwrap();
    store::put(&flow.db.pool, &Actor::cli(), "ada", &profile)
        .await
        .unwrap();

    let first = start(&flow).await;
    let run = flow.finished(first, "completed").await;
    assert_eq!(
        step(&run, "push").outcome.as_deref(),
        Some("sent"),
        "one device took it"
    );
    let sends: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("messages:send"))
        .map(|r| r.json()["message"]["token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sends, ["a-live-token", "b-gone-token"]);
    let devices = store::get(&flow.db.pool, "ada")
        .await
        .unwrap()
        .unwrap()
        .devices
        .0;
    let gone = devices.iter().find(|d| d.token == "b-gone-token").unwrap();
    assert!(!gone.active);
    assert!(gone.deactivated_reason.is_some(), "{gone:?}");
    assert!(
        devices
            .iter()
            .find(|d| d.token == "a-live-token")
            .unwrap()
            .active
    );

    // A profile sync that still lists the stale token does not revive it; the next send skips it.
    store::put(&flow.db.pool, &Actor::cli(), "ada", &profile)
        .await
        .unwrap();
    let second = start(&flow).await;
    flow.finished(second, "completed").await;
    let sends_to_gone = fake
        .requests()
        .iter()
        .filter(|r| {
            r.path.ends_with("messages:send") && r.json()["message"]["token"] == "b-gone-token"
        })
        .count();
    assert_eq!(sends_to_gone, 1, "the gone device was not sent to again");
    flow.stop().await;
}

async fn start(flow: &Flow) -> i64 {
    match flow
        .engine
        .start_run_for("ping", json!({}), None, None, Some("ada".into()))
        .await
        .unwrap()
    {
        herald::workflow::Started::Created { id, .. } => id,
        other => panic!("{other:?}"),
    }
}
