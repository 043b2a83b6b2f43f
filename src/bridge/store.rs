//! Writing a batch: the jobs, runs, events and dead letters its messages produce, and the partitions' next
//! offsets, in one transaction. This is what makes the bridge exactly-once into Postgres: either all of it
//! commits, and the offsets say so, or none of it does and the messages are read again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::BridgeError;
use super::message::RawMessage;
use super::routes::{Routed, Router};
use super::sql;
use crate::audit::{self, Actor};
use crate::queue::{self, Enqueued, JobDefaults, NewJob};
use crate::recipients::{Profile, RecipientId, store};
use crate::workflow::{Engine, NewEvent, WorkflowError};

/// What a batch produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchOutcome {
    pub jobs: usize,
    pub runs: usize,
    pub events: usize,
    /// Recipient profiles created or replaced.
    pub recipients: usize,
    /// Jobs, runs or events whose idempotency key or event id was already taken (the message was seen before).
    pub duplicates: usize,
    /// Messages dead-lettered, per topic.
    pub dead_lettered: BTreeMap<String, usize>,
    /// Messages below the offset Postgres already holds for their partition: another bridge stored them first.
    pub stale: usize,
    /// The next offset now stored for each partition the batch advanced.
    pub next_offsets: Vec<(String, i32, i64)>,
}

/// Writes batches for one consumer group.
pub struct BatchWriter {
    pool: PgPool,
    group: String,
    router: Router,
    engine: Arc<Engine>,
    defaults: JobDefaults,
}

type Partition = (String, i32);

