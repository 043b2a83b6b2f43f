//! Action nodes: render the message, decide whom it goes to, and send it through the channel layer, one delivery
//! per address.
//!
//! 1. `to` is an address template (raw), `{recipient: …}`, or absent (the run's recipient). A raw address is
//!    one target, sent as before recipients existed.
//! 2. For a recipient, their profile is read now, not when the run started, so a change made a minute ago
//!    holds. No profile, or no address for the channel: a `skipped` delivery (`no_address`). Preferences that
//!    switch this send off: a `skipped` delivery (`preference`), unless the action or its workflow is
//!    `critical`. Outside the action's quiet-hours `window` in the recipient's zone: the step parks until the
//!    window opens (a scheduled `resume` job; `critical` bypasses it). Either way the node completes and the
//!    run goes on.
//! 3. The addresses: email and phone from the profile; every active device of the action's push providers (one
//!    delivery each, each through its own provider); the chat handle of the first provider that has one.
//! 4. Each target is begun, sent and finished as `channels::deliveries` describes (no double send). A device its
//!    provider reports gone (APNs 410, FCM UNREGISTERED, Web Push 404/410) is deactivated on every profile that
//!    lists it. The node is `sent` if any target went out; a retryable failure of any target retries the node
//!    (targets already sent are found `sent` and skipped); otherwise the first permanent failure fails it.

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::{Value, json};

use super::definition::{Addressee, Node, NodeKind, Workflow};
use super::engine::Step;
use super::inline::Decision;
use super::steps::RunState;
use super::{Engine, NodeJob, Phase, expr};
use crate::channels::deliveries::{Begin, DeliveryKey, Finished};
use crate::channels::{ChannelKind, Message, SendError, UNSUBSCRIBE_URL};
use crate::feed::store::{CATEGORY_FIELD, WORKFLOW_FIELD};
use crate::queue::JobError;
use crate::recipients::{self, RecipientId, SendProfile, store};

/// One address a message goes to, and the providers that may carry it.
struct Target {
    address: String,
    providers: Vec<String>,
}

/// Whom one action's message goes to.
struct Addressed<'a> {
    targets: Vec<Target>,
    /// The recipient whose profile the targets came from.
    recipient: Option<&'a str>,
    /// An email's one-click unsubscribe link.
    unsubscribe: Option<String>,
}

impl Addressed<'_> {
    /// A raw address: one target, no profile.
    fn raw(target: Target) -> Self {
        Self {
            targets: vec![target],
            recipient: None,
            unsubscribe: None,
        }
    }
}

/// How early a resumed quiet-hours send may run and still count as in its window (clock skew between a worker
/// and the database that scheduled it).
const QUIET_HOURS_GRACE_MINUTES: i64 = 5;

