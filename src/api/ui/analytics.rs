//! Analytics: the clock's daily rollups (`clock::rollups::show`, what `GET /v1/analytics/daily` answers) as
//! charts: deliveries per day by channel, failure rates, acceptance latency, jobs and runs per day, and a table
//! per provider. Days not computed yet show as gaps of zero, and the page says which are missing.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use chrono::{Days, NaiveDate, Utc};
use serde::Deserialize;

use super::chart::{self, Series};
use super::html::{esc, table};
use super::{ApiState, PageQuery, Session, failure, page};
use crate::clock::rollups::{self, DeliveryRollup, JobRollup, RollupFilter, RunRollup};

#[derive(Deserialize, Default)]
pub(super) struct AnalyticsQuery {
    days: Option<u32>,
}

/// The day ranges offered.
const RANGES: [u32; 3] = [7, 30, 90];

/// Sums `value` of `rows` per day and per `key`, over `days`.
fn per_day<R>(
    days: &[NaiveDate],
    rows: &[R],
    day: impl Fn(&R) -> NaiveDate,
    key: impl Fn(&R) -> String,
    value: impl Fn(&R) -> f64,
) -> Vec<Series> {
    let index: BTreeMap<NaiveDate, usize> = days.iter().enumerate().map(|(i, d)| (*d, i)).collect();
    let mut series: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for row in rows {
        let Some(&i) = index.get(&day(row)) else {
            continue;
        };
        series
            .entry(key(row))
            .or_insert_with(|| vec![0.0; days.len()])[i] += value(row);
    }
    series
        .into_iter()
        .map(|(name, values)| Series {
            name,
            values,
            colour: None,
        })
        .collect()
}

/// `value` summed over all rows, per day (zeros without rows).
fn total_per_day<R>(
    days: &[NaiveDate],
    rows: &[R],
    day: impl Fn(&R) -> NaiveDate,
    value: impl Fn(&R) -> f64,
) -> Vec<f64> {
    per_day(days, rows, day, |_| String::new(), value)
        .pop()
        .map_or_else(|| vec![0.0; days.len()], |s| s.values)
}

/// `scale × part / whole` per day, 0 where `whole` is 0.
fn ratio(part: &[f64], whole: &[f64], scale: f64) -> Vec<f64> {
    part.iter()
        .zip(whole)
        .map(|(p, w)| if *w > 0.0 { scale * p / w } else { 0.0 })
        .collect()
}

/// One series per outcome (each in the colour that means it), summed per day; an outcome without rows is zeros.
type Outcome<R> = (&'static str, &'static str, fn(&R) -> f64);

fn outcomes<R>(
    days: &[NaiveDate],
    rows: &[R],
    day: impl Fn(&R) -> NaiveDate + Copy,
    parts: &[Outcome<R>],
) -> Vec<Series> {
    parts
        .iter()
        .map(|(name, colour, value)| Series {
            name: (*name).to_string(),
            values: total_per_day(days, rows, day, value),
            colour: Some(colour),
        })
        .collect()
}

/// Failed and bounced, as a share of deliveries.
fn failures(row: &DeliveryRollup) -> f64 {
    (row.failed + row.bounced) as f64
}

