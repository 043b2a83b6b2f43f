//! Alerts herald raises about itself, sent through its own channels (a chat room, an email address): a provider
//! whose circuit stays open, a queue whose oldest job waits too long, a queue dead-lettering jobs, a Kafka
//! partition the bridge is behind on, a clock schedule whose job fails.
//!
//! One process of the fleet evaluates the rules at a time (the holder of a session advisory lock, as for the
//! queue stats), every `alerts.every_secs`. Each rule and subject (a provider, a queue) has a row in
//! `herald_alerts` that moves pending → firing → resolved: a condition must hold for the rule's duration before it
//! fires, and the notification of each change is sent once (the row records that it went out; a failed send is
//! retried on the next evaluation). So an alert fires once and clears once, whichever process evaluates and
//! however often: the state is in the database, not in a process. A crash between a send and its record, or two
//! evaluators overlapping while a leader's session dies, can repeat one notification. A resolve waits until its
//! RESOLVED is out before the same alert can start again; an alert whose FIRING never went out is dropped without a
//! RESOLVED when its condition clears.

use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::IntGaugeVec;
use prometheus::core::Collector;
use serde::Deserialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::channels::{ChannelKind, Channels, Message};
use crate::db::SessionLock;
use crate::setting::{self, InvalidSetting};

/// Advisory lock class of the alert evaluator (1215 is the queue stats').
const LOCK_CLASS: i32 = 1216;
/// Most notifications sent in one pass (a storm of alerts goes out over the following passes, a pass every
/// `alerts.every_secs`), and the longest one send may take: together well inside the pass's minute.
const MAX_SENDS_PER_PASS: i64 = 10;
const SEND_DEADLINE: Duration = Duration::from_secs(5);
/// Longest one rule's reads may take: past it the rule is unread this pass (a table locked elsewhere must not
/// hold back the other rules, whose reads come after it).
const RULE_DEADLINE: Duration = Duration::from_secs(10);
/// Queue counts older than this are not judged (see `queue::stats`).
const STALE_STATS_SECS: f64 = 60.0;

/// `[alerts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// The channel alerts go out on: `chat`, `email`, `sms` or `push`.
    pub channel: String,
    /// The recipient on that channel (a chat room's name, an address); empty: alerts are off.
    pub to: String,
    #[serde(rename = "every_secs", deserialize_with = "setting::secs")]
    pub every: Duration,
    /// A provider whose circuit is open on some live worker for this long fires `provider_down`.
    #[serde(rename = "circuit_open_for_secs", deserialize_with = "setting::secs")]
    pub circuit_open_for: Duration,
    /// A queue whose oldest available job has been due this long fires `queue_behind` (0: off).
    #[serde(rename = "oldest_available_secs", deserialize_with = "setting::secs")]
    pub oldest_available: Duration,
    /// A queue that dead-lettered more than this many jobs in the last minute fires `dead_letters` (0: off).
    pub dead_letters_per_minute: i64,
    /// A Kafka partition whose lag (as of its last stored batch) passed this fires `bridge_behind` (0: off).
    pub bridge_lag_messages: i64,
    /// A schedule whose latest tick could not fire, or whose job is failing, fires `clock_failing`.
    pub clock_failing: bool,
    /// A firing alert is announced again this often while it lasts (0: never).
    #[serde(rename = "remind_every_secs", deserialize_with = "setting::secs")]
    pub remind_every: Duration,
}

impl AlertSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        // Alerts go to an operator's address; the in-app feed is for the product's recipients.
        if ChannelKind::parse(&self.channel).is_none_or(|c| c == ChannelKind::InApp) {
            return Err(InvalidSetting::new(
                "alerts.channel",
                "must be chat, email, sms or push",
            ));
        }
        if !self.to.trim().is_empty() {
            setting::positive("alerts.every_secs", self.every)?;
        }
        for (name, value) in [
            (
                "alerts.dead_letters_per_minute",
                self.dead_letters_per_minute,
            ),
            ("alerts.bridge_lag_messages", self.bridge_lag_messages),
        ] {
            if value < 0 {
                return Err(InvalidSetting::new(name, "must be 0 (off) or more"));
            }
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        !self.to.trim().is_empty()
    }
}

/// A condition that holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub rule: &'static str,
    pub subject: String,
    pub summary: String,
    /// How long it must hold before it fires.
    pub hold_for: Duration,
    /// Below the rule's firing level but above its clearing level: keeps an alert that fires firing, starts
    /// nothing (hysteresis, so a rate steady at the threshold does not fire and clear every pass).
    pub sustain_only: bool,
}

