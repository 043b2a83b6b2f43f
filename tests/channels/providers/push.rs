//! The push adapters (FCM HTTP v1, APNs over HTTP/2, Web Push) against local servers speaking their wire
//! formats, with keys generated for each test: the tokens are verified and the Web Push payload decrypted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::fake_provider::{FakeProvider, Reply};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald::channels::providers;
use herald::channels::{ChannelKind, Message, Outcome, Provider};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde_json::{Value, json};

fn push(to: &str) -> Message {
    Message {
        channel: ChannelKind::Push,
        providers: Vec::new(),
        to: to.into(),
        content: BTreeMap::from([
            ("title".to_string(), "Shipped".to_string()),
            ("body".to_string(), "Your order is on its way".to_string()),
            ("order_id".to_string(), "o-17".to_string()),
        ]),
        idempotency_key: "run:9:1:push".into(),
    }
}

/// A P-256 key pair as (private PKCS#8 PEM, public PEM).
fn ec_key() -> (String, String) {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    (
        String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        String::from_utf8(key.public_key_to_pem().unwrap()).unwrap(),
    )
}

/// The algorithms the adapters sign with.
#[derive(Clone, Copy)]
enum Algorithm {
    Rs256,
    Es256,
}

/// A compact JWS checked with OpenSSL, independently of the adapters' signer: its header says `algorithm`,
/// its signature verifies with `public_pem` and, when given, its `aud` claim is `audience`. Returns (header,
/// claims).
fn verify_token(
    token: &str,
    public_pem: &str,
    algorithm: Algorithm,
    audience: Option<&str>,
) -> (Value, Value) {
    use openssl::bn::BigNum;
    use openssl::ecdsa::EcdsaSig;
    use openssl::hash::MessageDigest;
    use openssl::sign::Verifier;

    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS: {token}");
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).expect("base64url");
    let header: Value = serde_json::from_slice(&decode(parts[0])).unwrap();
    let claims: Value = serde_json::from_slice(&decode(parts[1])).unwrap();
    let mut signature = decode(parts[2]);
    let public = PKey::public_key_from_pem(public_pem.as_bytes()).unwrap();
    let name = match algorithm {
        Algorithm::Rs256 => "RS256",
        Algorithm::Es256 => {
            // JWS carries r and s as 32 bytes each; OpenSSL verifies DER.
            assert_eq!(signature.len(), 64, "ES256 signatures are r || s");
            let r = BigNum::from_slice(&signature[..32]).unwrap();
            let s = BigNum::from_slice(&signature[32..]).unwrap();
            signature = EcdsaSig::from_private_components(r, s)
                .unwrap()
                .to_der()
                .unwrap();
            "ES256"
        }
    };
    assert_eq!(header["alg"], name);
    let mut verifier = Verifier::new(MessageDigest::sha256(), &public).unwrap();
    verifier
        .update(format!("{}.{}", parts[0], parts[1]).as_bytes())
        .unwrap();
    assert!(
        verifier.verify(&signature).unwrap(),
        "the signature verifies"
    );
    if let Some(audience) = audience {
        assert_eq!(claims["aud"], audience);
    }
    (header, claims)
}

fn decode_claims(
    token: &str,
    public_pem: &str,
    algorithm: Algorithm,
    audience: Option<&str>,
) -> Value {
    verify_token(token, public_pem, algorithm, audience).1
}

struct FcmFixture {
    fake: FakeProvider,
    adapter: Arc<dyn Provider>,
    public_pem: String,
}

async fn fcm(send_reply: Reply) -> FcmFixture {
    let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let private_pem = String::from_utf8(rsa.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let public_pem = String::from_utf8(rsa.public_key_to_pem().unwrap()).unwrap();
    let fake = FakeProvider::start(send_reply).await;
    // The first request is always the token exchange.
    fake.script([Reply::json(
        200,
        json!({ "access_token": "ya29.token", "expires_in": 3599, "token_type": "Bearer" }),
    )]);
    let key_file = json!({
        "type": "service_account", "project_id": "acme-app", "client_email": "herald@acme-app.iam.gserviceaccount.com",
        "private_key": private_pem, "token_uri": format!("{}/token", fake.url()),
    });
    let settings = json!({ "base_url": fake.url(), "service_account_json": key_file.to_string(), "timeout_ms": 300 });
    let adapter = providers::build("fcm", &settings).expect("fcm builds");
    FcmFixture {
        fake,
        adapter,
        public_pem,
    }
}

#[tokio::test]
async fn fcm_exchanges_a_signed_assertion_once_and_sends_the_v1_message() {
    let f = fcm(Reply::json(
        200,
        json!({ "name": "projects/acme-app/messages/0:1500" }),
    ))
    .await;
    for _ in 0..2 {
        let outcome = f.adapter.send(&push("fcm-token-1")).await;
        assert_eq!(
            outcome,
            Outcome::Sent {
                provider_message_id: Some("projects/acme-app/messages/0:1500".into())
            }
        );
    }
    let requests = f.fake.requests();
    assert_eq!(requests.len(), 3, "one token exchange, reused by two sends");
    let token_request = &requests[0];
    assert_eq!(token_request.path, "/token");
    let form: BTreeMap<_, _> = token_request.form().into_iter().collect();
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let audience = format!("{}/token", f.fake.url());
    let claims = decode_claims(
        &form["assertion"],
        &f.public_pem,
        Algorithm::Rs256,
        Some(&audience),
    );
    assert_eq!(claims["iss"], "herald@acme-app.iam.gserviceaccount.com");
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/firebase.messaging"
    );

    let send = &requests[1];
    assert_eq!(send.path, "/v1/projects/acme-app/messages:send");
    assert_eq!(send.header("authorization"), Some("Bearer ya29.token"));
    assert_eq!(
        send.json(),
        json!({ "message": { "token": "fcm-token-1",
            "notification": { "title": "Shipped", "body": "Your order is on its way" },
            "data": { "order_id": "o-17" } } })
    );
}

