//! A consumed message, copied out of librdkafka's buffers so it can wait in a batch.

use rdkafka::Message;
use rdkafka::message::Headers;

/// One Kafka message, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct RawMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub payload: Option<Vec<u8>>,
    /// Why the message could not even be read (it is dead-lettered with this reason).
    pub problem: Option<String>,
}

impl RawMessage {
    pub fn from_kafka<M: Message>(message: &M) -> Self {
        // rdkafka panics on a header name that is not UTF-8 (producers may send any bytes). Such a message is
        // dead-lettered, not allowed to stop the consumer.
        let headers = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }));
        let (headers, problem) = match headers {
            Ok(headers) => (headers, None),
            Err(_) => (
                Vec::new(),
                Some("a header name is not UTF-8 (headers not kept)".to_string()),
            ),
        };
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            headers,
            payload: message.payload().map(<[u8]>::to_vec),
            problem,
        }
    }

    /// The first header of this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
    }

    /// The producer's W3C trace (a valid `traceparent` header), which the jobs and runs this message becomes
    /// continue; `None` when traces are not exported.
    pub fn traceparent(&self) -> Option<String> {
        if !crate::telemetry::exporting() {
            return None;
        }
        self.header("traceparent")
            .and_then(crate::telemetry::parse_traceparent)
    }

    /// `kafka:<topic>:<partition>:<offset>`: unique per message within a cluster, the default idempotency key
    /// of the runs and events a message starts.
    pub fn position_key(&self) -> String {
        format!("kafka:{}:{}:{}", self.topic, self.partition, self.offset)
    }

    /// The headers as JSON for the dead-letter row: `[{"name", "value" (base64, or null)}]`.
    pub fn headers_json(&self) -> serde_json::Value {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::STANDARD;
        self.headers
            .iter()
            .map(|(name, value)| {
                serde_json::json!({
                    "name": name,
                    "value": value.as_ref().map(|v| engine.encode(v)),
                })
            })
            .collect()
    }

    /// Rebuilds the headers from a dead-letter row (for replay).
    pub fn headers_from_json(json: &serde_json::Value) -> Vec<(String, Option<Vec<u8>>)> {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::STANDARD;
        json.as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| {
                        let name = item.get("name")?.as_str()?.to_string();
                        let value = item
                            .get("value")
                            .and_then(|v| v.as_str())
                            .and_then(|v| engine.decode(v).ok());
                        Some((name, value))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