/// The rules, each reading its own source.
#[derive(Debug, Clone, Copy)]
enum Rule {
    ProviderDown,
    QueueBehind,
    DeadLetters,
    BridgeBehind,
    ClockFailing,
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Rule::ProviderDown => "provider_down",
            Rule::QueueBehind => "queue_behind",
            Rule::DeadLetters => "dead_letters",
            Rule::BridgeBehind => "bridge_behind",
            Rule::ClockFailing => "clock_failing",
        }
    }
}

/// What holds now, rule by rule, and the rules whose source could not be read this time.
#[derive(Debug, Default)]
pub struct Holding {
    pub conditions: Vec<Condition>,
    /// Their alerts keep the state they have (an unreadable table is no proof that a problem ended).
    pub unread: Vec<&'static str>,
}

/// The conditions that hold now: providers whose circuit is open on a live worker, queues behind, queues
/// dead-lettering, bridge partitions behind, failing schedules. Each rule reads on its own: one that fails (a
/// bad row) or takes longer than [`RULE_DEADLINE`] is logged and listed as unread, and the others are still judged.
pub async fn conditions(pool: &PgPool, settings: &AlertSettings) -> Holding {
    let mut holding = Holding::default();
    let rules = [
        (Rule::ProviderDown, true),
        (Rule::QueueBehind, !settings.oldest_available.is_zero()),
        (Rule::DeadLetters, settings.dead_letters_per_minute > 0),
        (Rule::BridgeBehind, settings.bridge_lag_messages > 0),
        (Rule::ClockFailing, settings.clock_failing),
    ];
    for (rule, on) in rules {
        if !on {
            continue;
        }
        let read = async {
            match rule {
                Rule::ProviderDown => providers_down(pool, settings).await,
                Rule::QueueBehind => queues_behind(pool, settings).await,
                Rule::DeadLetters => queues_dead_lettering(pool, settings).await,
                Rule::BridgeBehind => partitions_behind(pool, settings).await,
                Rule::ClockFailing => schedules_failing(pool).await,
            }
        };
        let found = tokio::time::timeout(RULE_DEADLINE, read)
            .await
            .unwrap_or_else(|_| Err(AlertError::Slow(RULE_DEADLINE)));
        match found {
            Ok(mut found) => holding.conditions.append(&mut found),
            Err(error) => {
                let rule = rule.name();
                tracing::warn!(rule, %error, "an alert rule could not be evaluated; its alerts keep their state");
                holding.unread.push(rule);
            }
        }
    }
    holding
}

/// `provider_down`: a provider whose circuit is open (or half-open) on a live worker.
async fn providers_down(
    pool: &PgPool,
    settings: &AlertSettings,
) -> Result<Vec<Condition>, AlertError> {
    let live: HashSet<uuid::Uuid> = crate::queue::admin::list_workers(pool)
        .await?
        .into_iter()
        .map(|worker| worker.id)
        .collect();
    let mut open: BTreeMap<String, (usize, Option<String>)> = BTreeMap::new();
    for circuit in crate::channels::circuits::list(pool).await? {
        // Half-open counts as down: the breaker passes through it at every probe while the provider stays down.
        if live.contains(&circuit.worker_id) && circuit.state.as_str() != "closed" {
            let entry = open.entry(circuit.provider).or_default();
            entry.0 += 1;
            if entry.1.is_none() {
                entry.1 = circuit.last_error;
            }
        }
    }
    let found: Vec<Condition> = open
        .into_iter()
        .map(|(provider, (workers, error))| Condition {
            rule: "provider_down",
            summary: format!(
                "provider {provider}: circuit open on {workers} worker(s); last error: {}",
                error.as_deref().unwrap_or("none recorded")
            ),
            subject: provider,
            hold_for: settings.circuit_open_for,
            sustain_only: false,
        })
        .collect();
    Ok(found)
}

/// `queue_behind`: a queue whose oldest available job has waited too long (fresh counts only).
async fn queues_behind(
    pool: &PgPool,
    settings: &AlertSettings,
) -> Result<Vec<Condition>, AlertError> {
    let mut found = Vec::new();
    let limit = settings.oldest_available.as_secs_f64();
    for queue in crate::queue::stats::read(pool).await? {
        // Counts nobody refreshed for a minute (no leader, or one cut off) say nothing about now.
        if queue.age_secs > STALE_STATS_SECS {
            continue;
        }
        if let Some(oldest) = queue.oldest_available_secs.filter(|secs| *secs >= limit) {
            found.push(Condition {
                rule: "queue_behind",
                summary: format!(
                    "queue {}: {} jobs available, the oldest due {oldest:.0}s ago",
                    queue.queue, queue.available
                ),
                subject: queue.queue,
                hold_for: Duration::ZERO,
                sustain_only: false,
            });
        }
    }
    Ok(found)
}

