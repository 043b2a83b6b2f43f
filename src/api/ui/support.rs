//! Support's view: search deliveries (by recipient, status, channel, provider, time) and a recipient's page
//! (profile, devices, preferences, suppressions, recent runs and deliveries) that answers "why was this person
//! not notified?" from what was recorded: the skip reasons of sends not made (preference, quiet hours,
//! suppression, no address), failures, suppressed addresses and devices providers reported gone.

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;

use super::html::{encode, esc, esc_short, given, pretty, query, table, time, time_or_dash};
use super::runs::{delivery_table, run_rows, runs_table};
use super::{ApiState, PageQuery, Session, failure, page};
use crate::api::error::ApiError;
use crate::api::extract::ApiPath;
use crate::channels::DeliveryStatus;
use crate::channels::deliveries::{self, DeliverySearch, SEARCH_BUDGET};
use crate::db::cancelled_for_time;
use crate::recipients::RecipientId;
use crate::recipients::store::{self, ListFilter};
use crate::workflow::RunFilter;

/// Deliveries a search page shows.
const PAGE: i64 = 50;

#[derive(Deserialize, Default)]
pub(super) struct DeliveryQuery {
    recipient: Option<String>,
    status: Option<String>,
    channel: Option<String>,
    provider: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Read as a number here, so that a bad one is ignored alone (not the whole query).
    before: Option<String>,
}

/// A `datetime-local` field (`2026-12-03T09:00`, read as UTC) or an RFC 3339 time.
fn parse_time(value: Option<&str>) -> Option<DateTime<Utc>> {
    let value = value?.trim();
    if value.is_empty() {
        return None;
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(value, f).ok())
                .map(|t| t.and_utc())
        })
}

/// Longest recipient term (an email address may be 320 characters).
const MAX_TERM: usize = 320;

/// The search's filters, each either absent or usable.
fn check_filters(q: &DeliveryQuery) -> Result<(), ApiError> {
    if given(&q.recipient).is_some_and(|t| t.chars().count() > MAX_TERM) {
        return Err(ApiError::field(
            "recipient",
            format!("is longer than {MAX_TERM} characters"),
        ));
    }
    if let Some(status) = given(&q.status)
        && DeliveryStatus::parse(status).is_none()
    {
        return Err(ApiError::field(
            "status",
            format!("{status:?} is not a delivery status"),
        ));
    }
    for (name, value) in [("channel", &q.channel), ("provider", &q.provider)] {
        if given(value).is_some_and(|v| v.len() > 64) {
            return Err(ApiError::field(name, "is longer than 64 characters"));
        }
    }
    for (name, value) in [("since", &q.since), ("until", &q.until)] {
        if given(value).is_some() && parse_time(value.as_deref()).is_none() {
            return Err(ApiError::field(
                name,
                "is not a time (2026-12-03T09:00, UTC)",
            ));
        }
    }
    Ok(())
}

/// A short word (a channel or provider name) or nothing.
fn word(value: Option<&str>) -> Option<&str> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 64)
}

/// The recipient ids a support person's term names: the id itself when a profile has it, else the profiles
/// with that email address or phone number (through their indexes). At most 20. A term that is a valid id but has
/// no profile (erased, or never stored) still names that id: its runs and deliveries remain.
async fn recipients_named(state: &ApiState, term: &str) -> Result<Vec<String>, sqlx::Error> {
    let term = term.trim();
    let is_id = RecipientId::parse(term).is_ok();
    if is_id && store::get(&state.pool, term).await?.is_some() {
        return Ok(vec![term.to_string()]);
    }
    let filter = if term.contains('@') {
        ListFilter {
            email: Some(term),
            limit: 20,
            ..ListFilter::default()
        }
    } else if term.starts_with('+') {
        ListFilter {
            phone: Some(term),
            limit: 20,
            ..ListFilter::default()
        }
    } else {
        return Ok(if is_id {
            vec![term.to_string()]
        } else {
            Vec::new()
        });
    };
    let found: Vec<String> = store::list(&state.pool, &filter)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    Ok(if found.is_empty() && is_id {
        vec![term.to_string()]
    } else {
        found
    })
}

/// The note a search that ran out of time shows.
fn out_of_time() -> String {
    format!(
        r#"<p class="warn" role="alert">The search read for longer than its budget ({SEARCH_BUDGET}) without filling a page: name a recipient or a narrower time.</p>"#
    )
}

