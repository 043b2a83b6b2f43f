//! The template catalogue: actions render a stored template for their channel in the recipient's locale (with a
//! fallback chain), wrapped in its layout with partials, HTML-escaped, with a text part made from the HTML;
//! strict variables; the HTTP endpoints (save, list, preview); `herald templates check` without a database.

use crate::common::flows::Flow;
use crate::common::spawn_app;
use herald::audit::Actor;
use herald::recipients::{Profile, store};
use serde_json::{Value, json};

const LAYOUT: &str = r#"{"name": "frame", "version": 1, "kind": "layout",
  "html": "<html><body>{{ content }}{% include \"sign-off\" %}</body></html>",
  "text": "{{ content }}\n-- {% include \"sign-off\" %}"}"#;

const PARTIAL: &str = r#"{"name": "sign-off", "version": 1, "kind": "partial",
  "html": "<p>Acme &amp; co</p>", "text": "Acme & co"}"#;

const TEMPLATE: &str = r#"{"name": "order-shipped", "version": 1, "layout": "frame",
  "sample": {"trigger": {"order": "A-1", "note": "<b>fragile</b>", "at": "2026-03-08T13:30:00Z", "total": 1234.5}},
  "channels": {
    "email": {"subject": "Order {{ trigger.order }} shipped",
              "html": "<p>Order {{ trigger.order }} ({{ trigger.note }}) shipped {{ trigger.at | format_date('long') }}, {{ trigger.total | format_number(2) }}</p>"},
    "sms": {"text": "Order {{ trigger.order }} shipped"}
  },
  "locales": {
    "pt": {"email": {"subject": "Pedido {{ trigger.order }} enviado",
                     "html": "<p>Pedido {{ trigger.order }} ({{ trigger.note }}) enviado {{ trigger.at | format_date('long') }}, {{ trigger.total | format_number(2) }}</p>"}},
    "pt-PT": {"sms": {"text": "Encomenda {{ trigger.order }} enviada"}}
  }}"#;

const SHIPPED: &str = r#"
name: shipped
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      order: { type: string }
      note: { type: string }
      at: { type: string }
      total: { type: number }
    next: mail
  - id: mail
    kind: action
    channel: email
    template: order-shipped
"#;

/// An action whose template reads a field the trigger does not have.
const BROKEN: &str = r#"
name: broken
version: 1
nodes:
  - id: start
    kind: trigger
    next: mail
  - id: mail
    kind: action
    channel: email
    to: "x@example.com"
    template: needs-more
"#;

async fn save(flow: &Flow, document: &str) {
    let document: Value = serde_json::from_str(document).unwrap();
    flow.engine
        .templates
        .save(&Actor::cli(), "test", &document)
        .await
        .unwrap();
}