fn fcm_error(status: u16, code: &str, fcm_code: Option<&str>) -> Reply {
    let details = fcm_code.map_or(json!([]), |c| {
        json!([{ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c }])
    });
    Reply::json(
        status,
        json!({ "error": { "code": status, "message": "m", "status": code, "details": details } }),
    )
}

#[tokio::test]
async fn fcm_answers_are_classified() {
    let cases = [
        (
            fcm_error(404, "NOT_FOUND", Some("UNREGISTERED")),
            "suppressed",
        ),
        (
            fcm_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT")),
            "permanent",
        ),
        (
            fcm_error(403, "PERMISSION_DENIED", Some("SENDER_ID_MISMATCH")),
            "config",
        ),
        (
            fcm_error(401, "UNAUTHENTICATED", Some("THIRD_PARTY_AUTH_ERROR")),
            "config",
        ),
        (
            fcm_error(503, "UNAVAILABLE", Some("UNAVAILABLE")),
            "transient",
        ),
        (Reply::text(500, "<html>"), "transient"),
    ];
    for (reply, expected) in cases {
        let shown = format!("{reply:?}");
        let f = fcm(reply).await;
        assert_eq!(
            f.adapter.send(&push("t")).await.label(),
            expected,
            "{shown}"
        );
    }
    let f = fcm(
        fcm_error(429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED")).header("retry-after", "5")
    )
    .await;
    let outcome = f.adapter.send(&push("t")).await;
    let Outcome::RateLimited { retry_after, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        retry_after,
        Some(Duration::from_secs(60)),
        "a quota error waits at least a minute"
    );

    let refused = FakeProvider::start(Reply::json(400, json!({ "error": "invalid_grant" }))).await;
    let settings_refused = {
        let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let pem = String::from_utf8(rsa.private_key_to_pem_pkcs8().unwrap()).unwrap();
        json!({ "base_url": refused.url(), "service_account_json": json!({
            "project_id": "p", "client_email": "e@p", "private_key": pem, "token_uri": format!("{}/token", refused.url()) }).to_string() })
    };
    let adapter = providers::build("fcm", &settings_refused).unwrap();
    assert_eq!(
        adapter.send(&push("t")).await.label(),
        "config",
        "the token endpoint refused the account"
    );
}

async fn apns(reply: Reply) -> (FakeProvider, Arc<dyn Provider>, String) {
    let (private_pem, public_pem) = ec_key();
    let fake = FakeProvider::start(reply).await;
    let settings = json!({
        "base_url": fake.url(), "key_id": "ABC123DEFG", "team_id": "DEF123GHIJ", "private_key": private_pem,
        "topic": "com.acme.app", "timeout_ms": 300,
    });
    let adapter = providers::build("apns", &settings).expect("apns builds");
    (fake, adapter, public_pem)
}

#[tokio::test]
async fn apns_posts_over_http2_with_a_signed_provider_token() {
    let (fake, adapter, public_pem) =
        apns(Reply::status(200).header("apns-id", "EC1BF194-B3B2-4C3E-8A5E-8B8E2D1F9C01")).await;
    let outcome = adapter.send(&push("a1b2c3d4")).await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some("EC1BF194-B3B2-4C3E-8A5E-8B8E2D1F9C01".into())
        }
    );
    adapter.send(&push("a1b2c3d4")).await;
    let requests = fake.requests();
    let request = &requests[0];
    assert_eq!(request.version, axum::http::Version::HTTP_2);
    assert_eq!(request.path, "/3/device/a1b2c3d4");
    assert_eq!(request.header("apns-topic"), Some("com.acme.app"));
    assert_eq!(request.header("apns-push-type"), Some("alert"));
    assert_eq!(request.header("apns-priority"), Some("10"));
    assert_eq!(
        request.header("apns-id"),
        requests[1].header("apns-id"),
        "the same notification, the same id"
    );
    let token = request
        .header("authorization")
        .unwrap()
        .strip_prefix("bearer ")
        .unwrap();
    assert_eq!(
        verify_token(token, &public_pem, Algorithm::Es256, None).0["kid"],
        "ABC123DEFG"
    );
    let claims = decode_claims(token, &public_pem, Algorithm::Es256, None);
    assert_eq!(claims["iss"], "DEF123GHIJ");
    assert_eq!(
        requests[1].header("authorization"),
        request.header("authorization"),
        "the token is reused"
    );
    assert_eq!(
        request.json(),
        json!({ "aps": { "alert": { "title": "Shipped", "body": "Your order is on its way" } }, "order_id": "o-17" })
    );
}

