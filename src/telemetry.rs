//! Logs and traces, set up in one place, from the environment (not the config files: logging starts before they
//! are read).
//!
//! **Logs**: `RUST_LOG` filters (default `info`), output goes to stderr, as text or, with `HERALD_LOG_FORMAT=json`,
//! as one JSON object per line (for a log stack: Loki, ELK). Each line carries the fields of the spans it happened
//! in: an HTTP request's `request_id`, a job attempt's `job` id.
//!
//! **Traces** (off unless `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set): the same
//! spans go to an OpenTelemetry collector over OTLP/HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`, the
//! default, or `http/json`), sampled as `OTEL_TRACES_SAMPLER` says (every trace by default). A trace crosses
//! processes through the queue: the W3C `traceparent` of the span that enqueues a job is stored with the job, and
//! the worker's attempt span takes it as its parent, so one trace runs from an HTTP request (or a Kafka message
//! carrying a `traceparent` header) through each job and workflow node to the provider call. With traces off none
//! of this costs anything: no context is captured and no column is written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The environment variable choosing the log format: `json`, or anything else for text.
pub const LOG_FORMAT_VAR: &str = "HERALD_LOG_FORMAT";

/// The environment variables that turn trace export on (the OpenTelemetry SDK's own names).
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The spans traces are made of, whatever `RUST_LOG` says: herald's own, at INFO.
const TRACE_FILTER: &str = "herald=info";

/// Whether spans are exported (set once, by [`init`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The tracer provider while traces are exported: flushed and stopped by [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered (a process exiting would lose its last second of spans otherwise).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("herald: flushing traces failed: {error}");
        }
    }
}

/// Installs the log output and, if configured, the trace exporter. A second call (tests) changes nothing.
pub fn init() -> Telemetry {
    // Each output filters for itself: logs by `RUST_LOG`, traces by their own filter (herald's spans are at INFO),
    // so a quiet log level (`RUST_LOG=warn`, common in production) does not turn traces off.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json =
        std::env::var(LOG_FORMAT_VAR).is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    let provider = match exporter_from_env() {
        Ok(provider) => provider,
        Err(problem) => {
            eprintln!("herald: traces are not exported: {problem}");
            None
        }
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("herald"))
            .with_filter(EnvFilter::new(TRACE_FILTER))
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    EXPORTING.store(installed && provider.is_some(), Ordering::Relaxed);
    Telemetry {
        provider: provider.filter(|_| installed),
    }
}

/// The OTLP exporter the environment asks for, if any.
fn exporter_from_env() -> Result<Option<SdkTracerProvider>, String> {
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};

    let configured = ENDPOINT_VARS
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
    if !configured {
        return Ok(None);
    }
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("http/json") => Protocol::HttpJson,
        Ok("http/protobuf") | Err(_) => Protocol::HttpBinary,
        Ok(other) => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL {other:?}: herald speaks http/protobuf and http/json"
            ));
        }
    };
    // The endpoint comes from the environment, read by the exporter itself (which appends /v1/traces to the
    // general endpoint, not to the traces one, as the specification says).
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("herald");
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// Whether spans are exported: callers skip work (span fields, context capture) that only traces need.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The W3C `traceparent` of the current span, to store with work another process will do; `None` when traces
/// are not exported or there is no span. An unsampled span's is kept too: its flags carry the decision, so the
/// spans of one trace are kept or dropped together (a parent-based sampler follows them).
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` (not entered yet) a child of `traceparent` (from a job row or a request header). Nothing happens
/// when traces are not exported or the value is not a valid `traceparent`.
pub fn set_parent(span: &tracing::Span, traceparent: &[u8]) {
    if !exporting() {
        return;
    }
    let Some(traceparent) = parse_traceparent(traceparent) else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_string(), traceparent)]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    // Fails only if the span was already entered or is disabled; it then keeps its own parent.
    let _ = span.set_parent(parent);
}

/// A `traceparent` value as the W3C Trace Context defines version 00 (`00-<32 hex>-<16 hex>-<2 hex>`, ids not
/// all zeros), from outside data (a request header, a Kafka header); `None` for anything else. Bounded: nothing
/// longer than the 55 bytes of a valid value is looked at.
pub fn parse_traceparent(value: &[u8]) -> Option<String> {
    if value.len() != 55 {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let parts: Vec<&str> = text.split('-').collect();
    let [version, trace, span, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = *version == "00"
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0');
    valid.then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_are_taken() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse_traceparent(good.as_bytes()).as_deref(), Some(good));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(parse_traceparent(&[0xff; 55]), None, "not UTF-8");
    }

    #[test]
    fn without_an_exporter_nothing_is_captured() {
        assert!(!exporting());
        let span = tracing::info_span!("outside");
        let _entered = span.enter();
        assert_eq!(current_traceparent(), None);
    }
}