/// Deliveries, newest first, by recipient (id, email or phone), status, channel, provider and time.
pub(super) async fn deliveries(
    State(state): State<ApiState>,
    Session(caller): Session,
    PageQuery(q): PageQuery<DeliveryQuery>,
) -> Response {
    // Every filter given must be usable: one that is not is refused, never dropped (a search silently widened to
    // every delivery would answer a question nobody asked).
    if let Err(error) = check_filters(&q) {
        return failure(Some(&caller), error);
    }
    let term = q
        .recipient
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let ids = match term {
        Some(term) => match recipients_named(&state, term).await {
            Ok(ids) => Some(ids),
            Err(error) => return failure(Some(&caller), error),
        },
        None => None,
    };
    let status = given(&q.status).and_then(DeliveryStatus::parse);
    let channel = word(q.channel.as_deref());
    let provider = word(q.provider.as_deref());
    let since = parse_time(q.since.as_deref());
    let until = parse_time(q.until.as_deref());
    let search = DeliverySearch {
        recipient_ids: ids.as_deref(),
        status,
        channel,
        provider,
        since,
        until,
        before_id: q.before.as_deref().and_then(|b| b.parse().ok()),
        // One more than a page tells whether there is an older page.
        limit: PAGE + 1,
    };
    let (mut found, problem) = match ids.as_deref() {
        // A term that names nobody finds nothing.
        Some([]) => (Vec::new(), String::new()),
        _ => match deliveries::search(&state.pool, &search).await {
            Ok(found) => (found, String::new()),
            Err(error) if cancelled_for_time(&error) => (Vec::new(), out_of_time()),
            Err(error) => return failure(Some(&caller), error),
        },
    };
    let more = found.len() as i64 > PAGE;
    found.truncate(PAGE as usize);
    let nobody = match (term, &ids) {
        (Some(term), Some(ids)) if ids.is_empty() => {
            format!(
                r#"<p class="warn">No recipient is named {}.</p>"#,
                esc(term)
            )
        }
        _ => String::new(),
    };
    let options: String = std::iter::once("")
        .chain(DeliveryStatus::ALL.iter().map(|s| s.as_str()))
        .map(|value| {
            let selected = if Some(value) == status.map(DeliveryStatus::as_str) {
                " selected"
            } else {
                ""
            };
            let label = if value.is_empty() { "any" } else { value };
            format!(r#"<option value="{value}"{selected}>{label}</option>"#)
        })
        .collect();
    let since_text = since.map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string());
    let until_text = until.map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string());
    let older = match found.last() {
        Some(last) if more => format!(
            r#"<p><a href="/ui/deliveries{}">Older deliveries →</a></p>"#,
            query(&[
                ("recipient", term),
                ("status", status.map(DeliveryStatus::as_str)),
                ("channel", channel),
                ("provider", provider),
                ("since", since_text.as_deref()),
                ("until", until_text.as_deref()),
                ("before", Some(&last.id.to_string())),
            ])
        ),
        _ => String::new(),
    };
    let recipient_link = match ids.as_deref() {
        Some([one]) => format!(
            r#"<p><a href="/ui/recipients/{}">Open {}'s page</a></p>"#,
            encode(one),
            esc(one)
        ),
        _ => String::new(),
    };
    let body = format!(
        r#"<form class="filters" method="get" action="/ui/deliveries"><label>Recipient (id, email or phone)<input id="recipient" name="recipient" value="{recipient}"></label><label>Status<select name="status">{options}</select></label><label>Channel<input name="channel" value="{channel}" size="8"></label><label>Provider<input name="provider" value="{provider}" size="10"></label><label>Since (UTC)<input type="datetime-local" name="since" value="{since}"></label><label>Until (UTC)<input type="datetime-local" name="until" value="{until}"></label><button type="submit" id="search">Search</button></form>{problem}{nobody}{recipient_link}{table}{older}"#,
        recipient = esc(term.unwrap_or("")),
        channel = esc(channel.unwrap_or("")),
        provider = esc(provider.unwrap_or("")),
        since = since_text.unwrap_or_default(),
        until = until_text.unwrap_or_default(),
        table = delivery_table("deliveries", &found),
    );
    page("Deliveries", Some(&caller), &body)
}

#[derive(Deserialize, Default)]
pub(super) struct FindQuery {
    q: Option<String>,
}