impl BatchWriter {
    pub fn new(
        pool: PgPool,
        group: String,
        router: Router,
        engine: Arc<Engine>,
        defaults: JobDefaults,
    ) -> Self {
        Self {
            pool,
            group,
            router,
            engine,
            defaults,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Writes one batch in one transaction. On error nothing was stored; the caller retries the same batch.
    pub async fn write(&self, batch: &[RawMessage]) -> Result<BatchOutcome, BridgeError> {
        self.store(batch, None).await
    }

    /// Stores a batch with its offsets: routed, or with `dead_letter_reason` all dead-lettered.
    async fn store(
        &self,
        batch: &[RawMessage],
        dead_letter_reason: Option<&str>,
    ) -> Result<BatchOutcome, BridgeError> {
        let mut tx = self.pool.begin().await?;
        let stored = self.lock_partitions(&mut tx, batch).await?;
        let fresh = fresh_messages(batch, &stored);
        let mut outcome = BatchOutcome {
            stale: batch.len() - fresh.len(),
            ..BatchOutcome::default()
        };
        let mut dead = match dead_letter_reason {
            None => self.apply(&mut tx, &fresh, &mut outcome).await?,
            Some(reason) => fresh.iter().map(|m| (*m, reason.to_string())).collect(),
        };
        for (message, _) in &dead {
            *outcome
                .dead_lettered
                .entry(message.topic.clone())
                .or_default() += 1;
        }
        self.insert_dead_letters(&mut tx, &mut dead).await?;
        outcome.next_offsets = next_offsets(&fresh);
        self.store_offsets(&mut tx, &outcome.next_offsets).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Records how far each partition reaches, for the lag the `bridge_behind` alert reads, every few seconds. It
    /// gives up fast (a lock held elsewhere, a slow database): the next call tries again.
    pub async fn record_ends(&self, ends: &[(String, i32, i64)]) -> Result<(), BridgeError> {
        if ends.is_empty() {
            return Ok(());
        }
        let mut tx = crate::db::begin_bounded(
            &self.pool,
            &["lock_timeout TO '1s'", "statement_timeout TO '2s'"],
        )
        .await?;
        sqlx::query(sql::RECORD_ENDS)
            .bind(&self.group)
            .bind(ends.iter().map(|(t, _, _)| t.as_str()).collect::<Vec<_>>())
            .bind(ends.iter().map(|(_, p, _)| *p).collect::<Vec<_>>())
            .bind(ends.iter().map(|(_, _, e)| *e).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes a batch the database refused (a value Postgres cannot store that routing did not catch) one
    /// message at a time, dead-lettering each message the database refuses on its own. Order is kept, so every
    /// partition's offset still only moves forward.
    pub async fn write_isolating(&self, batch: &[RawMessage]) -> Result<BatchOutcome, BridgeError> {
        let mut total = BatchOutcome::default();
        for message in batch {
            let single = std::slice::from_ref(message);
            let outcome = match self.write(single).await {
                Err(error) if is_refused_data(&error) => {
                    let reason = format!("the database refused it: {error}");
                    self.store(single, Some(&reason)).await?
                }
                other => other?,
            };
            total.absorb(outcome);
        }
        Ok(total)
    }

    /// Routes one dead-lettered message again (after a route or a workflow was fixed) and stores what it becomes,
    /// marking the row replayed, in one transaction. `Ok(Err(reason))`: it still cannot be routed (the row keeps
    /// the new reason).
    /// Replays one dead-lettered message for `actor` (audited as `bridge_dead_letter.replay` when it goes
    /// through).
    pub async fn replay(
        &self,
        actor: &Actor,
        id: i64,
        message: &RawMessage,
    ) -> Result<Result<BatchOutcome, String>, BridgeError> {
        let mut tx = self.pool.begin().await?;
        // Two replays of one row at once: the second waits here, then finds it replayed.
        let unreplayed = sqlx::query(sql::LOCK_FOR_REPLAY)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if unreplayed.is_none() {
            tx.rollback().await?;
            return Ok(Err("already replayed".into()));
        }
        let mut outcome = BatchOutcome::default();
        let dead = self.apply(&mut tx, &[message], &mut outcome).await?;
        if let Some((_, reason)) = dead.into_iter().next() {
            tx.rollback().await?;
            sqlx::query(sql::UPDATE_DEAD_LETTER_ERROR)
                .bind(id)
                .bind(&reason)
                .execute(&self.pool)
                .await?;
            return Ok(Err(reason));
        }
        sqlx::query(sql::MARK_REPLAYED)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let target = format!("bridge_dead_letter:{id}");
        let details = serde_json::json!({ "topic": message.topic, "partition": message.partition, "offset": message.offset });
        audit::record(
            &mut *tx,
            actor,
            "bridge_dead_letter.replay",
            &target,
            details,
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(outcome))
    }

    /// Routes the messages and stores what they become; returns the ones to dead-letter, with the reason.
    async fn apply<'m>(
        &self,
        tx: &mut PgConnection,
        messages: &[&'m RawMessage],
        outcome: &mut BatchOutcome,
    ) -> Result<Vec<(&'m RawMessage, String)>, BridgeError> {
        let mut dead = Vec::new();
        let mut jobs: Vec<(&RawMessage, NewJob)> = Vec::new();
        let mut runs: BTreeMap<String, Vec<(&RawMessage, Value, String)>> = BTreeMap::new();
        let mut events: Vec<(&RawMessage, NewEvent)> = Vec::new();
        let mut profiles: Vec<(String, Profile)> = Vec::new();
        for &message in messages {
            match self.router.route(message) {
                Ok(Routed::Job(job)) => jobs.push((message, job)),
                Ok(Routed::Run {
                    workflow,
                    data,
                    idempotency_key,
                }) => runs
                    .entry(workflow)
                    .or_default()
                    .push((message, data, idempotency_key)),
                Ok(Routed::Event(event)) => events.push((message, event)),
                Ok(Routed::Recipient { id, profile }) => match recipient(&id, &profile) {
                    Ok(parsed) => profiles.push(parsed),
                    Err(reason) => dead.push((message, reason)),
                },
                Err(reason) => dead.push((message, reason)),
            }
        }
        self.insert_jobs(tx, jobs, outcome, &mut dead).await?;
        // In offset order, so the latest message for an id wins; written in id order inside (no deadlocks).
        let actor = Actor::herald("kafka bridge");
        outcome.recipients += store::put_many_in(tx, &actor, &profiles).await?.len();
        for (workflow, items) in runs {
            self.start_runs(tx, &workflow, items, outcome, &mut dead)
                .await?;
        }
        // A bad event goes to the dead letters alone; the rest are stored together (their keys locked in order).
        let mut valid = Vec::with_capacity(events.len());
        for (message, event) in events {
            match event.validate() {
                Ok(()) => valid.push(event),
                Err(invalid) => dead.push((message, invalid.to_string())),
            }
        }
        for receipt in self.engine.ingest_events_in(tx, &valid).await? {
            if receipt.duplicate {
                outcome.duplicates += 1;
            } else {
                outcome.events += 1;
            }
        }
        Ok(dead)
    }

    async fn insert_jobs<'m>(
        &self,
        tx: &mut PgConnection,
        jobs: Vec<(&'m RawMessage, NewJob)>,
        outcome: &mut BatchOutcome,
        dead: &mut Vec<(&'m RawMessage, String)>,
    ) -> Result<(), BridgeError> {
        let (messages, jobs): (Vec<&RawMessage>, Vec<NewJob>) = jobs.into_iter().unzip();
        let results = queue::enqueue_many(tx, &self.defaults, &jobs).await?;
        for (message, result) in messages.into_iter().zip(results) {
            match result {
                Enqueued::Inserted(_) => outcome.jobs += 1,
                Enqueued::Duplicate(_) => outcome.duplicates += 1,
                Enqueued::Conflict(holder) => dead.push((
                    message,
                    format!("idempotency key taken by job {holder} with different content"),
                )),
            }
        }
        Ok(())
    }

    async fn start_runs<'m>(
        &self,
        tx: &mut PgConnection,
        workflow: &str,
        items: Vec<(&'m RawMessage, Value, String)>,
        outcome: &mut BatchOutcome,
        dead: &mut Vec<(&'m RawMessage, String)>,
    ) -> Result<(), BridgeError> {
        let messages: Vec<&RawMessage> = items.iter().map(|(m, _, _)| *m).collect();
        let inputs = items
            .into_iter()
            .map(|(message, data, key)| (data, key, message.traceparent()))
            .collect();
        match self.engine.start_runs_in(tx, workflow, inputs).await {
            Ok(answers) => {
                for (message, answer) in messages.into_iter().zip(answers) {
                    match answer {
                        Ok(true) => outcome.runs += 1,
                        Ok(false) => outcome.duplicates += 1,
                        Err(error) => dead.push((message, error.to_string())),
                    }
                }
                Ok(())
            }
            // An unknown workflow is the messages' problem (or the route's), not a reason to stop the partition.
            Err(WorkflowError::NotFound(what)) => {
                let reason = format!("{what} not found");
                dead.extend(messages.into_iter().map(|m| (m, reason.clone())));
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Creates missing offset rows, then locks them all; returns each partition's stored next offset.
    async fn lock_partitions(
        &self,
        tx: &mut PgConnection,
        batch: &[RawMessage],
    ) -> Result<HashMap<Partition, Option<i64>>, BridgeError> {
        let mut partitions: Vec<Partition> = batch
            .iter()
            .map(|m| (m.topic.clone(), m.partition))
            .collect();
        partitions.sort();
        partitions.dedup();
        let (topics, numbers): (Vec<String>, Vec<i32>) = partitions.into_iter().unzip();
        sqlx::query(sql::CREATE_OFFSETS)
            .bind(&self.group)
            .bind(&topics)
            .bind(&numbers)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query_as(sql::LOCK_OFFSETS)
            .bind(&self.group)
            .bind(&topics)
            .bind(&numbers)
            .fetch_all(&mut *tx)
            .await?;
        Ok(offsets_by_partition(rows))
    }

    async fn insert_dead_letters(
        &self,
        tx: &mut PgConnection,
        dead: &mut [(&RawMessage, String)],
    ) -> Result<(), BridgeError> {
        if dead.is_empty() {
            return Ok(());
        }
        let mut columns = DeadLetterColumns::default();
        for (message, error) in dead.iter() {
            columns.push(message, error);
        }
        sqlx::query(sql::INSERT_DEAD_LETTERS)
            .bind(&self.group)
            .bind(&columns.topics)
            .bind(&columns.partitions)
            .bind(&columns.offsets)
            .bind(&columns.keys)
            .bind(&columns.headers)
            .bind(&columns.payloads)
            .bind(&columns.errors)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn store_offsets(
        &self,
        tx: &mut PgConnection,
        next_offsets: &[(String, i32, i64)],
    ) -> Result<(), BridgeError> {
        let topics: Vec<&str> = next_offsets.iter().map(|(t, _, _)| t.as_str()).collect();
        let partitions: Vec<i32> = next_offsets.iter().map(|(_, p, _)| *p).collect();
        let offsets: Vec<i64> = next_offsets.iter().map(|(_, _, o)| *o).collect();
        sqlx::query(sql::STORE_OFFSETS)
            .bind(&self.group)
            .bind(&topics)
            .bind(&partitions)
            .bind(&offsets)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Stores `next` as a partition's offset if it has none yet (`start_from = "latest"`).
    pub async fn pin_offset(
        &self,
        topic: &str,
        partition: i32,
        next: i64,
    ) -> Result<(), BridgeError> {
        sqlx::query(sql::PIN_OFFSET)
            .bind(&self.group)
            .bind(topic)
            .bind(partition)
            .bind(next)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The next offset stored for every partition of this group that has one.
    pub async fn stored_offsets(&self) -> Result<HashMap<Partition, i64>, BridgeError> {
        let rows = sqlx::query_as(sql::READ_OFFSETS)
            .bind(&self.group)
            .fetch_all(&self.pool)
            .await?;
        Ok(offsets_by_partition(rows))
    }
}

/// A partition's stored offset: `Option<i64>` where the row may be new (NULL until its first batch commits).
#[derive(sqlx::FromRow)]
struct OffsetRow<T> {
    topic: String,
    partition: i32,
    next_offset: T,
}

/// `(topic, partition) -> next_offset` from offset rows.
fn offsets_by_partition<T>(rows: Vec<OffsetRow<T>>) -> HashMap<Partition, T> {
    rows.into_iter()
        .map(|row| ((row.topic, row.partition), row.next_offset))
        .collect()
}

/// The messages at or above their partition's stored offset.
fn fresh_messages<'m>(
    batch: &'m [RawMessage],
    stored: &HashMap<Partition, Option<i64>>,
) -> Vec<&'m RawMessage> {
    batch
        .iter()
        .filter(|m| match stored.get(&(m.topic.clone(), m.partition)) {
            Some(Some(next)) => m.offset >= *next,
            _ => true,
        })
        .collect()
}

/// The database refused the values (SQLSTATE 22 data exception, 23 integrity, 54 program limit such as an index
/// row too large): the same batch can never succeed, unlike after a lost connection.
pub fn is_refused_data(error: &BridgeError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(sqlx::Error::Database(db)) = current.downcast_ref::<sqlx::Error>() {
            return db.code().is_some_and(|code| {
                ["22", "23", "54"]
                    .iter()
                    .any(|class| code.starts_with(class))
            });
        }
        if let Some(sqlx::Error::Encode(_)) = current.downcast_ref::<sqlx::Error>() {
            return true;
        }
        source = current.source();
    }
    false
}

impl BatchOutcome {
    fn absorb(&mut self, other: BatchOutcome) {
        self.jobs += other.jobs;
        self.runs += other.runs;
        self.events += other.events;
        self.recipients += other.recipients;
        self.duplicates += other.duplicates;
        for (topic, count) in other.dead_lettered {
            *self.dead_lettered.entry(topic).or_default() += count;
        }
        self.stale += other.stale;
        for (topic, partition, next) in other.next_offsets {
            match self
                .next_offsets
                .iter_mut()
                .find(|(t, p, _)| *t == topic && *p == partition)
            {
                Some(entry) => entry.2 = entry.2.max(next),
                None => self.next_offsets.push((topic, partition, next)),
            }
        }
    }
}

/// Per partition: one past the highest offset among `messages`.
fn next_offsets(messages: &[&RawMessage]) -> Vec<(String, i32, i64)> {
    let mut highest: BTreeMap<Partition, i64> = BTreeMap::new();
    for message in messages {
        let entry = highest
            .entry((message.topic.clone(), message.partition))
            .or_insert(message.offset);
        *entry = (*entry).max(message.offset);
    }
    highest
        .into_iter()
        .map(|((topic, partition), offset)| (topic, partition, offset + 1))
        .collect()
}

#[derive(Default)]
struct DeadLetterColumns {
    topics: Vec<String>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    keys: Vec<Option<Vec<u8>>>,
    headers: Vec<Value>,
    payloads: Vec<Option<Vec<u8>>>,
    errors: Vec<String>,
}

impl DeadLetterColumns {
    fn push(&mut self, message: &RawMessage, error: &str) {
        self.topics.push(message.topic.clone());
        self.partitions.push(message.partition);
        self.offsets.push(message.offset);
        self.keys.push(message.key.clone());
        self.headers.push(message.headers_json());
        self.payloads.push(message.payload.clone());
        self.errors.push(error.to_string());
    }
}

/// A recipient message's id and profile, parsed as the API parses them; the error names the field.
fn recipient(id: &str, profile: &Value) -> Result<(String, Profile), String> {
    let id = RecipientId::parse(id).map_err(|e| format!("recipient id {e}"))?;
    let profile = Profile::parse(profile, true).map_err(|problems| {
        let named: Vec<String> = problems.iter().map(|(f, m)| format!("{f} {m}")).collect();
        format!("recipient profile: {}", named.join("; "))
    })?;
    Ok((id.as_str().to_string(), profile))
}
