//! Deliveries: one row per (run, node, recipient, channel) recording what happened to one message.
//!
//! **No double send.** Before calling any provider, the sender marks the delivery `sending` in a committed
//! transaction; after the call it records the result. A retry of the node therefore finds one of:
//! * `sent` / `delivered` / `bounced`: the message went out; the node completes without sending again;
//! * `sending`: a worker died (or lost its lease) in the middle of a provider call, and the provider may or may
//!   not have accepted the message. herald chooses at-most-once here: the delivery becomes `unknown` (visible
//!   in the run's deliveries, with a warning in the log), the node completes with outcome `unknown`, and the
//!   run goes on. The message is never re-sent automatically, so a kill never doubles a notification; the
//!   price is that a message the provider never received stays unsent unless an operator acts on `unknown`;
//! * `unknown`: as above, and it stays so: no later attempt sends it either;
//! * `queued` / `failed`: nothing went out (a definite failure), or an operator re-ran the node (a run retry):
//!   send.
//!
//! A provider timeout counts as transient (the provider's own guidance is to retry), so a provider that
//! accepted a message but answered too late can receive it twice; that window is the provider timeout, and it is
//! the one place where herald prefers a duplicate over a loss.
//!
//! **Suppression.** An address on the suppression list (a bounce, an unsubscribe, an unregistered device, from a
//! send's answer or a provider callback) is never sent to: the delivery becomes `suppressed` and the node
//! completes with that outcome.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

use super::sql;
use super::{ChannelKind, DeliveryStatus, SendError, SendReport, Sent};
use crate::audit::{self, Actor};
use crate::coalesce::{Coalescer, whole_or_each};
use crate::db;

/// Which delivery: one message of one node of one run.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryKey<'a> {
    pub run_id: i64,
    pub node: &'a str,
    pub recipient: &'a str,
    pub channel: ChannelKind,
    /// The recipient profile the address was read from, if it was (what an erase finds).
    pub recipient_id: Option<&'a str>,
    /// The run's workflow and when it was triggered, recorded when the delivery is created (for the daily
    /// rollups: counts per workflow, and trigger -> provider accept latency).
    pub workflow: &'a str,
    pub triggered_at: DateTime<Utc>,
}

/// What the sender must do, decided while the delivery row is locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Marked `sending` (committed): call the providers.
    Send { id: i64 },
    /// It went out before: do not send again.
    AlreadySent { id: i64, sent: Sent },
    /// The recipient is suppressed: do not send.
    Suppressed { id: i64, reason: String },
    /// A previous attempt died mid-send: do not send again (the node completes as `unknown`).
    OutcomeUnknown { id: i64 },
}

/// `BEGIN_DELIVERIES`' answer: the delivery's new status, the provider that accepted it if it went out, and
/// whether its recipient is suppressed.
#[derive(sqlx::FromRow)]
struct BegunDelivery {
    id: i64,
    status: DeliveryStatus,
    provider: Option<String>,
    provider_message_id: Option<String>,
    suppressed_reason: Option<String>,
}

/// Decides and records what a send attempt does with the delivery (see the module docs). One send on its own;
/// a worker's concurrent sends go through [`DeliveryBatches`].
pub async fn begin(pool: &PgPool, key: DeliveryKey<'_>) -> Result<Begin, sqlx::Error> {
    let mut decided = begin_many(pool, &[key.to_owned()]).await?;
    decided.pop().ok_or(sqlx::Error::RowNotFound)
}

