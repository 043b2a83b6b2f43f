//! wrk as a load generator for `herald bench http`: the issue's throughput targets are stated in wrk's terms
//! (keep-alive connections, closed loop), and wrk costs the machine far less CPU per request than a reqwest client
//! in the bench process, so on this 2-core host it leaves more of the machine to the API and PostgreSQL. Optional:
//! without `wrk` on the PATH the phase is reported as skipped.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::bench::BenchError;

/// What wrk measured for one endpoint.
#[derive(Debug, Serialize)]
pub struct WrkReport {
    pub req_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers other than 2xx/3xx (wrk counts them as requests, so they must be zero for the rate to count).
    pub non_2xx: u64,
    /// Connect, read and write errors and timeouts (a request past `--timeout` leaves the latency figures, so
    /// they must be zero too for the percentiles to count).
    pub socket_errors: u64,
}

/// Whether wrk can be run here.
pub fn available() -> bool {
    Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok_and(|out| !out.stdout.is_empty() || !out.stderr.is_empty())
}

/// POSTs to `url` for `seconds` from `connections` keep-alive connections on 2 threads; each request's body is
/// `body_format` (a Lua `string.format` pattern) with the thread's number, a counter (so every body is unique) and
/// the counter modulo `modulo` (a room, a key).
pub fn post(
    dir: &Path,
    url: &str,
    key: &str,
    body_format: &str,
    modulo: usize,
    seconds: u64,
    connections: usize,
) -> Result<WrkReport, BenchError> {
    let script = dir.join("wrk-post.lua");
    // `setup` runs in the main Lua state once per thread and hands each thread its number.
    let lua = format!(
        r#"local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
local n = 0
function request()
  n = n + 1
  return wrk.format(nil, nil, nil, string.format('{body_format}', tid, n, n % {modulo}))
end
"#
    );
    std::fs::write(&script, lua).map_err(|e| BenchError::Failed(format!("wrk script: {e}")))?;
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "10s",
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .map_err(|e| BenchError::Failed(format!("cannot run wrk: {e}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(BenchError::Failed(format!(
            "wrk failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    parse(&text).ok_or_else(|| BenchError::Failed(format!("could not read wrk's report:\n{text}")))
}

fn parse(text: &str) -> Option<WrkReport> {
    let mut report = WrkReport {
        req_per_s: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        non_2xx: 0,
        socket_errors: 0,
    };
    for line in text.lines().map(str::trim) {
        if let Some(rate) = line.strip_prefix("Requests/sec:") {
            report.req_per_s = rate.trim().parse().ok()?;
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx = count.trim().parse().ok()?;
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 2, write 0, timeout 5"
            report.socket_errors = errors
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if let Some(value) = line.strip_prefix("50%") {
            report.p50_ms = millis(value.trim())?;
        } else if let Some(value) = line.strip_prefix("99%") {
            report.p99_ms = millis(value.trim())?;
        }
    }
    (!report.req_per_s.is_nan()).then_some(report)
}

/// wrk's durations: `812.00us`, `4.30ms`, `1.02s`.
fn millis(value: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_report() {
        let text = "Running 10s test @ http://127.0.0.1:1/v1/events
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.61ms    2.10ms  40.12ms   80.00%
  Latency Distribution
     50%    4.30ms
     75%    5.50ms
     90%    7.00ms
     99%  812.00us
  139950 requests in 10.00s, 30.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 5
  Non-2xx or 3xx responses: 3
Requests/sec:  13995.12
Transfer/sec:      3.00MB
";
        let report = parse(text).expect("parsed");
        assert!((report.req_per_s - 13_995.12).abs() < 1e-6);
        assert!((report.p50_ms - 4.3).abs() < 1e-9);
        assert!((report.p99_ms - 0.812).abs() < 1e-9);
        assert_eq!(report.non_2xx, 3);
        assert_eq!(report.socket_errors, 7);
        assert!(parse("wrk: command failed").is_none());
    }
}
