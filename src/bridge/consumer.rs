//! The consumer: librdkafka polled on a thread of its own, batches stored through [`BatchWriter`].
//!
//! Why a plain thread: librdkafka calls the rebalance callback from inside `poll`, and on a revoke the batch in
//! hand must be stored before the partitions go. On its own thread the callback can simply wait for Postgres
//! (`Handle::block_on`); on an async task it could not. The same thread also closes the consumer, so a slow
//! `rd_kafka_destroy` never blocks the async runtime.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::BridgeError;
use super::message::RawMessage;
use super::metrics;
use super::settings::{BridgeSettings, StartFrom};
use super::store::{BatchOutcome, BatchWriter, is_refused_data};

/// How the consumer runs, from `[bridge]`.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub brokers: String,
    pub batch_size: usize,
    pub linger: Duration,
    pub start_from_earliest: bool,
    pub commit_to_broker: bool,
    pub max_queue_depth: i64,
    pub resume_depth: i64,
    pub check_interval: Duration,
    pub librdkafka: BTreeMap<String, String>,
    /// The queue workflow runs and events land in (for backpressure).
    pub workflow_queue: String,
}

impl ConsumerOptions {
    pub fn from_settings(bridge: &BridgeSettings, workflow_queue: &str) -> Self {
        Self {
            brokers: bridge.brokers.clone(),
            batch_size: bridge.batch_size.get(),
            linger: bridge.linger,
            start_from_earliest: bridge.start_from == StartFrom::Earliest,
            commit_to_broker: bridge.commit_to_broker,
            max_queue_depth: bridge.max_queue_depth,
            resume_depth: bridge.resume_depth,
            check_interval: bridge.check_interval,
            librdkafka: bridge.librdkafka.0.clone(),
            workflow_queue: workflow_queue.to_string(),
        }
    }

    pub(super) fn client_config(&self, group: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            // Offsets live in Postgres; the broker gets a copy only after Postgres has committed.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Only used when a stored offset is out of range (retention deleted it): start at the oldest message
            // still there rather than skip to the end. `start_from` is applied by the bridge itself.
            .set("auto.offset.reset", "earliest")
            // Per-partition high watermarks for the lag metric arrive with the statistics, without a request.
            .set("statistics.interval.ms", "5000")
            // Brokers that do not answer a waiting fetch as soon as data arrives (tansu, the mock cluster) would
            // otherwise add up to librdkafka's default 500 ms to every message's latency.
            .set("fetch.wait.max.ms", "100");
        for (key, value) in &self.librdkafka {
            // From the environment keys arrive lowercased with `_` for `.` (librdkafka's keys have no `_`).
            config.set(key.replace('_', "."), value);
        }
        config
    }
}

type Partition = (String, i32);

/// The consumer's state, shared with librdkafka's callbacks (which run on the consumer thread, inside `poll`).
pub(super) struct BridgeContext {
    writer: Arc<BatchWriter>,
    runtime: Handle,
    /// A write of the partitions' ends is in flight (see `update_lag`).
    recording_ends: Arc<std::sync::atomic::AtomicBool>,
    options: ConsumerOptions,
    shutdown: CancellationToken,
    /// Messages read but not yet stored: at most one batch.
    pending: Mutex<Vec<RawMessage>>,
    /// Each subscribed topic with the queues its routes feed (fixed by the routes).
    fed: Vec<(String, Vec<String>)>,
    /// Topics paused because a queue they feed is too deep.
    paused: Mutex<HashSet<String>>,
    /// Per partition: the highest offset read, and the next offset stored in Postgres (for lag).
    seen: Mutex<HashMap<Partition, i64>>,
    stored: Mutex<HashMap<Partition, i64>>,
    /// The deepest queue at the last depth check plus what this bridge stored since: when it reaches the limit,
    /// depths are checked at once rather than at the next interval, so a fast stream overshoots by one batch.
    depth_estimate: Mutex<i64>,
    /// Per partition: the broker's high watermark from the last statistics.
    high_watermarks: Mutex<HashMap<Partition, i64>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere on this thread cannot leave these maps half-written in a way that matters.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ClientContext for BridgeContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
    }

    /// librdkafka's statistics (every 5 s): only each partition's high watermark is kept, for lag.
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        let Some(topics) = stats.get("topics").and_then(|t| t.as_object()) else {
            return;
        };
        let mut highs = lock(&self.high_watermarks);
        for (topic, detail) in topics {
            let partitions = detail.get("partitions").and_then(|p| p.as_object());
            for (partition, detail) in partitions.into_iter().flatten() {
                let high = detail.get("hi_offset").and_then(|h| h.as_i64());
                if let (Ok(partition @ 0..), Some(high @ 0..)) = (partition.parse::<i32>(), high) {
                    highs.insert((topic.clone(), partition), high);
                }
            }
        }
    }
}