/// What one target's send came to.
enum Outcome {
    Sent(Finished),
    /// Not sent, on a decision recorded earlier (already sent, suppressed, outcome unknown).
    Decided(&'static str),
    Failed(Finished, SendError),
}

impl Engine {
    pub(super) async fn send(
        &self,
        job: &NodeJob,
        run: &RunState,
        workflow: &Workflow,
        node: &Node,
        scope: &minijinja::Value,
    ) -> Result<Step, JobError> {
        let NodeKind::Action { to, .. } = &node.kind else {
            return Err(JobError::permanent("not an action node"));
        };
        let recipient = match to {
            Addressee::Raw(to) => {
                let address = to.render(scope).map_err(JobError::permanent)?;
                let NodeKind::Action { providers, .. } = &node.kind else {
                    return Err(JobError::permanent("not an action node"));
                };
                let target = Target {
                    address,
                    providers: providers.clone(),
                };
                return self
                    .deliver(job, run, node, scope, Addressed::raw(target))
                    .await;
            }
            Addressee::Recipient(id) => id.render(scope).map_err(JobError::permanent)?,
            Addressee::RunRecipient => run
                .context
                .pointer("/recipient/id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    JobError::permanent(
                        "the action has no `to` and its run was not started for a recipient",
                    )
                })?,
        };
        let recipient = RecipientId::parse(recipient.trim())
            .map_err(|e| JobError::permanent(format!("`to.recipient` {e}")))?;
        self.send_to_recipient(job, run, workflow, node, recipient.as_str())
            .await
    }

    async fn send_to_recipient(
        &self,
        job: &NodeJob,
        run: &RunState,
        workflow: &Workflow,
        node: &Node,
        id: &str,
    ) -> Result<Step, JobError> {
        let NodeKind::Action {
            channel,
            providers,
            critical,
            window,
            ..
        } = &node.kind
        else {
            return Err(JobError::permanent("not an action node"));
        };
        let profile = store::send_profile(&self.pool, id)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        let Some(profile) = profile else {
            return self
                .skip(job, run, node, id, "no_address: no recipient has this id")
                .await;
        };
        let critical = *critical || workflow.critical;
        if !critical {
            let category = workflow.category.as_deref();
            let opted_out = match profile.preferences() {
                Some(preferences) => preferences.opted_out(*channel, &workflow.name, category),
                None => Some("the stored preferences cannot be read".to_string()),
            };
            if let Some(reason) = opted_out {
                return self
                    .skip(job, run, node, id, &format!("preference: {reason}"))
                    .await;
            }
            // Outside the window: park until it opens. A resumed step looks again (the queue may have held it
            // past the window's end), with a few minutes' grace: the worker's clock may trail the database's,
            // which scheduled the resume at the opening.
            let grace = match job.phase {
                Phase::Run => chrono::Duration::zero(),
                _ => chrono::Duration::minutes(QUIET_HOURS_GRACE_MINUTES),
            };
            let zone = profile.zone();
            if let Some(window) = window
                && window.next_opening(Utc::now(), zone).is_some()
                && let Some(opening) = window.next_opening(Utc::now() + grace, zone)
            {
                return Ok(Step::SuspendUntil(opening));
            }
        }
        let targets = targets(*channel, providers, &profile, id);
        if targets.is_empty() {
            let reason = format!(
                "no_address: the profile has no {} address",
                channel.as_str()
            );
            return self.skip(job, run, node, id, &reason).await;
        }
        // Templates see the profile as `recipient`, and emails an unsubscribe link.
        let unsubscribe = if *channel == ChannelKind::Email {
            let signer = self
                .unsubscribe_signer()
                .await
                .map_err(|e| JobError::retry(e.to_string()))?;
            let category = workflow.category.as_deref();
            let token = signer.token(id, &workflow.name, category, *channel, Utc::now());
            Some(signer.url(&token))
        } else {
            None
        };
        let mut context = run.context.clone();
        if let Some(object) = context.as_object_mut() {
            object.insert("recipient".into(), profile.template_vars(id));
            if let Some(url) = &unsubscribe {
                object.insert(UNSUBSCRIBE_URL.into(), Value::String(url.clone()));
            }
        }
        let scope = expr::scope(&context, &super::engine::run_vars(job, workflow));
        let addressed = Addressed {
            targets,
            recipient: Some(id),
            unsubscribe,
        };
        self.deliver(job, run, node, &scope, addressed).await
    }

    /// Records a send not made on purpose, and completes the node (outcome `skipped`) so the run goes on.
    async fn skip(
        &self,
        job: &NodeJob,
        run: &RunState,
        node: &Node,
        recipient: &str,
        reason: &str,
    ) -> Result<Step, JobError> {
        let NodeKind::Action { channel, .. } = &node.kind else {
            return Err(JobError::permanent("not an action node"));
        };
        let shown = format!("recipient:{recipient}");
        let key = DeliveryKey {
            run_id: job.run,
            node: &job.node,
            recipient: &shown,
            channel: *channel,
            recipient_id: Some(recipient),
            workflow: &run.workflow,
            triggered_at: run.created_at,
        };
        let id = crate::channels::deliveries::skip(&self.pool, key, reason)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        let output = json!({
            "channel": channel.as_str(), "recipient": recipient, "delivery_id": id, "skipped": reason,
        });
        Ok(Step::done("skipped", output, &node.next))
    }

    /// An action's catalogue template rendered for its channel, in the recipient's locale (`recipient.locale`,
    /// else the trigger data's `locale`, else the default variant). A missing template, variant or variable fails
    /// the node (permanently: a retry renders the same); the catalogue unreachable is retried.
    async fn render_template(
        &self,
        name: &str,
        channel: ChannelKind,
        scope: &minijinja::Value,
    ) -> Result<BTreeMap<String, String>, JobError> {
        let snapshot = self
            .templates
            .snapshot()
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        let text = |value: Option<minijinja::Value>| {
            value.and_then(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_string))
        };
        let attr = |outer: &str, inner: &str| {
            scope
                .get_attr(outer)
                .ok()
                .and_then(|o| o.get_attr(inner).ok())
        };
        let locale = text(attr("recipient", "locale")).or_else(|| text(attr("trigger", "locale")));
        let render = |snapshot: &crate::templates::Snapshot| {
            crate::templates::language::off_the_executor_if(true, || {
                snapshot.render(name, channel.as_str(), locale.as_deref(), scope)
            })
        };
        let mut rendered = render(&snapshot);
        // Not in this process's snapshot, which may be a few seconds old: look at the database once before failing.
        if matches!(rendered, Err(crate::templates::TemplatesError::NotFound(_))) {
            let fresh = self
                .templates
                .fresh_snapshot()
                .await
                .map_err(|e| JobError::retry(e.to_string()))?;
            rendered = render(&fresh);
        }
        let rendered = rendered.map_err(|e| match e {
            crate::templates::TemplatesError::Database(_) => JobError::retry(e.to_string()),
            other => JobError::permanent(other.to_string()),
        })?;
        Ok(rendered.content)
    }

    /// Sends the rendered message to each target (see the module docs, step 4).
    async fn deliver(
        &self,
        job: &NodeJob,
        run: &RunState,
        node: &Node,
        scope: &minijinja::Value,
        addressed: Addressed<'_>,
    ) -> Result<Step, JobError> {
        let Addressed {
            targets,
            recipient,
            unsubscribe,
        } = addressed;
        let NodeKind::Action {
            channel,
            template,
            content,
            ..
        } = &node.kind
        else {
            return Err(JobError::permanent("not an action node"));
        };
        let mut rendered = match template {
            Some(name) => self.render_template(name, *channel, scope).await?,
            None => BTreeMap::new(),
        };
        for (field, template) in content {
            rendered.insert(
                field.clone(),
                template.render(scope).map_err(JobError::permanent)?,
            );
        }
        // A feed item records the workflow and its category (the feed filters by category).
        if *channel == ChannelKind::InApp {
            rendered.insert(WORKFLOW_FIELD.to_string(), run.workflow.clone());
            let workflow = self
                .catalog
                .version(&run.workflow, run.version)
                .await
                .map_err(super::engine::retryable)?;
            if let Some(category) = &workflow.category {
                rendered.insert(CATEGORY_FIELD.to_string(), category.clone());
            }
        }
        // The email's List-Unsubscribe headers (the adapters read it from the content; see `channels`).
        if let Some(url) = unsubscribe {
            rendered.entry(UNSUBSCRIBE_URL.to_string()).or_insert(url);
        }
        let sender = self.channels.get(*channel).ok_or_else(|| {
            JobError::permanent(format!("no channel is configured for {}", channel.as_str()))
        })?;
        let several = targets.len() > 1;
        let mut entries = Vec::with_capacity(targets.len());
        let (mut sent, mut failed, mut decided) = (Vec::new(), Vec::new(), Vec::new());
        for target in targets {
            let base = format!("run:{}:{}:{}", job.run, job.epoch, job.node);
            // Each device its own key, from its token (not its place in a list that may change between
            // attempts): a provider that deduplicates by key must not merge two devices.
            let idempotency_key = if several {
                format!("{base}:{}", short_digest(&target.address))
            } else {
                base
            };
            let message = Message {
                channel: *channel,
                providers: target.providers,
                to: target.address,
                content: rendered.clone(),
                idempotency_key,
            };
            let key = DeliveryKey {
                run_id: job.run,
                node: &job.node,
                recipient: &message.to,
                channel: *channel,
                recipient_id: recipient,
                workflow: &run.workflow,
                triggered_at: run.created_at,
            };
            let begun = match self.delivery_batches().begin(key).await {
                // The feed's insert is idempotent (the send's key is unique there): a send a crash left mid-way is
                // made again, where a provider's could not be.
                Ok(Begin::OutcomeUnknown { id }) if *channel == ChannelKind::InApp => {
                    Ok(Begin::Send { id })
                }
                other => other,
            };
            let outcome = match begun {
                Ok(Begin::Send { id }) => {
                    let report = sender.send(&message).await;
                    let finished = Finished::new(id, key, &report);
                    let entry = match &report.result {
                        Ok(ok) => json!({
                            "to": message.to, "provider": ok.provider,
                            "provider_message_id": ok.provider_message_id, "delivery_id": id,
                            "attempts": report.attempts,
                        }),
                        Err(error) => {
                            json!({"to": message.to, "delivery_id": id, "error": error.to_string()})
                        }
                    };
                    entries.push(entry);
                    match report.result {
                        Ok(_) => Outcome::Sent(finished),
                        Err(error) => Outcome::Failed(finished, error),
                    }
                }
                Ok(other) => {
                    let step = super::engine::skip_send(other, &message, &node.next)?;
                    let Step::Done(decision) = step else {
                        return Err(JobError::permanent(
                            "internal: a skipped send did not complete",
                        ));
                    };
                    if !several {
                        return Ok(Step::Done(with_recipient(decision, recipient)));
                    }
                    entries.push(decision.output);
                    Outcome::Decided(if decision.outcome == "sent" {
                        "sent"
                    } else {
                        "skipped"
                    })
                }
                Err(error) => return Err(JobError::retry(error.to_string())),
            };
            match outcome {
                Outcome::Sent(finished) => sent.push(finished),
                Outcome::Decided(what) => decided.push(what),
                Outcome::Failed(finished, error) => {
                    if let (SendError::Suppress(why), Some(_)) = (&error, recipient)
                        && *channel == ChannelKind::Push
                    {
                        self.device_gone(&message, why).await;
                    }
                    failed.push((finished, error));
                }
            }
        }
        let retry = failed.iter().position(|(_, e)| {
            matches!(
                e,
                SendError::Transient { .. } | SendError::Unavailable { .. }
            )
        });
        let any_sent = !sent.is_empty() || decided.contains(&"sent");
        // Failures are recorded now; sends with the step, unless the node is about to be retried.
        let mut record: Vec<Finished> = failed.iter().map(|(f, _)| f.clone()).collect();
        if retry.is_some() || !any_sent {
            record.append(&mut sent);
        }
        for finished in record {
            if let Err(error) = self.delivery_batches().finish(finished).await {
                // The delivery stays `sending`: the retry finds it so and does not send again.
                return Err(JobError::retry(error.to_string()));
            }
        }
        if let Some(position) = retry {
            return Err(job_error(failed.swap_remove(position).1));
        }
        if any_sent || (failed.is_empty() && !decided.is_empty()) {
            let outcome = if any_sent { "sent" } else { "skipped" };
            let output = if several {
                json!({"channel": channel.as_str(), "deliveries": entries})
            } else {
                let mut only = entries.pop().unwrap_or(Value::Null);
                only["channel"] = json!(channel.as_str());
                only
            };
            let decision = with_recipient(Decision::new(outcome, output, &node.next), recipient);
            return Ok(Step::Sent {
                decision,
                deliveries: sent,
            });
        }
        match failed.into_iter().next() {
            Some((_, error)) => Err(job_error(error)),
            None => Err(JobError::permanent(
                "internal: an action had nothing to send",
            )),
        }
    }

    /// A provider said a device is gone: it is not sent to again (the address is on the suppression list too).
    async fn device_gone(&self, message: &Message, why: &str) {
        let Some(provider) = message.providers.first() else {
            return;
        };
        match store::deactivate_device(&self.pool, provider, &message.to, why).await {
            Ok(count) => {
                tracing::info!(provider, profiles = count, "push device deactivated: {why}")
            }
            Err(error) => tracing::warn!(%error, provider, "could not deactivate a push device"),
        }
    }

    /// The unsubscribe signer, loaded on first use (the fleet's key may have to be read or made).
    pub async fn unsubscribe_signer(
        &self,
    ) -> Result<&recipients::unsubscribe::Signer, sqlx::Error> {
        self.unsubscribe
            .get_or_try_init(|| recipients::unsubscribe::Signer::load(&self.pool, &self.recipients))
            .await
    }
}