#[tokio::test]
async fn apns_answers_are_classified() {
    let reason = |status: u16, reason: &str| Reply::json(status, json!({ "reason": reason }));
    let cases = [
        (
            Reply::json(
                410,
                json!({ "reason": "Unregistered", "timestamp": 1_700_000_000_000_u64 }),
            ),
            "suppressed",
        ),
        (reason(400, "BadDeviceToken"), "suppressed"),
        (reason(400, "PayloadTooLarge"), "permanent"),
        (reason(403, "InvalidProviderToken"), "config"),
        (reason(403, "ExpiredProviderToken"), "transient"),
        (reason(429, "TooManyRequests"), "rate_limited"),
        (reason(503, "ServiceUnavailable"), "transient"),
    ];
    for (reply, expected) in cases {
        let shown = format!("{reply:?}");
        let (_fake, adapter, _) = apns(reply).await;
        assert_eq!(
            adapter.send(&push("abcdef")).await.label(),
            expected,
            "{shown}"
        );
    }
    let (fake, adapter, _) = apns(Reply::status(200)).await;
    assert_eq!(adapter.send(&push("not hex!")).await.label(), "suppressed");
    assert_eq!(
        fake.request_count(),
        0,
        "a malformed token is refused before sending"
    );
}

#[tokio::test]
async fn web_push_encrypts_for_the_subscription_and_signs_vapid_for_its_origin() {
    let fake =
        FakeProvider::start(Reply::status(201).header("location", "https://push.example/m/1"))
            .await;
    let (private_pem, public_pem) = ec_key();
    let settings = json!({ "vapid_private_key": private_pem, "subject": "mailto:ops@acme.test", "timeout_ms": 300,
        "allow_private_endpoints": true });
    let adapter = providers::build("webpush", &settings).expect("webpush builds");
    let (browser_keys, auth) = ece::generate_keypair_and_auth_secret().unwrap();
    let subscription = json!({
        "endpoint": format!("{}/push/v1/abc", fake.url()),
        "keys": { "p256dh": URL_SAFE_NO_PAD.encode(browser_keys.pub_as_raw().unwrap()), "auth": URL_SAFE_NO_PAD.encode(auth) },
    });
    let outcome = adapter.send(&push(&subscription.to_string())).await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some("https://push.example/m/1".into())
        }
    );

    let request = fake.single_request();
    assert_eq!(request.path, "/push/v1/abc");
    assert_eq!(request.header("content-encoding"), Some("aes128gcm"));
    assert_eq!(request.header("ttl"), Some("86400"));
    let plaintext = ece::decrypt(
        &browser_keys.raw_components().unwrap(),
        &auth,
        &request.body,
    )
    .expect("decrypts");
    let payload: Value = serde_json::from_slice(&plaintext).unwrap();
    assert_eq!(
        payload,
        json!({ "title": "Shipped", "body": "Your order is on its way", "order_id": "o-17" })
    );

    let authorization = request.header("authorization").unwrap();
    let (token, key) = authorization
        .strip_prefix("vapid t=")
        .unwrap()
        .split_once(", k=")
        .unwrap();
    let claims = decode_claims(token, &public_pem, Algorithm::Es256, Some(&fake.url()));
    assert_eq!(claims["sub"], "mailto:ops@acme.test");
    let expected_key = {
        let key = PKey::public_key_from_pem(public_pem.as_bytes())
            .unwrap()
            .ec_key()
            .unwrap();
        let mut ctx = openssl::bn::BigNumContext::new().unwrap();
        key.public_key()
            .to_bytes(
                key.group(),
                openssl::ec::PointConversionForm::UNCOMPRESSED,
                &mut ctx,
            )
            .unwrap()
    };
    assert_eq!(URL_SAFE_NO_PAD.decode(key).unwrap(), expected_key);
}