impl ConsumerContext for BridgeContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.on_assign(consumer, partitions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.on_revoke(consumer, partitions)
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; giving up the assignment");
                lock(&self.pending).clear();
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "unassign failed");
                }
            }
        }
    }
}

impl BridgeContext {
    pub(super) fn new(
        writer: Arc<BatchWriter>,
        runtime: Handle,
        options: ConsumerOptions,
        shutdown: CancellationToken,
    ) -> Self {
        let router = writer.router();
        let fed = router
            .topics()
            .into_iter()
            .map(|topic| {
                let queues = router.queues_fed_by(&topic, &options.workflow_queue);
                (topic, queues)
            })
            .collect();
        Self {
            fed,
            writer,
            runtime,
            recording_ends: Arc::default(),
            options,
            shutdown,
            pending: Mutex::default(),
            paused: Mutex::default(),
            seen: Mutex::default(),
            stored: Mutex::default(),
            depth_estimate: Mutex::default(),
            high_watermarks: Mutex::default(),
        }
    }

    /// New partitions start where Postgres says, never where the broker says.
    fn on_assign(&self, consumer: &BaseConsumer<Self>, partitions: &mut TopicPartitionList) {
        metrics::REBALANCES.with_label_values(&["assign"]).inc();
        let assigned: Vec<Partition> = partitions
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let mut stored = self.stored_offsets_or_shutdown();
        if !self.options.start_from_earliest && assigned.iter().any(|p| !stored.contains_key(p)) {
            // "latest" is pinned in Postgres before anything is read, so a crash before the first batch cannot
            // move the start to a later end and skip what arrived in between.
            self.pin_latest(consumer, &assigned, &stored);
            stored = self.stored_offsets_or_shutdown();
        }
        for (topic, partition) in &assigned {
            let offset = stored
                .get(&(topic.clone(), *partition))
                .map_or(Offset::Beginning, |next| Offset::Offset(*next));
            if let Err(error) = partitions.set_partition_offset(topic, *partition, offset) {
                tracing::error!(%error, topic, partition, "cannot set the start offset");
            }
        }
        lock(&self.stored).extend(stored);
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(partitions),
            _ => consumer.assign(partitions),
        };
        if let Err(error) = result {
            tracing::error!(%error, "assign failed");
        }
        tracing::info!(partitions = ?assigned, "partitions assigned; reading from the offsets in Postgres");
        let paused = lock(&self.paused).clone();
        for topic in paused {
            self.set_paused(consumer, &topic, true);
        }
    }

    /// The batch in hand is stored before the partitions go, so the next owner starts right after it.
    fn on_revoke(&self, consumer: &BaseConsumer<Self>, partitions: &mut TopicPartitionList) {
        metrics::REBALANCES.with_label_values(&["revoke"]).inc();
        let revoked: Vec<Partition> = partitions
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        if !self.flush_with_retries(consumer, 3) {
            // Not lost: their offsets were not stored, so the next owner reads these messages again. Messages of
            // partitions this bridge keeps (cooperative rebalancing) stay pending: nothing would read them again.
            let mut pending = lock(&self.pending);
            let before = pending.len();
            pending.retain(|m| !revoked.contains(&(m.topic.clone(), m.partition)));
            tracing::warn!(
                dropped = before - pending.len(),
                "could not store the batch before giving up partitions; the next owner rereads it"
            );
        }
        for (topic, partition) in &revoked {
            lock(&self.seen).remove(&(topic.clone(), *partition));
            lock(&self.stored).remove(&(topic.clone(), *partition));
            let _ = metrics::LAG.remove_label_values(&[topic, &partition.to_string()]);
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(partitions),
            _ => consumer.unassign(),
        };
        if let Err(error) = result {
            tracing::error!(%error, "unassign failed");
        }
        tracing::info!(partitions = ?revoked, "partitions revoked");
    }

    /// Stores the current end of each assigned partition that has no offset yet as its starting point.
    fn pin_latest(
        &self,
        consumer: &BaseConsumer<Self>,
        assigned: &[Partition],
        stored: &HashMap<Partition, i64>,
    ) {
        for (topic, partition) in assigned.iter().filter(|p| !stored.contains_key(*p)) {
            match consumer.fetch_watermarks(topic, *partition, Duration::from_secs(10)) {
                Ok((_, high)) => {
                    let pinned = self
                        .runtime
                        .block_on(self.writer.pin_offset(topic, *partition, high));
                    if let Err(error) = pinned {
                        tracing::warn!(%error, topic, partition, "cannot store the starting offset");
                    }
                }
                Err(error) => {
                    // Starting from the beginning reads more than asked for, but never skips anything.
                    tracing::warn!(%error, topic, partition, "no high watermark; starting at the beginning");
                }
            }
        }
    }

    fn stored_offsets_or_shutdown(&self) -> HashMap<Partition, i64> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.runtime.block_on(self.writer.stored_offsets()) {
                Ok(stored) => return stored,
                Err(error) if !self.shutdown.is_cancelled() => {
                    tracing::warn!(%error, "cannot read the stored offsets; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the stored offsets while shutting down");
                    return HashMap::new();
                }
            }
        }
    }

    pub(super) fn push(&self, message: RawMessage) -> usize {
        metrics::CONSUMED
            .with_label_values(&[message.topic.as_str()])
            .inc();
        lock(&self.seen)
            .entry((message.topic.clone(), message.partition))
            .and_modify(|seen| *seen = (*seen).max(message.offset))
            .or_insert(message.offset);
        let mut pending = lock(&self.pending);
        pending.push(message);
        pending.len()
    }

    pub(super) fn pending_len(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Stores the pending batch; on failure keeps it pending and says why.
    fn flush_once(&self, consumer: &BaseConsumer<Self>) -> Result<(), BridgeError> {
        let batch = std::mem::take(&mut *lock(&self.pending));
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let written = match self.runtime.block_on(self.writer.write(&batch)) {
            Err(error) if is_refused_data(&error) => {
                tracing::warn!(%error, "the database refused a batch; storing it message by message");
                self.runtime.block_on(self.writer.write_isolating(&batch))
            }
            other => other,
        };
        match written {
            Ok(outcome) => {
                metrics::BATCH_SECONDS
                    .with_label_values(&[] as &[&str])
                    .observe(started.elapsed().as_secs_f64());
                self.record(&outcome);
                if self.options.commit_to_broker {
                    self.commit_to_broker(consumer, &outcome);
                }
                Ok(())
            }
            Err(error) => {
                let mut pending = lock(&self.pending);
                let newer = std::mem::replace(&mut *pending, batch);
                pending.extend(newer);
                Err(error)
            }
        }
    }

    /// Tries to store the pending batch up to `attempts` times; true if nothing is pending afterwards.
    fn flush_with_retries(&self, consumer: &BaseConsumer<Self>, attempts: u32) -> bool {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=attempts {
            match self.flush_once(consumer) {
                Ok(()) => return true,
                Err(error) => {
                    tracing::warn!(%error, attempt, "storing a batch failed; retrying");
                    if attempt < attempts {
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        false
    }

    /// Stores the pending batch, retrying with backoff for as long as it takes (nothing else is read meanwhile,
    /// so memory stays bounded), or a few times once shutting down.
    pub(super) fn flush_until_stored(&self, consumer: &BaseConsumer<Self>) {
        while !self.flush_with_retries(consumer, 5) {
            if self.shutdown.is_cancelled() {
                tracing::warn!(
                    pending = self.pending_len(),
                    "shutting down with a batch not stored; it is read again on the next start"
                );
                return;
            }
        }
    }

    fn record(&self, outcome: &BatchOutcome) {
        for (target, count) in [
            ("job", outcome.jobs),
            ("run", outcome.runs),
            ("event", outcome.events),
            ("recipient", outcome.recipients),
            ("duplicate", outcome.duplicates),
        ] {
            metrics::INSERTED
                .with_label_values(&[target])
                .inc_by(count as u64);
        }
        for (topic, count) in &outcome.dead_lettered {
            metrics::DEAD_LETTERED
                .with_label_values(&[topic.as_str()])
                .inc_by(*count as u64);
        }
        if outcome.stale > 0 {
            tracing::warn!(
                stale = outcome.stale,
                "skipped messages another bridge had already stored"
            );
        }
        *lock(&self.depth_estimate) += (outcome.jobs + outcome.runs + outcome.events) as i64;
        let mut stored = lock(&self.stored);
        for (topic, partition, next) in &outcome.next_offsets {
            stored.insert((topic.clone(), *partition), *next);
        }
    }

    fn commit_to_broker(&self, consumer: &BaseConsumer<Self>, outcome: &BatchOutcome) {
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, next) in &outcome.next_offsets {
            if let Err(error) =
                offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))
            {
                tracing::warn!(%error, "cannot build the broker commit");
                return;
            }
        }
        if offsets.count() == 0 {
            return;
        }
        if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::debug!(%error, "broker commit failed (Postgres holds the offsets)");
        }
    }

    /// Pauses the topics whose queues are too deep, resumes those that drained.
    pub(super) fn check_backpressure(&self, consumer: &BaseConsumer<Self>) {
        if self.options.max_queue_depth <= 0 {
            return;
        }
        let all_queues: Vec<String> = self.fed.iter().flat_map(|(_, q)| q.clone()).collect();
        let depths = match self
            .runtime
            .block_on(queue_depths(&self.writer, &all_queues))
        {
            Ok(depths) => depths,
            Err(error) => {
                tracing::warn!(%error, "cannot read queue depths");
                return;
            }
        };
        *lock(&self.depth_estimate) = depths.values().copied().max().unwrap_or(0);
        for (topic, queues) in &self.fed {
            let deepest = queues
                .iter()
                .filter_map(|q| depths.get(q))
                .copied()
                .max()
                .unwrap_or(0);
            let paused = lock(&self.paused).contains(topic);
            if !paused && deepest >= self.options.max_queue_depth {
                tracing::info!(topic, deepest, "queue too deep: pausing the topic");
                lock(&self.paused).insert(topic.clone());
                self.set_paused(consumer, topic, true);
            } else if paused && deepest < self.options.resume_depth {
                tracing::info!(topic, deepest, "queue drained: resuming the topic");
                lock(&self.paused).remove(topic);
                self.set_paused(consumer, topic, false);
            }
        }
    }

    /// True when the queues may have reached the limit since the last check.
    pub(super) fn may_be_too_deep(&self) -> bool {
        self.options.max_queue_depth > 0
            && *lock(&self.depth_estimate) >= self.options.max_queue_depth
            && lock(&self.paused).is_empty()
    }

    fn set_paused(&self, consumer: &BaseConsumer<Self>, topic: &str, pause: bool) {
        metrics::PAUSED
            .with_label_values(&[topic])
            .set(i64::from(pause));
        let Ok(assignment) = consumer.assignment() else {
            return;
        };
        let mut partitions = TopicPartitionList::new();
        for element in assignment.elements_for_topic(topic) {
            partitions.add_partition(topic, element.partition());
        }
        drop(assignment);
        if partitions.count() == 0 {
            return;
        }
        let result = if pause {
            consumer.pause(&partitions)
        } else {
            consumer.resume(&partitions)
        };
        if let Err(error) = result {
            tracing::warn!(%error, topic, pause, "pause/resume failed");
        }
    }

    /// Lag per assigned partition: the end of the partition as far as the bridge knows it (the broker's high
    /// watermark, or one past the last message read, whichever is higher) minus the next offset stored.
    pub(super) fn update_lag(&self, consumer: &BaseConsumer<Self>) {
        let Ok(assignment) = consumer.assignment() else {
            return;
        };
        let partitions: Vec<Partition> = assignment
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        drop(assignment);
        let mut ends = Vec::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            let key = (topic.clone(), partition);
            let high = lock(&self.high_watermarks).get(&key).copied().unwrap_or(0);
            let seen_end = lock(&self.seen).get(&key).map_or(0, |seen| seen + 1);
            let stored = lock(&self.stored).get(&key).copied().unwrap_or(0);
            let end = high.max(seen_end);
            let lag = end.saturating_sub(stored).max(0);
            metrics::LAG
                .with_label_values(&[&topic, &partition.to_string()])
                .set(lag);
            if end > 0 {
                ends.push((topic, partition, end));
            }
        }
        // The fleet's alert evaluator reads the lag from the database, not from this process. Written on the
        // runtime, never on this consuming thread (a slow database must not stall polling); one write at a time.
        if ends.is_empty()
            || self
                .recording_ends
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let (writer, recording) = (Arc::clone(&self.writer), Arc::clone(&self.recording_ends));
        self.runtime.spawn(async move {
            // Cleared however the write ends (a panic included), or ends would never be recorded again.
            let _done = ClearOnDrop(recording);
            if let Err(error) = writer.record_ends(&ends).await {
                tracing::warn!(%error, "could not record the partitions' ends (the bridge_behind alert reads them)");
            }
        });
    }
}