/// [`begin`] for many sends: one statement and one (synchronous) commit for all of them, so every delivery is
/// durably `sending` before its provider is called. Answers one decision per key, in order.
pub async fn begin_many(
    pool: &PgPool,
    keys: &[OwnedDeliveryKey],
) -> Result<Vec<Begin>, sqlx::Error> {
    let mut tx = db::begin_bounded(pool, &[]).await?;
    let begun: Vec<BegunDelivery> = sqlx::query_as(sql::BEGIN_DELIVERIES)
        .bind(keys.iter().map(|k| k.run_id).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.node.as_str()).collect::<Vec<_>>())
        .bind(
            keys.iter()
                .map(|k| k.recipient.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(keys.iter().map(|k| k.channel.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.workflow.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.triggered_at).collect::<Vec<_>>())
        .bind(
            keys.iter()
                .map(|k| k.recipient_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
    if begun.len() != keys.len() {
        return Err(sqlx::Error::Protocol(format!(
            "began {} deliveries for {} sends",
            begun.len(),
            keys.len()
        )));
    }
    let decisions = begun
        .into_iter()
        .map(decide)
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit().await?;
    Ok(decisions)
}

/// Records a send not made on purpose: status `skipped`, `reason` in its error (see `docs/recipients.md` for the
/// reasons). Idempotent: a second call for the same key answers the same row. Answers its id.
pub async fn skip(pool: &PgPool, key: DeliveryKey<'_>, reason: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sql::SKIP_DELIVERY)
        .bind(key.run_id)
        .bind(key.node)
        .bind(key.recipient)
        .bind(key.channel.as_str())
        .bind(key.workflow)
        .bind(key.triggered_at)
        .bind(reason)
        .bind(key.recipient_id)
        .fetch_one(pool)
        .await
}

/// Scrubs one batch (at most `limit`) of an erased recipient's deliveries, those resolved from their profile
/// (`recipient_id`) or made by `runs` (see `sql::ERASE_DELIVERIES`; `in_flight` takes those still `sending` too); answers each
/// scrubbed row's (run, node); none when nothing is left.
pub async fn erase_batch(
    conn: &mut sqlx::PgConnection,
    recipient_id: Option<&str>,
    runs: &[i64],
    limit: i64,
    in_flight: bool,
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as(sql::ERASE_DELIVERIES)
        .bind(recipient_id)
        .bind(runs)
        .bind(limit)
        .bind(in_flight)
        .fetch_all(conn)
        .await
}

/// A [`DeliveryKey`] that owns its strings, to travel to a batch.
#[derive(Debug, Clone)]
pub struct OwnedDeliveryKey {
    pub run_id: i64,
    pub node: String,
    pub recipient: String,
    pub channel: ChannelKind,
    pub recipient_id: Option<String>,
    pub workflow: String,
    pub triggered_at: DateTime<Utc>,
}

impl DeliveryKey<'_> {
    pub fn to_owned(&self) -> OwnedDeliveryKey {
        OwnedDeliveryKey {
            run_id: self.run_id,
            node: self.node.to_string(),
            recipient: self.recipient.to_string(),
            channel: self.channel,
            recipient_id: self.recipient_id.map(str::to_string),
            workflow: self.workflow.to_string(),
            triggered_at: self.triggered_at,
        }
    }
}

/// What the status `BEGIN_DELIVERIES` moved a delivery to tells the sender to do.
fn decide(begun: BegunDelivery) -> Result<Begin, sqlx::Error> {
    use DeliveryStatus as S;
    let BegunDelivery {
        id,
        status,
        provider,
        provider_message_id,
        suppressed_reason,
    } = begun;
    match (status, suppressed_reason) {
        (S::Sent | S::Delivered | S::Bounced, _) => {
            let sent = Sent {
                provider: provider.unwrap_or_default(),
                provider_message_id,
            };
            Ok(Begin::AlreadySent { id, sent })
        }
        (S::Suppressed, Some(reason)) => Ok(Begin::Suppressed { id, reason }),
        (S::Unknown, _) => Ok(Begin::OutcomeUnknown { id }),
        (S::Sending, _) => Ok(Begin::Send { id }),
        (other, _) => Err(sqlx::Error::Protocol(format!(
            "a delivery began as `{}`",
            other.as_str()
        ))),
    }
}

/// A send's result, ready to record on its delivery.
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: i64,
    pub channel: ChannelKind,
    pub recipient: String,
    status: DeliveryStatus,
    provider: Option<String>,
    message_id: Option<String>,
    attempts: serde_json::Value,
    error: Option<String>,
}

impl Finished {
    /// What `report` means for delivery `id`.
    pub fn new(id: i64, key: DeliveryKey<'_>, report: &SendReport) -> Self {
        let (status, provider, message_id, error) = match &report.result {
            Ok(sent) => (
                DeliveryStatus::Sent,
                Some(sent.provider.clone()),
                sent.provider_message_id.clone(),
                None,
            ),
            Err(err @ (SendError::Transient { .. } | SendError::Unavailable { .. })) => {
                (DeliveryStatus::Queued, None, None, Some(err.to_string()))
            }
            Err(err @ SendError::Permanent(_)) => {
                (DeliveryStatus::Failed, None, None, Some(err.to_string()))
            }
            Err(err @ SendError::Suppress(_)) => (
                DeliveryStatus::Suppressed,
                None,
                None,
                Some(err.to_string()),
            ),
        };
        let provider = provider.or_else(|| report.attempts.last().map(|a| a.provider.clone()));
        Self {
            id,
            channel: key.channel,
            recipient: key.recipient.to_string(),
            status,
            provider,
            message_id,
            attempts: serde_json::to_value(&report.attempts).unwrap_or_default(),
            error,
        }
    }
}

/// Records a send's result on its delivery (and the recipient on the suppression list if the provider said so).
pub async fn finish(
    pool: &PgPool,
    id: i64,
    key: DeliveryKey<'_>,
    report: &SendReport,
) -> Result<(), sqlx::Error> {
    finish_many(pool, &[Finished::new(id, key, report)]).await
}

/// [`finish`] for many sends: one statement (two when a provider asked to suppress a recipient) and one commit.
pub async fn finish_many(pool: &PgPool, finished: &[Finished]) -> Result<(), sqlx::Error> {
    let mut tx = db::begin_bounded(pool, &[]).await?;
    finish_in(&mut tx, &finished.iter().collect::<Vec<_>>()).await?;
    tx.commit().await
}

/// Records sends' results inside the caller's transaction (the workflow engine records a successful send with
/// its node's step, in one commit).
pub async fn finish_in(
    conn: &mut sqlx::PgConnection,
    finished: &[&Finished],
) -> Result<(), sqlx::Error> {
    if finished.is_empty() {
        return Ok(());
    }
    sqlx::query(sql::FINISH_DELIVERIES)
        .bind(finished.iter().map(|f| f.id).collect::<Vec<_>>())
        .bind(
            finished
                .iter()
                .map(|f| f.status.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            finished
                .iter()
                .map(|f| f.provider.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            finished
                .iter()
                .map(|f| f.message_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(finished.iter().map(|f| &f.attempts).collect::<Vec<_>>())
        .bind(
            finished
                .iter()
                .map(|f| f.error.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    let suppressed: Vec<&Finished> = finished
        .iter()
        .copied()
        .filter(|f| f.status == DeliveryStatus::Suppressed)
        .collect();
    if !suppressed.is_empty() {
        sqlx::query(sql::SUPPRESS_MANY)
            .bind(
                suppressed
                    .iter()
                    .map(|f| f.channel.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                suppressed
                    .iter()
                    .map(|f| f.recipient.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                suppressed
                    .iter()
                    .map(|f| f.error.as_deref().unwrap_or(""))
                    .collect::<Vec<_>>(),
            )
            .bind(
                suppressed
                    .iter()
                    .map(|f| f.provider.as_deref())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Most sends one batch records.
const MAX_BATCH: usize = 256;

type Began = Result<Begin, std::sync::Arc<sqlx::Error>>;
type Recorded = Result<(), std::sync::Arc<sqlx::Error>>;

/// Group commit for deliveries: a process's concurrent sends record their start ([`begin_many`]) and their
/// result ([`finish_many`]) together, as node jobs do their steps (`workflow::steps`). Each caller still waits
/// for its own commit, so "begun" means durably `sending` before the provider is called, exactly as one at a
/// time; a lone send goes out at once. A batch the database refuses (one delivery twice in a batch, a
/// deadlock) is retried one send at a time, so one send's problem never fails another's.
pub struct DeliveryBatches {
    begins: Coalescer<OwnedDeliveryKey, Began>,
    finishes: Coalescer<Finished, Recorded>,
}

impl DeliveryBatches {
    /// Starts the background tasks (inside the runtime); they stop when this is dropped. `pool` must commit
    /// synchronously: these records are what stops a second send after a crash.
    pub fn start(pool: PgPool) -> Self {
        let reader = pool.clone();
        let begins = Coalescer::start(MAX_BATCH, 2, move |keys: Vec<OwnedDeliveryKey>| {
            let pool = reader.clone();
            async move {
                let pool = &pool;
                whole_or_each("delivery starts", &keys, |batch| begin_many(pool, batch)).await
            }
        });
        let finishes = Coalescer::start(MAX_BATCH, 2, move |finished: Vec<Finished>| {
            let pool = pool.clone();
            async move {
                let pool = &pool;
                whole_or_each("delivery results", &finished, |batch| async move {
                    finish_many(pool, batch)
                        .await
                        .map(|()| vec![(); batch.len()])
                })
                .await
            }
        });
        Self { begins, finishes }
    }

    /// [`begin`], in the next batch.
    pub async fn begin(&self, key: DeliveryKey<'_>) -> Began {
        self.begins.call(key.to_owned()).await.map_err(stopped)?
    }

    /// [`finish`], in the next batch.
    pub async fn finish(&self, finished: Finished) -> Recorded {
        self.finishes.call(finished).await.map_err(stopped)?
    }
}

fn stopped(_: crate::coalesce::Stopped) -> std::sync::Arc<sqlx::Error> {
    std::sync::Arc::new(sqlx::Error::PoolClosed)
}

/// Adds an address to the suppression list (whether it was not on it yet): provider feedback (a bounce, a
/// complaint), inside the callback's transaction. An operator's addition goes through [`add_suppression`], which
/// is audited.
pub async fn suppress<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    channel: ChannelKind,
    address: &str,
    reason: &str,
    provider: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(sql::SUPPRESS)
        .bind(channel.as_str())
        .bind(address)
        .bind(reason)
        .bind(provider)
        .execute(executor)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The longest address the suppression list takes, in characters: far above any email address, phone number,
/// device token or push endpoint, and short enough for the list's primary key index (a longer one failed the
/// insert).
pub const MAX_ADDRESS_CHARS: usize = 512;

/// Whether an operator's address can go on the suppression list: 1 to [`MAX_ADDRESS_CHARS`] characters, no
/// control characters, not only white space.
pub fn valid_address(address: &str) -> bool {
    address.chars().count() <= MAX_ADDRESS_CHARS
        && !address.chars().any(char::is_control)
        && !address.chars().all(char::is_whitespace)
}

/// An operator adds an address to the suppression list (audited as `suppression.add`).
pub async fn add_suppression(
    pool: &PgPool,
    actor: &Actor,
    channel: ChannelKind,
    address: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Already suppressed: its reason stays, and nothing changed to audit.
    if suppress(&mut *tx, channel, address, reason, None).await? {
        let target = format!("{}:{address}", channel.as_str());
        let details = json!({ "reason": reason });
        audit::record(&mut *tx, actor, "suppression.add", &target, details).await?;
    }
    tx.commit().await
}

/// An operator removes an address from the suppression list; whether it was there (audited as
/// `suppression.remove` when it was).
pub async fn unsuppress(
    pool: &PgPool,
    actor: &Actor,
    channel: ChannelKind,
    address: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(sql::UNSUPPRESS)
        .bind(channel.as_str())
        .bind(address)
        .execute(&mut *tx)
        .await?;
    let removed = done.rows_affected() > 0;
    if removed {
        let target = format!("{}:{address}", channel.as_str());
        audit::record(&mut *tx, actor, "suppression.remove", &target, json!({})).await?;
    }
    tx.commit().await?;
    Ok(removed)
}

/// One suppressed address.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Suppression {
    pub channel: String,
    pub address: String,
    pub reason: String,
    pub provider: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub async fn list_suppressions(pool: &PgPool, limit: i64) -> Result<Vec<Suppression>, sqlx::Error> {
    sqlx::query_as(sql::LIST_SUPPRESSIONS)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// A delivery as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Delivery {
    pub id: i64,
    pub run_id: i64,
    pub node_id: String,
    pub recipient: String,
    pub channel: String,
    pub status: DeliveryStatus,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    /// Every provider call: `{provider, outcome, reason, latency_ms}`.
    #[schema(value_type = Vec<Object>)]
    pub attempts: serde_json::Value,
    /// Every status change: `{status, at, source, reason}`.
    #[schema(value_type = Vec<Object>)]
    pub history: serde_json::Value,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn for_run(pool: &PgPool, run_id: i64) -> Result<Vec<Delivery>, sqlx::Error> {
    sqlx::query_as(sql::RUN_DELIVERIES)
        .bind(run_id)
        .fetch_all(pool)
        .await
}

/// What [`search`] looks for; every field narrows it, none set lists the newest.
#[derive(Debug, Clone, Default)]
pub struct DeliverySearch<'a> {
    /// The recipients the deliveries were resolved from (profile ids; an email shared by profiles names several).
    pub recipient_ids: Option<&'a [String]>,
    pub status: Option<DeliveryStatus>,
    pub channel: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Older than this id (the previous page's last).
    pub before_id: Option<i64>,
    /// At most 500.
    pub limit: i64,
}

/// How long a search may read before it gives up: a filter that matches nothing recent walks the whole table,
/// and a support screen must not hold a connection for that.
pub const SEARCH_BUDGET: &str = "5s";

/// Deliveries matching `search`, newest first. A search that would read for longer than [`SEARCH_BUDGET`] is
/// cancelled by the database (see `db::cancelled_for_time`).
pub async fn search(
    pool: &PgPool,
    search: &DeliverySearch<'_>,
) -> Result<Vec<Delivery>, sqlx::Error> {
    let mut tx = crate::db::begin_within(pool, SEARCH_BUDGET).await?;
    let found = sqlx::query_as(sql::SEARCH_DELIVERIES)
        .bind(search.recipient_ids)
        .bind(search.status.map(DeliveryStatus::as_str))
        .bind(search.channel)
        .bind(search.provider)
        .bind(search.since)
        .bind(search.until)
        .bind(search.before_id)
        .bind(search.limit.clamp(1, 500))
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(found)
}

/// The suppressions among `addresses` (channel, address): why sends to a recipient's addresses are refused.
pub async fn suppressions_of(
    pool: &PgPool,
    addresses: &[(String, String)],
) -> Result<Vec<Suppression>, sqlx::Error> {
    let (channels, addresses): (Vec<&str>, Vec<&str>) = addresses
        .iter()
        .map(|(c, a)| (c.as_str(), a.as_str()))
        .unzip();
    sqlx::query_as(sql::SUPPRESSIONS_OF)
        .bind(channels)
        .bind(addresses)
        .fetch_all(pool)
        .await
}

/// A provider's report about a message it accepted (a delivery callback), normalized.
#[derive(Debug, Clone)]
pub struct CallbackUpdate<'a> {
    pub provider: &'a str,
    /// The provider's own id for this event: a second callback with the same key changes nothing.
    pub event_key: &'a str,
    pub provider_message_id: &'a str,
    /// The status the event implies, if any (opens and clicks imply none).
    pub status: Option<DeliveryStatus>,
    pub recipient: Option<&'a str>,
    /// The recipient must not be sent to again (hard bounce, unsubscribe, complaint).
    pub suppress: bool,
    pub reason: Option<&'a str>,
}

/// What applying a callback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// This event was applied before.
    Duplicate,
    /// Applied; `moved` says whether a delivery's status changed (an older status never replaces a newer one).
    Applied { moved: bool },
}

/// Applies one callback event in one transaction: dedupe by event key, move the delivery forward only, and
/// suppress the recipient if the event says so.
pub async fn apply_callback(
    pool: &PgPool,
    update: &CallbackUpdate<'_>,
) -> Result<Applied, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let fresh = sqlx::query(sql::RECORD_CALLBACK_EVENT)
        .bind(update.provider)
        .bind(update.event_key)
        .fetch_optional(&mut *tx)
        .await?;
    if fresh.is_none() {
        return Ok(Applied::Duplicate);
    }
    let mut moved = false;
    if let Some(status) = update.status {
        let changed = sqlx::query(sql::APPLY_CALLBACK_STATUS)
            .bind(update.provider)
            .bind(update.provider_message_id)
            .bind(status.as_str())
            .bind(update.reason)
            .execute(&mut *tx)
            .await?;
        moved = changed.rows_affected() > 0;
    }
    if update.suppress {
        suppress_callback_recipient(&mut tx, update).await?;
    }
    tx.commit().await?;
    Ok(Applied::Applied { moved })
}

/// The address to suppress is the recipient of the delivery the event is about. An event about a message herald
/// did not send suppresses nothing, whatever recipient it names: a forged or misrouted callback must not put
/// arbitrary addresses on the suppression list.
async fn suppress_callback_recipient(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    update: &CallbackUpdate<'_>,
) -> Result<(), sqlx::Error> {
    let delivery: Option<(String, String)> = sqlx::query_as(sql::DELIVERY_BY_PROVIDER_ID)
        .bind(update.provider)
        .bind(update.provider_message_id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some((channel, recipient)) = delivery else {
        tracing::info!(
            provider = update.provider,
            message = update.provider_message_id,
            "callback asks to suppress the recipient of a message herald did not send; ignored"
        );
        return Ok(());
    };
    if let Some(channel) = ChannelKind::parse(&channel) {
        let reason = update.reason.unwrap_or("reported by the provider");
        suppress(
            &mut **tx,
            channel,
            &recipient,
            reason,
            Some(update.provider),
        )
        .await?;
    }
    Ok(())
}