#[tokio::test]
async fn web_push_answers_are_classified_and_a_bad_subscription_is_permanent() {
    let (private_pem, _) = ec_key();
    let settings = json!({ "vapid_private_key": private_pem, "subject": "mailto:ops@acme.test", "timeout_ms": 300,
        "allow_private_endpoints": true });
    let adapter = providers::build("webpush", &settings).unwrap();
    let (browser_keys, auth) = ece::generate_keypair_and_auth_secret().unwrap();
    for (reply, expected) in [
        (Reply::status(410), "suppressed"),
        (Reply::status(404), "suppressed"),
        (Reply::status(400), "permanent"),
        (Reply::status(413), "permanent"),
        (Reply::status(403), "config"),
        (
            Reply::status(429).header("retry-after", "9"),
            "rate_limited",
        ),
        (Reply::status(502), "transient"),
        (
            Reply::status(201).delayed(Duration::from_secs(2)),
            "transient",
        ),
    ] {
        let shown = format!("{reply:?}");
        let fake = FakeProvider::start(reply).await;
        let subscription = json!({ "endpoint": format!("{}/p", fake.url()),
            "keys": { "p256dh": URL_SAFE_NO_PAD.encode(browser_keys.pub_as_raw().unwrap()), "auth": URL_SAFE_NO_PAD.encode(auth) } });
        assert_eq!(
            adapter.send(&push(&subscription.to_string())).await.label(),
            expected,
            "{shown}"
        );
    }
    assert_eq!(adapter.send(&push("not json")).await.label(), "permanent");
}

#[tokio::test]
async fn push_adapters_fail_at_build_without_keys() {
    for (name, settings, missing) in [
        ("fcm", json!({}), "service_account_json"),
        (
            "apns",
            json!({ "key_id": "k", "team_id": "t", "topic": "x" }),
            "private_key",
        ),
        (
            "webpush",
            json!({ "subject": "mailto:a@b" }),
            "vapid_private_key",
        ),
    ] {
        let Err(error) = providers::build(name, &settings) else {
            panic!("{name} built without {missing}")
        };
        assert!(error.to_string().contains(missing), "{error}");
    }
    let Err(error) = providers::build(
        "apns",
        &json!({ "key_id": "k", "team_id": "t", "topic": "x", "private_key": "junk-secret" }),
    ) else {
        panic!("built with a junk key");
    };
    assert!(!error.to_string().contains("junk-secret"), "{error}");
}

/// Security finding 3: a subscription's endpoint comes from run data, and herald POSTed wherever it pointed
/// (loopback, the private network, cloud metadata). Now only public https push services are reached.
#[tokio::test]
async fn web_push_refuses_endpoints_outside_the_public_internet() {
    let fake = FakeProvider::start(Reply::status(201)).await;
    let port = fake.url().rsplit(':').next().unwrap_or("0").to_string();
    let (private_pem, _) = ec_key();
    let (browser_keys, auth) = ece::generate_keypair_and_auth_secret().unwrap();
    let keys = json!({ "p256dh": URL_SAFE_NO_PAD.encode(browser_keys.pub_as_raw().unwrap()),
        "auth": URL_SAFE_NO_PAD.encode(auth) });
    let to = |endpoint: String| json!({ "endpoint": endpoint, "keys": keys.clone() }).to_string();
    let guarded = providers::build(
        "webpush",
        &json!({ "vapid_private_key": private_pem, "subject": "mailto:ops@acme.test", "timeout_ms": 300 }),
    )
    .unwrap();
    for endpoint in [
        fake.url().to_string() + "/p",                          // http
        format!("https://127.0.0.1:{port}/p"),                  // loopback
        format!("https://localhost:{port}/p"),                  // a name for loopback
        "https://169.254.169.254/latest/meta-data".to_string(), // cloud metadata
        "https://10.0.0.7/p".to_string(),
        "https://[::1]/p".to_string(),
        "https://[::ffff:127.0.0.1]/p".to_string(),
    ] {
        let outcome = guarded.send(&push(&to(endpoint.clone()))).await;
        assert_eq!(outcome.label(), "permanent", "{endpoint}: {outcome:?}");
    }
    assert_eq!(fake.request_count(), 0, "nothing reached the local server");

    // An allowlist of push services refuses every other host.
    let listed = providers::build(
        "webpush",
        &json!({ "vapid_private_key": private_pem, "subject": "mailto:ops@acme.test", "timeout_ms": 300,
            "allowed_hosts": ["fcm.googleapis.com", "*.push.services.mozilla.com"] }),
    )
    .unwrap();
    let outcome = listed
        .send(&push(&to("https://push.example.net/p".into())))
        .await;
    assert_eq!(outcome.label(), "permanent", "{outcome:?}");
}