/// Finds a recipient by id, email or phone: one match opens their page, several are listed.
pub(super) async fn find_recipient(
    State(state): State<ApiState>,
    Session(caller): Session,
    PageQuery(q): PageQuery<FindQuery>,
) -> Response {
    let term =
        q.q.as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 320);
    let Some(term) = term else {
        return Redirect::to("/ui/deliveries").into_response();
    };
    let ids = match recipients_named(&state, term).await {
        Ok(ids) => ids,
        Err(error) => return failure(Some(&caller), error),
    };
    match ids.as_slice() {
        [one] => Redirect::to(&format!("/ui/recipients/{}", encode(one))).into_response(),
        [] => failure(
            Some(&caller),
            ApiError::not_found(format!("no recipient is named {term}")),
        ),
        many => {
            let rows: String = many
                .iter()
                .map(|id| {
                    format!(
                        r#"<tr><td><a href="/ui/recipients/{}">{}</a></td></tr>"#,
                        encode(id),
                        esc(id)
                    )
                })
                .collect();
            page(
                "Recipients",
                Some(&caller),
                &table("recipients", &["Recipient"], &rows, ""),
            )
        }
    }
}

/// The statuses of a send that did not reach the person.
fn not_delivered(status: DeliveryStatus) -> bool {
    matches!(
        status,
        DeliveryStatus::Skipped
            | DeliveryStatus::Suppressed
            | DeliveryStatus::Failed
            | DeliveryStatus::Bounced
            | DeliveryStatus::Unknown
    )
}

