//! Deliveries against a real Postgres: a sent message is never sent again, a send interrupted by a crash is
//! never repeated, the suppression list stops sends, and callbacks move a delivery forward only, once each.

use crate::common::TestDb;
use herald::channels::deliveries::{self, Applied, Begin, CallbackUpdate, DeliveryKey};
use herald::channels::{
    Attempt, AttemptOutcome, ChannelKind, DeliveryStatus, SendError, SendReport, Sent,
};

/// A run row for deliveries to belong to (of a stored one-node workflow).
async fn run_row(db: &TestDb) -> i64 {
    sqlx::query(
        "INSERT INTO herald_workflows (name, version, definition, digest, source) \
         VALUES ('t', 1, '{}', 'd', 'test') ON CONFLICT DO NOTHING",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query_scalar(
        "INSERT INTO herald_runs (workflow, version, status, context) VALUES ('t', 1, 'running', '{}') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

fn key(run_id: i64, recipient: &str) -> DeliveryKey<'_> {
    DeliveryKey {
        run_id,
        node: "notify",
        recipient,
        channel: ChannelKind::Email,
        recipient_id: None,
        workflow: "t",
        triggered_at: chrono::Utc::now(),
    }
}

fn sent_report(provider: &str, id: &str) -> SendReport {
    SendReport {
        result: Ok(Sent {
            provider: provider.into(),
            provider_message_id: Some(id.into()),
        }),
        attempts: vec![Attempt {
            provider: provider.into(),
            outcome: AttemptOutcome::Sent,
            reason: None,
            latency_ms: 12,
        }],
    }
}

async fn status(db: &TestDb, id: i64) -> String {
    sqlx::query_scalar("SELECT status FROM herald_deliveries WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_sent_delivery_is_not_sent_again_by_a_retry() {
    let db = TestDb::new().await;
    let run = run_row(&db).await;
    let Begin::Send { id } = deliveries::begin(&db.pool, key(run, "ada@example.com"))
        .await
        .unwrap()
    else {
        panic!("a new delivery is sent");
    };
    assert_eq!(
        status(&db, id).await,
        "sending",
        "marked before the provider call"
    );
    deliveries::finish(
        &db.pool,
        id,
        key(run, "ada@example.com"),
        &sent_report("sendgrid", "sg-1"),
    )
    .await
    .unwrap();
    let again = deliveries::begin(&db.pool, key(run, "ada@example.com"))
        .await
        .unwrap();
    let Begin::AlreadySent { id: same, sent } = again else {
        panic!("a retry must not send again: {again:?}");
    };
    assert_eq!((same, sent.provider.as_str()), (id, "sendgrid"));
    assert_eq!(sent.provider_message_id.as_deref(), Some("sg-1"));
    let rows = deliveries::for_run(&db.pool, run).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].attempts[0]["latency_ms"], 12);
}

#[tokio::test]
async fn a_send_interrupted_by_a_crash_is_never_repeated() {
    let db = TestDb::new().await;
    let run = run_row(&db).await;
    let Begin::Send { id } = deliveries::begin(&db.pool, key(run, "bob@example.com"))
        .await
        .unwrap()
    else {
        panic!("first attempt sends");
    };
    // The worker dies here: no finish. The next attempts must not send.
    for _ in 0..2 {
        let next = deliveries::begin(&db.pool, key(run, "bob@example.com"))
            .await
            .unwrap();
        assert_eq!(next, Begin::OutcomeUnknown { id });
    }
    assert_eq!(status(&db, id).await, "unknown");
}

#[tokio::test]
async fn a_transient_failure_leaves_the_delivery_sendable_and_a_suppression_stops_it() {
    let db = TestDb::new().await;
    let run = run_row(&db).await;
    let Begin::Send { id } = deliveries::begin(&db.pool, key(run, "cy@example.com"))
        .await
        .unwrap()
    else {
        panic!("sends");
    };
    let failed = SendReport::from(Err(SendError::Transient {
        message: "every provider failed".into(),
        retry_after: None,
    }));
    deliveries::finish(&db.pool, id, key(run, "cy@example.com"), &failed)
        .await
        .unwrap();
    assert_eq!(
        status(&db, id).await,
        "queued",
        "definitely not sent: the retry may send"
    );
    assert_eq!(
        deliveries::begin(&db.pool, key(run, "cy@example.com"))
            .await
            .unwrap(),
        Begin::Send { id }
    );

    // The provider says the address is gone: suppressed, and the next run's send to it is skipped.
    let bounced = SendReport::from(Err(SendError::Suppress("ses: MailboxDoesNotExist".into())));
    deliveries::finish(&db.pool, id, key(run, "cy@example.com"), &bounced)
        .await
        .unwrap();
    let later = run_row(&db).await;
    let next = deliveries::begin(&db.pool, key(later, "cy@example.com"))
        .await
        .unwrap();
    assert!(matches!(next, Begin::Suppressed { .. }), "{next:?}");
    let list = deliveries::list_suppressions(&db.pool, 10).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].address, "cy@example.com");

    assert!(
        deliveries::unsuppress(
            &db.pool,
            &herald::audit::Actor::cli(),
            ChannelKind::Email,
            "cy@example.com"
        )
        .await
        .unwrap()
    );
    let third = run_row(&db).await;
    assert!(matches!(
        deliveries::begin(&db.pool, key(third, "cy@example.com"))
            .await
            .unwrap(),
        Begin::Send { .. }
    ));
}