async fn start_for(flow: &Flow, recipient: &str) -> i64 {
    let data = json!({"order": "A-1", "note": "<script>x</script>", "at": "2026-03-08T13:30:00Z", "total": 1234.5});
    match flow
        .engine
        .start_run_for("shipped", data, None, None, Some(recipient.into()))
        .await
        .unwrap()
    {
        herald::workflow::Started::Created { id, .. } => id,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_action_renders_its_template_in_the_recipients_locale_inside_its_layout() {
    let flow = Flow::start(&[SHIPPED]).await;
    for document in [PARTIAL, LAYOUT, TEMPLATE] {
        save(&flow, document).await;
    }
    for (id, email, locale) in [
        ("ana", "ana@example.com", "pt-BR"),
        ("bo", "bo@example.com", "fr"),
    ] {
        let profile = Profile::parse(&json!({"email": email, "locale": locale}), false).unwrap();
        store::put(&flow.db.pool, &Actor::cli(), id, &profile)
            .await
            .unwrap();
    }
    let ana = start_for(&flow, "ana").await;
    let bo = start_for(&flow, "bo").await;
    flow.finished(ana, "completed").await;
    flow.finished(bo, "completed").await;

    // pt-BR has no variant of its own: `pt` is next in the chain, with Portuguese dates and numbers.
    let sent = flow.recorder.to("ana@example.com");
    assert_eq!(sent.len(), 1);
    let content = &sent[0].content;
    assert_eq!(content["subject"], "Pedido A-1 enviado");
    let html = &content["html"];
    assert!(
        html.starts_with("<html><body><p>Pedido A-1"),
        "inside the layout: {html}"
    );
    assert!(html.contains("8 de março de 2026, 1.234,50"), "{html}");
    // Trigger data is escaped in HTML; the layout's partial is included.
    assert!(
        html.contains("(&lt;script&gt;x&lt;&#x2f;script&gt;)"),
        "escaped: {html}"
    );
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.ends_with("<p>Acme &amp; co</p></body></html>"),
        "{html}"
    );
    // No text part in the template: made from the HTML, wrapped in the layout's text part.
    assert_eq!(
        content["body"],
        "Pedido A-1 (<script>x</script>) enviado 8 de março de 2026, 1.234,50\n-- Acme & co"
    );
    // fr has no variant at all: the default, formatted for the default variants' language (English).
    let sent = flow.recorder.to("bo@example.com");
    assert_eq!(sent[0].content["subject"], "Order A-1 shipped");
    assert!(
        sent[0].content["html"].contains("March 8, 2026, 1,234.50"),
        "{}",
        sent[0].content["html"]
    );
    flow.stop().await;
}

#[tokio::test]
async fn a_template_missing_a_variable_fails_the_node_naming_it() {
    let flow = Flow::start(&[BROKEN]).await;
    save(
        &flow,
        r#"{"name": "needs-more", "version": 1,
            "channels": {"email": {"subject": "Hi {{ trigger.first_name }}", "text": "."}}}"#,
    )
    .await;
    let run = flow.trigger("broken", json!({})).await;
    let run = flow.finished(run, "failed").await;
    let step = crate::common::flows::step(&run, "mail");
    let error = step.error.clone().unwrap_or_default();
    assert!(
        error.contains("needs-more") && error.contains("`trigger.first_name`"),
        "{error}"
    );
    assert!(flow.recorder.messages().is_empty());
    flow.stop().await;
}