/// `dead_letters`: a queue that dead-lettered more than the threshold in the last minute.
async fn queues_dead_lettering(
    pool: &PgPool,
    settings: &AlertSettings,
) -> Result<Vec<Condition>, AlertError> {
    let mut found = Vec::new();
    let window = Duration::from_secs(60);
    for (queue, count) in crate::queue::admin::recent_dead_letters(pool, window).await? {
        // Once firing, the alert holds until the rate falls to half the threshold.
        let sustain_only = count <= settings.dead_letters_per_minute;
        if count > settings.dead_letters_per_minute / 2 {
            found.push(Condition {
                rule: "dead_letters",
                summary: format!(
                    "queue {queue}: {count} jobs dead-lettered in the last minute (threshold {})",
                    settings.dead_letters_per_minute
                ),
                subject: queue,
                hold_for: Duration::ZERO,
                sustain_only,
            });
        }
    }
    Ok(found)
}

/// `bridge_behind`: a Kafka partition whose recorded lag passed the threshold.
async fn partitions_behind(
    pool: &PgPool,
    settings: &AlertSettings,
) -> Result<Vec<Condition>, AlertError> {
    let mut found = Vec::new();
    for offset in crate::bridge::stored_offsets(pool).await? {
        let Some(lag) = offset.lag.filter(|lag| *lag > settings.bridge_lag_messages) else {
            continue;
        };
        found.push(Condition {
            rule: "bridge_behind",
            summary: format!(
                "group {} on {}[{}]: {lag} messages behind, its offset stored {:.0}s ago",
                offset.group_id, offset.topic, offset.partition, offset.idle_secs
            ),
            subject: format!("{}/{}/{}", offset.group_id, offset.topic, offset.partition),
            hold_for: Duration::ZERO,
            sustain_only: false,
        });
    }
    Ok(found)
}

/// `clock_failing`: a schedule whose latest tick could not fire, or whose job is failing.
async fn schedules_failing(pool: &PgPool) -> Result<Vec<Condition>, AlertError> {
    let mut found = Vec::new();
    for (schedule, why) in crate::clock::schedules::failing(pool).await? {
        found.push(Condition {
            rule: "clock_failing",
            summary: format!("schedule {schedule}: {why}"),
            subject: schedule,
            hold_for: Duration::ZERO,
            sustain_only: false,
        });
    }
    Ok(found)
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error(transparent)]
    Clock(#[from] crate::clock::ClockError),
    #[error("no answer in {0:?}")]
    Slow(Duration),
}

/// A row of `herald_alerts`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Alert {
    pub rule: String,
    pub subject: String,
    pub state: String,
    pub summary: String,
    pub since: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub notified: bool,
}

/// Every alert on record (pending, firing, and resolved within the last day), for `herald status`.
pub async fn list(pool: &PgPool) -> Result<Vec<Alert>, sqlx::Error> {
    sqlx::query_as(
        "SELECT rule, subject, state, summary, since, fired_at, resolved_at, notified FROM herald_alerts \
         ORDER BY state = 'resolved', rule, subject LIMIT 1000",
    )
    .fetch_all(pool)
    .await
}