fn update<'a>(event_key: &'a str, status: DeliveryStatus) -> CallbackUpdate<'a> {
    CallbackUpdate {
        provider: "sendgrid",
        event_key,
        provider_message_id: "sg-9",
        status: Some(status),
        recipient: Some("dee@example.com"),
        suppress: false,
        reason: None,
    }
}

#[tokio::test]
async fn callbacks_apply_once_and_only_forward() {
    let db = TestDb::new().await;
    let run = run_row(&db).await;
    let Begin::Send { id } = deliveries::begin(&db.pool, key(run, "dee@example.com"))
        .await
        .unwrap()
    else {
        panic!("sends");
    };
    deliveries::finish(
        &db.pool,
        id,
        key(run, "dee@example.com"),
        &sent_report("sendgrid", "sg-9"),
    )
    .await
    .unwrap();

    let delivered = update("ev-1", DeliveryStatus::Delivered);
    assert_eq!(
        deliveries::apply_callback(&db.pool, &delivered)
            .await
            .unwrap(),
        Applied::Applied { moved: true }
    );
    assert_eq!(
        deliveries::apply_callback(&db.pool, &delivered)
            .await
            .unwrap(),
        Applied::Duplicate
    );
    // A late `sent` (arriving after `delivered`) is recorded as seen but moves nothing back.
    let late = update("ev-0", DeliveryStatus::Sent);
    assert_eq!(
        deliveries::apply_callback(&db.pool, &late).await.unwrap(),
        Applied::Applied { moved: false }
    );
    assert_eq!(status(&db, id).await, "delivered");

    // A hard bounce after delivery moves it on and suppresses the recipient the delivery was for.
    let bounce = CallbackUpdate {
        suppress: true,
        reason: Some("bounce: 550 mailbox unavailable"),
        ..update("ev-2", DeliveryStatus::Bounced)
    };
    deliveries::apply_callback(&db.pool, &bounce).await.unwrap();
    assert_eq!(status(&db, id).await, "bounced");
    let list = deliveries::list_suppressions(&db.pool, 10).await.unwrap();
    assert_eq!(
        (list[0].channel.as_str(), list[0].address.as_str()),
        ("email", "dee@example.com")
    );
    let history = &deliveries::for_run(&db.pool, run).await.unwrap()[0].history;
    let statuses: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["sending", "sent", "delivered", "bounced"]);
}

/// Group commit: a worker's concurrent sends begin and finish in shared batches, each answered on its own. One
/// delivery named twice in a batch (two attempts of one node at once) makes PostgreSQL refuse the batch; the
/// batch is retried one send at a time, so exactly one of the two sends and the other does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_batches_and_a_delivery_named_twice_is_sent_once() {
    let db = TestDb::new().await;
    let run = run_row(&db).await;
    let batches = std::sync::Arc::new(deliveries::DeliveryBatches::start(db.pool.clone()));
    let recipients: Vec<String> = (0..100).map(|i| format!("u{i}@example.com")).collect();
    let mut tasks = Vec::new();
    let twice_over = std::iter::repeat_n("twice@example.com".to_string(), 2);
    for recipient in recipients.iter().cloned().chain(twice_over) {
        let batches = std::sync::Arc::clone(&batches);
        tasks.push(tokio::spawn(async move {
            let decided = batches.begin(key(run, &recipient)).await.unwrap();
            if let Begin::Send { id } = decided {
                let report = sent_report("smtp", &format!("m-{recipient}"));
                let finished = deliveries::Finished::new(id, key(run, &recipient), &report);
                batches.finish(finished).await.unwrap();
            }
            (recipient, decided)
        }));
    }
    let mut sends = 0;
    let mut twice = Vec::new();
    for task in tasks {
        let (recipient, decided) = task.await.unwrap();
        if recipient == "twice@example.com" {
            twice.push(decided);
        } else {
            assert!(
                matches!(decided, Begin::Send { .. }),
                "{recipient}: {decided:?}"
            );
            sends += 1;
        }
    }
    assert_eq!(sends, 100);
    let sent_twice = twice
        .iter()
        .filter(|d| matches!(d, Begin::Send { .. }))
        .count();
    assert_eq!(sent_twice, 1, "one of the two attempts sends: {twice:?}");
    let statuses: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM herald_deliveries GROUP BY status ORDER BY status",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(statuses, vec![("sent".to_string(), 101)]);
}
