-- The W3C traceparent of the span that enqueued a job (an HTTP request, a Kafka message with one, the workflow
-- node before), so the attempt's span continues that trace in whichever process runs it (src/telemetry.rs). NULL
-- unless traces are exported: a job costs nothing more when they are off.
ALTER TABLE herald_jobs ADD COLUMN trace_parent text;