/// A decision's output naming the recipient it was for.
fn with_recipient(mut decision: Decision, recipient: Option<&str>) -> Decision {
    if let (Some(id), Value::Object(output)) = (recipient, &mut decision.output) {
        output.insert("recipient".into(), json!(id));
    }
    decision
}

/// The first 8 bytes of an address's SHA-256, as hex: a stable, short tag for it.
fn short_digest(address: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(address.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a failed send asks of the queue.
fn job_error(failure: SendError) -> JobError {
    match failure {
        SendError::Transient {
            message,
            retry_after: Some(after),
        } => JobError::RetryAfter(after, message),
        SendError::Transient {
            message,
            retry_after: None,
        } => JobError::Retry(message),
        SendError::Unavailable {
            message,
            retry_after,
        } => JobError::Snooze(
            retry_after.unwrap_or(std::time::Duration::from_secs(1)),
            message,
        ),
        SendError::Permanent(message) | SendError::Suppress(message) => {
            JobError::Permanent(message)
        }
    }
}

/// The push providers, in the order a device list is sent in when the action names none.
const PUSH_PROVIDERS: [&str; 3] = ["fcm", "apns", "webpush"];

/// A recipient's addresses for an action (module docs, step 3).
fn targets(
    channel: ChannelKind,
    providers: &[String],
    profile: &SendProfile,
    id: &str,
) -> Vec<Target> {
    let all = |address: &Option<String>| {
        address
            .iter()
            .map(|a| Target {
                address: a.clone(),
                providers: providers.to_vec(),
            })
            .collect()
    };
    match channel {
        ChannelKind::Email => all(&profile.email),
        ChannelKind::Sms => all(&profile.phone),
        ChannelKind::Push => {
            let named: Vec<&str> = if providers.is_empty() {
                PUSH_PROVIDERS.to_vec()
            } else {
                providers.iter().map(String::as_str).collect()
            };
            named
                .into_iter()
                .flat_map(|provider| {
                    profile.devices_of(provider).map(move |token| Target {
                        address: token.to_string(),
                        providers: vec![provider.to_string()],
                    })
                })
                .collect()
        }
        // The feed is addressed by the recipient's id.
        ChannelKind::InApp => vec![Target {
            address: id.to_string(),
            providers: Vec::new(),
        }],
        ChannelKind::Chat => {
            let handles = &profile.chat.0;
            let first = if providers.is_empty() {
                handles.iter().next()
            } else {
                providers.iter().find_map(|p| handles.get_key_value(p))
            };
            first
                .map(|(provider, handle)| Target {
                    address: handle.clone(),
                    providers: vec![provider.clone()],
                })
                .into_iter()
                .collect()
        }
    }
}