pub(super) async fn analytics(
    State(state): State<ApiState>,
    Session(caller): Session,
    PageQuery(q): PageQuery<AnalyticsQuery>,
) -> Response {
    let span = q.days.filter(|d| RANGES.contains(d)).unwrap_or(30);
    let to = Utc::now().date_naive();
    let from = to
        .checked_sub_days(Days::new(u64::from(span - 1)))
        .unwrap_or(to);
    let filter = match RollupFilter::new(from, to, None, None, None) {
        Ok(filter) => filter,
        Err(error) => return failure(Some(&caller), error),
    };
    let data = match rollups::show(&state.pool, &filter).await {
        Ok(data) => data,
        Err(error) => return failure(Some(&caller), error),
    };
    let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
    let labels: Vec<String> = days.iter().map(|d| d.format("%m-%d").to_string()).collect();
    let computed = data.days.len();

    let by_channel = per_day(
        &days,
        &data.deliveries,
        |r| r.day,
        |r| r.channel.clone(),
        |r| r.deliveries as f64,
    );
    let by_provider = per_day(
        &days,
        &data.deliveries,
        |r| r.day,
        |r| {
            if r.provider.is_empty() {
                "(none tried)".to_string()
            } else {
                format!("{} · {}", r.channel, r.provider)
            }
        },
        |r| r.deliveries as f64,
    );
    let failed_by_channel = per_day(
        &days,
        &data.deliveries,
        |r| r.day,
        |r| r.channel.clone(),
        failures,
    );
    let rates: Vec<Series> = by_channel
        .iter()
        .zip(&failed_by_channel)
        .map(|(all, failed)| Series {
            name: all.name.clone(),
            values: ratio(&failed.values, &all.values, 100.0),
            colour: None,
        })
        .collect();
    // Percentiles do not add up: each day's is the mean of the rows' percentiles weighted by their accepted
    // deliveries, which the chart's title says.
    type Pick = fn(&DeliveryRollup) -> Option<f64>;
    let picks: [(&str, Pick); 3] = [
        ("p50", |r| r.accept_p50_ms),
        ("p95", |r| r.accept_p95_ms),
        ("p99", |r| r.accept_p99_ms),
    ];
    let latency: Vec<Series> = picks
        .iter()
        .map(|(name, pick)| {
            let weighted = total_per_day(
                &days,
                &data.deliveries,
                |r| r.day,
                |r| pick(r).map_or(0.0, |ms| ms * r.accepted as f64),
            );
            let weights = total_per_day(
                &days,
                &data.deliveries,
                |r| r.day,
                |r| pick(r).map_or(0.0, |_| r.accepted as f64),
            );
            Series {
                name: (*name).to_string(),
                values: ratio(&weighted, &weights, 1.0),
                colour: None,
            }
        })
        .collect();
    let jobs = outcomes(
        &days,
        &data.jobs,
        |r| r.day,
        &[
            ("completed", chart::GOOD, |r: &JobRollup| r.completed as f64),
            ("dead", chart::BAD, |r: &JobRollup| r.dead as f64),
        ],
    );
    let runs = outcomes(
        &days,
        &data.runs,
        |r| r.day,
        &[
            ("completed", chart::GOOD, |r: &RunRollup| r.completed as f64),
            ("failed", chart::BAD, |r: &RunRollup| r.failed as f64),
            ("cancelled", chart::NEUTRAL, |r: &RunRollup| {
                r.cancelled as f64
            }),
        ],
    );

    let mut providers: BTreeMap<(String, String), [f64; 5]> = BTreeMap::new();
    for row in &data.deliveries {
        let entry = providers
            .entry((row.channel.clone(), row.provider.clone()))
            .or_default();
        entry[0] += row.deliveries as f64;
        entry[1] += row.accepted as f64;
        entry[2] += failures(row);
        entry[3] += row.accept_p95_ms.map_or(0.0, |ms| ms * row.accepted as f64);
        entry[4] += if row.accept_p95_ms.is_some() {
            row.accepted as f64
        } else {
            0.0
        };
    }
    let provider_rows: String = providers
        .iter()
        .map(|((channel, provider), [n, accepted, failed, p95, weight])| {
            format!(
                r#"<tr><td>{channel}</td><td>{provider}</td><td class="n">{n:.0}</td><td class="n">{accepted:.0}</td><td class="n">{failed:.0}</td><td class="n">{rate:.1} %</td><td class="n">{p95}</td></tr>"#,
                channel = esc(channel),
                provider = esc(if provider.is_empty() { "(none tried)" } else { provider }),
                rate = if *n > 0.0 { 100.0 * failed / n } else { 0.0 },
                p95 = if *weight > 0.0 { format!("{:.0} ms", p95 / weight) } else { "–".into() },
            )
        })
        .collect();

    let ranges: String = RANGES
        .iter()
        .map(|d| {
            let current = if *d == span {
                r#" aria-current="page""#
            } else {
                ""
            };
            format!(r#"<a href="/ui/analytics?days={d}"{current}>{d} days</a>"#)
        })
        .collect();
    let body = format!(
        r#"<p class="tabs">{ranges}</p><p id="computed">{computed} of {span} days computed (the clock rolls each day up after it ends; <code>herald rollup</code> computes one now).{truncated}</p><h2>Deliveries per day, by channel</h2>{sends}<h2>Failure rate (failed and bounced), by channel</h2>{rates}<h2>Trigger to provider acceptance</h2>{latency}<h2>By provider</h2>{by_provider}{providers}<h2>Jobs per day</h2>{jobs}<h2>Runs per day</h2>{runs}"#,
        truncated = if data.truncated {
            " <strong>More rows than one answer carries: ask for fewer days.</strong>"
        } else {
            ""
        },
        sends = chart::stacked_bars(
            "sends",
            "Deliveries per day by channel",
            &labels,
            &by_channel
        ),
        rates = chart::lines(
            "failure-rate",
            "Share of deliveries failed or bounced, per day",
            &labels,
            &rates,
            "%"
        ),
        latency = chart::lines(
            "latency",
            "Acceptance latency per day (mean of the rows' percentiles, weighted by accepted deliveries)",
            &labels,
            &latency,
            " ms"
        ),
        by_provider = chart::stacked_bars(
            "sends-by-provider",
            "Deliveries per day by channel and provider",
            &labels,
            &by_provider
        ),
        providers = table(
            "providers",
            &[
                "Channel",
                "Provider",
                "#Deliveries",
                "#Accepted",
                "#Failed",
                "#Failure rate",
                "#p95 accept"
            ],
            &provider_rows,
            "No deliveries in these days."
        ),
        jobs = chart::stacked_bars("jobs", "Jobs finished per day", &labels, &jobs),
        runs = chart::stacked_bars("runs-chart", "Runs finished per day", &labels, &runs),
    );
    page("Analytics", Some(&caller), &body)
}