/// Moves each row by what holds now (`holding`), then sends what has not been sent. Returns the notifications
/// sent, as (rule, subject, state).
pub async fn evaluate(
    pool: &PgPool,
    channels: &Channels,
    settings: &AlertSettings,
    holding: &Holding,
) -> Result<Vec<(String, String, String)>, AlertError> {
    // Under the batch writers' deadline: a lock held elsewhere cannot hold the evaluator forever.
    let mut tx = crate::db::begin_bounded(pool, &[]).await?;
    let rows: Vec<Alert> = sqlx::query_as(
        "SELECT rule, subject, state, summary, since, fired_at, resolved_at, notified FROM herald_alerts \
         ORDER BY rule, subject FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await?;
    let row_of = |c: &Condition| {
        rows.iter()
            .find(|r| r.rule == c.rule && r.subject == c.subject)
    };
    // A sustaining condition counts only for an alert that fires (hysteresis, see `Condition::sustain_only`).
    let conditions: Vec<&Condition> = holding
        .conditions
        .iter()
        .filter(|c| !c.sustain_only || row_of(c).is_some_and(|r| r.state == "firing"))
        .collect();
    for condition in &conditions {
        let row = row_of(condition);
        // A resolve not yet announced is announced before the next episode starts: otherwise the operator would
        // have seen FIRING and never RESOLVED.
        if row.is_some_and(|r| r.state == "resolved" && !r.notified) {
            continue;
        }
        let since = match row {
            Some(r) if r.state != "resolved" => r.since,
            _ => now,
        };
        let held = (now - since).to_std().unwrap_or_default();
        let state = if held >= condition.hold_for {
            "firing"
        } else {
            "pending"
        };
        let already_firing = row.is_some_and(|r| r.state == "firing");
        sqlx::query(
            "INSERT INTO herald_alerts (rule, subject, state, summary, since, fired_at, resolved_at, notified) \
             VALUES ($1, $2, $3, $4, $5, CASE WHEN $3 = 'firing' THEN $6 END, NULL, $3 = 'pending') \
             ON CONFLICT (rule, subject) DO UPDATE \
             SET state = excluded.state, summary = excluded.summary, since = excluded.since, \
                 fired_at = coalesce(CASE WHEN herald_alerts.state = 'firing' THEN herald_alerts.fired_at END, \
                                     excluded.fired_at), \
                 resolved_at = NULL, \
                 notified = CASE WHEN $7 THEN herald_alerts.notified ELSE excluded.notified END",
        )
        .bind(condition.rule)
        .bind(&condition.subject)
        .bind(state)
        .bind(&condition.summary)
        .bind(since)
        .bind(now)
        .bind(already_firing)
        .execute(&mut *tx)
        .await?;
    }
    for row in &rows {
        let holds = conditions
            .iter()
            .any(|c| c.rule == row.rule && c.subject == row.subject);
        if holds || holding.unread.contains(&row.rule.as_str()) {
            continue;
        }
        match row.state.as_str() {
            "pending" => {
                sqlx::query("DELETE FROM herald_alerts WHERE rule = $1 AND subject = $2")
                    .bind(&row.rule)
                    .bind(&row.subject)
                    .execute(&mut *tx)
                    .await?;
            }
            // Never announced (its send kept failing): nothing to resolve, as for a pending one.
            "firing" if !row.notified => {
                sqlx::query("DELETE FROM herald_alerts WHERE rule = $1 AND subject = $2")
                    .bind(&row.rule)
                    .bind(&row.subject)
                    .execute(&mut *tx)
                    .await?;
            }
            "firing" => {
                sqlx::query(
                    "UPDATE herald_alerts SET state = 'resolved', resolved_at = $3, notified = false \
                     WHERE rule = $1 AND subject = $2",
                )
                .bind(&row.rule)
                .bind(&row.subject)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            _ => {}
        }
    }
    // Resolved alerts are kept a day (for `herald status`), then forgotten.
    sqlx::query(
        "DELETE FROM herald_alerts WHERE state = 'resolved' AND notified \
         AND resolved_at < now() - interval '1 day'",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    notify(pool, channels, settings).await
}

/// A notification to send: a change not announced yet, or (`reminder`) a firing alert announced too long ago.
#[derive(sqlx::FromRow)]
struct Pending {
    #[sqlx(flatten)]
    alert: Alert,
    reminder: bool,
    /// When the last notification of it went out.
    last_sent: DateTime<Utc>,
}

/// Sends each change not yet sent, and each reminder due (a firing alert announced longer ago than
/// `alerts.remind_every_secs`), and records them sent. Returns (rule, subject, what was sent: `firing`,
/// `reminder`, `resolved`).
async fn notify(
    pool: &PgPool,
    channels: &Channels,
    settings: &AlertSettings,
) -> Result<Vec<(String, String, String)>, AlertError> {
    // $1: the reminder period in seconds (0: none).
    let unsent: Vec<Pending> = sqlx::query_as(
        "SELECT rule, subject, state, summary, since, fired_at, resolved_at, notified, notified AS reminder, \
                coalesce(sent_at, now()) AS last_sent FROM herald_alerts \
         WHERE (NOT notified AND state IN ('firing', 'resolved')) \
            OR ($1 > 0 AND notified AND state = 'firing' AND sent_at < now() - make_interval(secs => $1)) \
         ORDER BY rule, subject LIMIT $2",
    )
    .bind(settings.remind_every.as_secs_f64())
    .bind(MAX_SENDS_PER_PASS)
    .fetch_all(pool)
    .await?;
    let Some(kind) = ChannelKind::parse(&settings.channel) else {
        return Ok(Vec::new());
    };
    let Some(channel) = channels.get(kind) else {
        return Ok(Vec::new());
    };
    let mut sent = Vec::new();
    for Pending {
        alert,
        reminder,
        last_sent,
    } in unsent
    {
        let headline = format!(
            "[herald] {}: {} {}",
            match (alert.state.as_str(), reminder) {
                ("firing", true) => "STILL FIRING",
                ("firing", false) => "FIRING",
                _ => "RESOLVED",
            },
            alert.rule,
            alert.subject
        );
        // Each adapter takes the fields its channel has: a subject or title and a body (Slack shows the title in
        // bold above the body), or the text alone (SMS).
        let text = format!("{headline}\n{}", alert.summary);
        let content: BTreeMap<String, String> = [
            ("subject", headline.as_str()),
            ("title", headline.as_str()),
            ("body", alert.summary.as_str()),
            ("text", text.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // One key per notification: a reminder's names the one before it, so each reminder is sent once.
        let stamp = if reminder {
            last_sent
        } else {
            alert.fired_at.or(alert.resolved_at).unwrap_or(alert.since)
        };
        let message = Message {
            channel: kind,
            providers: Vec::new(),
            to: settings.to.clone(),
            content,
            idempotency_key: format!(
                "herald-alert:{}:{}:{}{}:{}",
                alert.rule,
                alert.subject,
                alert.state,
                if reminder { "-reminder" } else { "" },
                stamp.timestamp_micros()
            ),
        };
        let result = tokio::time::timeout(SEND_DEADLINE, channel.send(&message))
            .await
            .map_or_else(
                |_| Err(format!("no answer in {SEND_DEADLINE:?}")),
                |report| report.result.map_err(|e| e.to_string()),
            );
        match result {
            Ok(_) => {
                sqlx::query(
                    "UPDATE herald_alerts SET notified = true, sent_at = now() \
                     WHERE rule = $1 AND subject = $2 AND state = $3",
                )
                .bind(&alert.rule)
                .bind(&alert.subject)
                .bind(&alert.state)
                .execute(pool)
                .await?;
                let what = if reminder {
                    "reminder".to_string()
                } else {
                    alert.state
                };
                sent.push((alert.rule, alert.subject, what));
            }
            Err(error) => {
                tracing::warn!(rule = %alert.rule, subject = %alert.subject, %error, "could not send an alert; will retry")
            }
        }
    }
    Ok(sent)
}

/// Firing alerts by rule, for Prometheus alert rules and dashboards (exported by the evaluator).
pub static FIRING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    crate::metrics::int_gauge_vec(
        "alerts_firing",
        "herald's own alerts firing now, by rule (exported by the process that evaluates them; take the max)",
        &["rule"],
    )
});

/// Every metric above, for the process's registry.
pub fn all() -> Vec<Box<dyn Collector>> {
    vec![Box::new(FIRING.clone())]
}

/// Sets [`FIRING`] from the table.
async fn export_firing(pool: &PgPool) -> Result<(), AlertError> {
    let firing: Vec<(String, i64)> = sqlx::query_as(
        "SELECT rule, count(*) FROM herald_alerts WHERE state = 'firing' GROUP BY rule",
    )
    .fetch_all(pool)
    .await?;
    FIRING.reset();
    for (rule, count) in firing {
        FIRING.with_label_values(&[&rule]).set(count);
    }
    Ok(())
}

/// Takes part in the evaluator election and, while leading, evaluates every `alerts.every_secs` until `shutdown`.
pub async fn run(
    pool: PgPool,
    channels: Channels,
    settings: AlertSettings,
    shutdown: CancellationToken,
) {
    // One pass may not outlast a minute (reads stuck behind a lock, a provider that never answers): the next
    // pass starts over.
    let pass_limit = Duration::from_secs(60);
    // The lock's session is touched once per loop: it must outlive the longest loop (a pass cut off at its limit,
    // then the wait), or a slow pass would lose the lock to a second evaluator while it is still sending.
    let idle_limit =
        (settings.every * 3).max(pass_limit + settings.every + Duration::from_secs(10));
    let mut lock = SessionLock::new(LOCK_CLASS, 0, idle_limit);
    loop {
        if lock.hold(&pool).await {
            let pass = async {
                let holding = conditions(&pool, &settings).await;
                let sent = evaluate(&pool, &channels, &settings, &holding).await?;
                export_firing(&pool).await?;
                Ok::<_, AlertError>(sent)
            };
            match tokio::time::timeout(pass_limit, pass).await {
                Ok(Ok(sent)) if !sent.is_empty() => tracing::info!(?sent, "alerts sent"),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "evaluating alerts failed"),
                Err(_) => tracing::warn!("evaluating alerts took over a minute; abandoned"),
            }
        } else {
            // Only the evaluator exports the firing alerts (the others read 0: take the max).
            FIRING.reset();
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(settings.every) => {}
        }
    }
}
