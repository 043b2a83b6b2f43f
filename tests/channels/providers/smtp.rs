//! The SMTP adapter against a real SMTP server (Python's aiosmtpd, started by each test): AUTH, STARTTLS with a
//! self-signed certificate, and reply codes classified into outcomes.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;

use crate::common::free_port;
use herald::channels::providers;
use herald::channels::{ChannelKind, Message, Outcome, Provider};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

struct SmtpServer {
    port: u16,
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
    _dir: tempfile::TempDir,
}

/// A self-signed certificate for 127.0.0.1 (the adapter accepts it with `accept_invalid_certs`), written to `dir`.
fn self_signed(dir: &std::path::Path) -> (String, String) {
    use openssl::{
        asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509::X509,
        x509::X509NameBuilder,
    };
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "127.0.0.1").unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    let san = openssl::x509::extension::SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .build(&cert.x509v3_context(None, None))
        .unwrap();
    cert.append_extension(san).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.build().to_pem().unwrap()).unwrap();
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

/// Fails the test with the fix when python3 or aiosmtpd is missing, rather than with a server that never starts.
fn require_aiosmtpd() {
    let check = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "python3 is not installed ({error}): run ./test.sh, which installs it and aiosmtpd"
            )
        });
    if !check.status.success() {
        panic!(
            "aiosmtpd is not installed: run ./test.sh or python3 -m pip install aiosmtpd\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

async fn start_server(starttls: bool) -> SmtpServer {
    require_aiosmtpd();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_server.py");
    let mut command = Command::new("python3");
    command
        .arg(script)
        .arg(port.to_string())
        .arg("mailer")
        .arg("s3cret");
    if starttls {
        let (cert, key) = self_signed(dir.path());
        command.arg(cert).arg(key);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 with aiosmtpd (run ./test.sh or python3 -m pip install aiosmtpd)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line()).await;
    assert_eq!(
        ready.unwrap().unwrap().as_deref(),
        Some("READY"),
        "the SMTP server started"
    );
    SmtpServer {
        port,
        lines,
        _child: child,
        _dir: dir,
    }
}

impl SmtpServer {
    async fn next_message(&mut self) -> Value {
        let line =
            tokio::time::timeout(std::time::Duration::from_secs(10), self.lines.next_line()).await;
        serde_json::from_str(&line.unwrap().unwrap().unwrap()).unwrap()
    }
}

fn adapter(server: &SmtpServer, password: &str, tls: &str) -> Arc<dyn Provider> {
    let settings = json!({
        "host": "127.0.0.1", "port": server.port, "tls": tls, "accept_invalid_certs": true,
        "username": "mailer", "password": password, "from": "Acme <noreply@acme.test>", "timeout_ms": 5000,
    });
    providers::build("smtp", &settings).expect("smtp builds")
}

fn email(to: &str) -> Message {
    Message {
        channel: ChannelKind::Email,
        providers: Vec::new(),
        to: to.into(),
        content: BTreeMap::from([
            ("subject".to_string(), "Welcome aboard".to_string()),
            (
                "body".to_string(),
                "Hi Ada, your account is ready.".to_string(),
            ),
            (
                "unsubscribe_url".to_string(),
                "https://herald.test/v1/unsubscribe/t.s".to_string(),
            ),
        ]),
        idempotency_key: "run:5:1:welcome_email".into(),
    }
}

#[tokio::test]
async fn smtp_sends_over_starttls_with_auth() {
    let mut server = start_server(true).await;
    let outcome = adapter(&server, "s3cret", "starttls")
        .send(&email("ada@example.com"))
        .await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some("herald.run.5.1.welcome_email@acme.test".into())
        }
    );
    let received = server.next_message().await;
    assert_eq!(received["auth_user"], "mailer");
    assert_eq!(received["mail_from"], "noreply@acme.test");
    assert_eq!(received["rcpt_tos"], json!(["ada@example.com"]));
    let data = received["data"].as_str().unwrap();
    assert!(data.contains("Subject: Welcome aboard"), "{data}");
    assert!(
        data.contains("Message-ID: <herald.run.5.1.welcome_email@acme.test>"),
        "{data}"
    );
    assert!(data.contains("Hi Ada, your account is ready."), "{data}");
    assert!(
        data.contains("List-Unsubscribe: <https://herald.test/v1/unsubscribe/t.s>"),
        "{data}"
    );
    assert!(
        data.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{data}"
    );
}

#[tokio::test]
async fn smtp_reply_codes_are_classified() {
    let server = start_server(false).await;
    let smtp = adapter(&server, "s3cret", "none");
    for (to, expected) in [
        ("code550@example.com", "suppressed"),
        ("code554@example.com", "permanent"),
        ("code451@example.com", "transient"),
        ("code421@example.com", "rate_limited"),
    ] {
        assert_eq!(smtp.send(&email(to)).await.label(), expected, "{to}");
    }
    let wrong = adapter(&server, "wrong", "none");
    let outcome = wrong.send(&email("ada@example.com")).await;
    assert_eq!(
        outcome.label(),
        "config",
        "535 authentication failed: {outcome:?}"
    );
    assert_eq!(
        smtp.send(&email("not an address")).await.label(),
        "permanent"
    );
}

#[tokio::test]
async fn a_refused_connection_is_transient_and_missing_settings_fail_the_build() {
    let settings = json!({ "host": "127.0.0.1", "port": free_port(), "tls": "none", "from": "a@acme.test", "timeout_ms": 1000 });
    let smtp = providers::build("smtp", &settings).unwrap();
    assert_eq!(
        smtp.send(&email("ada@example.com")).await.label(),
        "transient"
    );
    for (settings, missing) in [
        (json!({ "from": "a@acme.test" }), "host"),
        (json!({ "host": "smtp.acme.test" }), "from"),
        (
            json!({ "host": "h", "from": "a@acme.test", "username": "u" }),
            "password",
        ),
    ] {
        let Err(error) = providers::build("smtp", &settings) else {
            panic!("built without {missing}")
        };
        assert!(error.to_string().contains(missing), "{error}");
    }
}