/// Clears its flag when dropped.
struct ClearOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

async fn queue_depths(
    writer: &BatchWriter,
    queues: &[String],
) -> Result<HashMap<String, i64>, BridgeError> {
    crate::queue::admin::depths(writer.pool(), queues)
        .await
        .map_err(BridgeError::from)
}

/// Reads until `shutdown`, storing a batch whenever it is full or has waited `linger`.
pub(super) fn consume(
    consumer: &BaseConsumer<BridgeContext>,
    options: &ConsumerOptions,
    shutdown: &CancellationToken,
) {
    let context = consumer.context().clone();
    let idle_poll = Duration::from_millis(100);
    let lag_interval = Duration::from_secs(5);
    let mut last_check: Option<Instant> = None;
    let mut last_lag: Option<Instant> = None;
    let mut batch_started: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let check_due = last_check.is_none_or(|at| at.elapsed() >= options.check_interval);
        if check_due || context.may_be_too_deep() {
            context.check_backpressure(consumer);
            last_check = Some(Instant::now());
        }
        if last_lag.is_none_or(|at| at.elapsed() >= lag_interval) {
            context.update_lag(consumer);
            last_lag = Some(Instant::now());
        }
        let timeout = batch_started.map_or(idle_poll, |at| {
            options.linger.saturating_sub(at.elapsed()).min(idle_poll)
        });
        match consumer.poll(timeout) {
            Some(Ok(message)) => {
                let raw = RawMessage::from_kafka(&message);
                drop(message);
                context.push(raw);
                batch_started.get_or_insert_with(Instant::now);
            }
            Some(Err(error)) => tracing::warn!(%error, "kafka consumer error"),
            None => {}
        }
        let pending = context.pending_len();
        if pending == 0 {
            // A revoke may have stored the batch in the meantime.
            batch_started = None;
            continue;
        }
        let lingered = batch_started.is_some_and(|at| at.elapsed() >= options.linger);
        if pending >= options.batch_size || lingered {
            context.flush_until_stored(consumer);
            batch_started = None;
        }
    }
    context.flush_until_stored(consumer);
}