/// A recipient: profile, devices, preferences, suppressions, recent runs and deliveries, and why sends were not
/// made.
pub(super) async fn recipient_page(
    State(state): State<ApiState>,
    Session(caller): Session,
    ApiPath(id): ApiPath<String>,
) -> Response {
    if RecipientId::parse(&id).is_err() {
        return failure(Some(&caller), ApiError::not_found("no such recipient"));
    }
    let profile = match store::get(&state.pool, &id).await {
        Ok(profile) => profile,
        Err(error) => return failure(Some(&caller), error),
    };
    let runs = match state
        .engine
        .list_runs(&RunFilter {
            recipient: Some(id.clone()),
            limit: 20,
            ..RunFilter::default()
        })
        .await
    {
        Ok(runs) => runs,
        Err(error) => return failure(Some(&caller), error),
    };
    let ids = [id.clone()];
    let recent = DeliverySearch {
        recipient_ids: Some(&ids),
        limit: 50,
        ..DeliverySearch::default()
    };
    let skipped = DeliverySearch {
        status: Some(DeliveryStatus::Skipped),
        limit: 20,
        ..recent.clone()
    };
    // A recipient with a very long history may outlast a search's budget: the page says so and shows the rest.
    let mut problem = String::new();
    let mut read =
        async |search: &DeliverySearch<'_>| match deliveries::search(&state.pool, search).await {
            Ok(found) => Ok(found),
            Err(error) if cancelled_for_time(&error) => {
                problem = out_of_time();
                Ok(Vec::new())
            }
            Err(error) => Err(error),
        };
    let sends = match read(&recent).await {
        Ok(found) => found,
        Err(error) => return failure(Some(&caller), error),
    };
    let skips = match read(&skipped).await {
        Ok(found) => found,
        Err(error) => return failure(Some(&caller), error),
    };
    // An erased or never-created profile still has history worth showing (runs, deliveries by id).
    let Some(profile) = profile else {
        let body = format!(
            r#"{problem}<p class="warn" id="no-profile">No profile: this id was never stored, or was erased. Sends to it are skipped as <code>no_address</code>.</p><h2>Recent runs</h2>{}<h2>Recent deliveries</h2>{}"#,
            runs_table("runs", &run_rows(&runs)),
            delivery_table("deliveries", &sends),
        );
        return page(&format!("Recipient {id}"), Some(&caller), &body);
    };
    let mut addresses: Vec<(String, String)> = Vec::new();
    if let Some(email) = &profile.email {
        addresses.push(("email".into(), email.clone()));
    }
    if let Some(phone) = &profile.phone {
        addresses.push(("sms".into(), phone.clone()));
    }
    for device in &profile.devices.0 {
        addresses.push(("push".into(), device.token.clone()));
    }
    if let Some(handles) = profile.chat.0.as_object() {
        for handle in handles.values().filter_map(|h| h.as_str()) {
            addresses.push(("chat".into(), handle.to_string()));
        }
    }
    let suppressions = match deliveries::suppressions_of(&state.pool, &addresses).await {
        Ok(found) => found,
        Err(error) => return failure(Some(&caller), error),
    };

    // Why was this person not notified: every recorded reason, newest first.
    let mut reasons = String::new();
    let mut seen = std::collections::HashSet::new();
    for d in skips
        .iter()
        .chain(sends.iter().filter(|d| not_delivered(d.status)))
    {
        if !seen.insert(d.id) {
            continue;
        }
        reasons.push_str(&format!(
            r#"<tr data-id="{id}"><td class="wide">{at}</td><td><a href="/ui/runs/{run}">run {run}</a> · {node}</td><td>{channel}</td><td class="warn">{status}</td><td class="reason">{reason}</td></tr>"#,
            id = d.id,
            at = time(d.created_at),
            run = d.run_id,
            node = esc(&d.node_id),
            channel = esc(&d.channel),
            status = d.status.as_str(),
            reason = esc_short(d.error.as_deref().unwrap_or("(no reason recorded)"), 300),
        ));
    }
    for s in &suppressions {
        reasons.push_str(&format!(
            r#"<tr><td class="wide">{at}</td><td>–</td><td>{channel}</td><td class="warn">suppressed address</td><td class="reason">{address}: {reason}{by}</td></tr>"#,
            at = time(s.created_at),
            channel = esc(&s.channel),
            address = esc_short(&s.address, 80),
            reason = esc(&s.reason),
            by = s.provider.as_deref().map_or(String::new(), |p| format!(" (reported by {})", esc(p))),
        ));
    }
    for device in profile.devices.0.iter().filter(|d| !d.active) {
        reasons.push_str(&format!(
            r#"<tr><td class="wide">{at}</td><td>–</td><td>push</td><td class="warn">device gone</td><td class="reason">{provider} device {label}: {reason}</td></tr>"#,
            at = time_or_dash(device.deactivated_at),
            provider = device.provider.as_str(),
            label = esc(device.label.as_deref().unwrap_or("")),
            reason = esc(device.deactivated_reason.as_deref().unwrap_or("deactivated")),
        ));
    }

    let devices: String = profile
        .devices
        .0
        .iter()
        .map(|d| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                d.provider.as_str(),
                esc(d.label.as_deref().unwrap_or("")),
                esc_short(&d.token, 40),
                if d.active {
                    "active".to_string()
                } else {
                    format!(
                        "gone: {}",
                        esc(d.deactivated_reason.as_deref().unwrap_or(""))
                    )
                },
            )
        })
        .collect();
    let body = format!(
        r#"{problem}<dl><dt>Email</dt><dd>{email}</dd><dt>Phone</dt><dd>{phone}</dd><dt>Locale</dt><dd>{locale}</dd><dt>Time zone</dt><dd>{zone}</dd><dt>Updated</dt><dd>{updated}</dd></dl><p><a href="/ui/deliveries?recipient={q}">Search all their deliveries</a> · <a href="/ui/runs?recipient={q}">all their runs</a></p><h2 id="why">Why was this person not notified?</h2>{reasons}<h2>Devices</h2>{devices}<h2>Preferences</h2><pre id="preferences">{preferences}</pre><h2>Chat handles and data</h2><pre>{chat}</pre><pre>{data}</pre><h2>Recent runs</h2>{runs}<h2>Recent deliveries</h2>{sends}"#,
        email = esc(profile.email.as_deref().unwrap_or("–")),
        phone = esc(profile.phone.as_deref().unwrap_or("–")),
        locale = esc(profile.locale.as_deref().unwrap_or("–")),
        zone = esc(profile.timezone.as_deref().unwrap_or("–")),
        updated = time(profile.updated_at),
        q = encode(&id),
        reasons = table(
            "not-notified",
            &["~When", "Where", "Channel", "What", "Reason"],
            &reasons,
            "Nothing recorded: no send was skipped, suppressed or failed, no address is suppressed and no device is gone."
        ),
        devices = table(
            "devices",
            &["Provider", "Label", "Token", "State"],
            &devices,
            "No devices."
        ),
        preferences = pretty(&profile.preferences.0),
        chat = pretty(&profile.chat.0),
        data = pretty(&profile.data.0),
        runs = runs_table("runs", &run_rows(&runs)),
        sends = delivery_table("deliveries", &sends),
    );
    page(&format!("Recipient {id}"), Some(&caller), &body)
}