#[tokio::test]
async fn templates_are_saved_listed_and_previewed_over_http() {
    let app = spawn_app().await;
    let post = |body: Value| app.post("/v1/templates", &app.admin_key).json(&body).send();
    for document in [PARTIAL, LAYOUT, TEMPLATE] {
        let response = post(serde_json::from_str(document).unwrap()).await.unwrap();
        assert_eq!(response.status(), 201, "{document}");
    }
    // The same version again: unchanged; other content under it: a conflict.
    let again = post(serde_json::from_str(TEMPLATE).unwrap()).await.unwrap();
    assert_eq!(again.status(), 200);
    let mut changed: Value = serde_json::from_str(TEMPLATE).unwrap();
    changed["description"] = json!("changed");
    assert_eq!(post(changed).await.unwrap().status(), 409);
    // Every problem of a bad document at once, each naming its field.
    let bad = post(json!({"name": "bad name", "version": 0,
                          "channels": {"fax": {"text": "x"}, "sms": {"subject": "x", "text": "{{ x"}}}))
    .await
    .unwrap();
    assert_eq!(bad.status(), 422);
    let problem: Value = bad.json().await.unwrap();
    let text = problem.to_string();
    for field in [
        "`name`",
        "`version`",
        "channels.fax",
        "channels.sms.subject",
        "channels.sms.text",
    ] {
        assert!(text.contains(field), "{field} in {text}");
    }
    let unknown_layout = post(json!({"name": "x", "version": 1, "layout": "nope",
                                     "channels": {"sms": {"text": "x"}}}))
    .await
    .unwrap();
    assert_eq!(unknown_layout.status(), 422);
    // A name keeps its kind: the layout `frame` cannot become a partial under the templates that use it.
    let kind_change = post(json!({"name": "frame", "version": 2, "kind": "partial", "html": "x"}))
        .await
        .unwrap();
    assert_eq!(kind_change.status(), 422);
    // Saving needs the admin scope.
    let forbidden = app
        .post("/v1/templates", &app.service_key)
        .json(&serde_json::from_str::<Value>(TEMPLATE).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);

    let list = app.get_json("/v1/templates", &app.read_key).await;
    let names: Vec<&str> = list["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["frame", "order-shipped", "sign-off"]);

    // Preview in pt-PT: `pt-PT` has its own SMS, `pt` its email; sample data; nothing sent.
    let preview: Value = app
        .post("/v1/templates/order-shipped/preview", &app.read_key)
        .json(&json!({"locale": "pt-PT"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        preview["channels"]["sms"]["content"]["body"],
        "Encomenda A-1 enviada"
    );
    assert_eq!(preview["channels"]["sms"]["locale"], "pt-PT");
    assert_eq!(
        preview["channels"]["email"]["content"]["subject"],
        "Pedido A-1 enviado"
    );
    assert_eq!(preview["channels"]["email"]["locale"], "pt");
    // Data that lacks a variable: 422 naming it.
    let missing = app
        .post("/v1/templates/order-shipped/preview", &app.read_key)
        .json(&json!({"data": {"trigger": {"order": "A-2"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 422);
    let body = missing.text().await.unwrap();
    assert!(body.contains("note") || body.contains("at"), "{body}");
    let nothing = app
        .post("/v1/templates/nope/preview", &app.read_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(nothing.status(), 404);
    let bad_locale = app
        .post("/v1/templates/order-shipped/preview", &app.read_key)
        .json(&json!({"locale": "<script>"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_locale.status(), 422);
}

#[test]
fn templates_check_reports_every_problem_at_once_without_a_database() {
    let templates = tempfile::tempdir().unwrap();
    let workflows = tempfile::tempdir().unwrap();
    let write = |dir: &std::path::Path, name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap();
    };
    write(
        templates.path(),
        "a.yaml",
        "name: a\nversion: 1\nlayout: frame\nchannels:\n  email:\n    subject: \"{{ trigger.x }}\"\n    html: \"{% include 'gone' %}\"\n",
    );
    write(
        templates.path(),
        "b.yaml",
        "name: b\nversion: 1\nchannels:\n  sms:\n    txt: hi\n",
    );
    write(
        templates.path(),
        "c.yaml",
        "name: c\nversion: 1\nchannels:\n  sms:\n    text: hi\n",
    );
    write(
        workflows.path(),
        "w.yaml",
        "name: w\nversion: 1\nnodes:\n  - id: start\n    kind: trigger\n    next: [m, n]\n  - id: m\n    kind: action\n    channel: email\n    to: a@example.com\n    template: c\n  - id: n\n    kind: action\n    channel: sms\n    to: \"+1\"\n    template: zzz\n",
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["templates", "check", "--dir"])
        .arg(templates.path())
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    // a.yaml: the missing variable (the sample has no data), the missing partial and the missing layout; b.yaml:
    // the unknown field.
    for expected in [
        "a.yaml",
        "`trigger.x`",
        "'gone'",
        "`frame`",
        "b.yaml",
        "txt",
    ] {
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }
    // With the templates fixed, the workflows are checked against them: `c` has no email variant, `zzz` is not
    // there.
    std::fs::remove_file(templates.path().join("a.yaml")).unwrap();
    std::fs::remove_file(templates.path().join("b.yaml")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["templates", "check", "--dir"])
        .arg(templates.path())
        .arg("--workflows")
        .arg(workflows.path())
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in ["node m", "no `email` variant", "node n", "`zzz`"] {
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }
    // The repository's own templates and workflows pass.
    let root = env!("CARGO_MANIFEST_DIR");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .current_dir(root)
        .args(["templates", "check"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
