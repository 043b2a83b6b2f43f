//! What a recipient asked for: opt-outs by channel, by workflow and by category, read when an action is about to
//! send (not when its run started, so an opt-out made a minute ago holds).
//!
//! The document (`GET/PUT /v1/recipients/{id}/preferences`):
//! ```json
//! { "channels":   { "sms": false },
//!   "workflows":  { "weekly-digest": { "all": false } },
//!   "categories": { "marketing": { "email": false } } }
//! ```
//! A switch names a channel (`email`, `sms`, `push`, `chat`) or `all`. The most specific switch that is set
//! decides, in this order: the workflow's switch for the channel, then its `all`; the category's switch for the
//! channel, then its `all`; the channel's own switch. Nothing set: the send goes out. So a person who turned off
//! email everywhere can still keep one workflow's email on, and a workflow's own switch beats its category's.
//! `critical` workflows and actions (password resets, security alerts) ignore all of it: see `docs/recipients.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::types::valid_name;
use crate::channels::ChannelKind;

/// Most workflows, and most categories, one document may name.
pub const MAX_ENTRIES: usize = 200;

/// On/off by channel name or `all`.
pub type Switches = BTreeMap<String, bool>;

/// A recipient's preferences (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Per channel, everywhere: `{"sms": false}`.
    #[serde(default)]
    pub channels: BTreeMap<String, bool>,
    /// Per workflow name: switches by channel or `all`.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, BTreeMap<String, bool>>)]
    pub workflows: BTreeMap<String, Switches>,
    /// Per category (a workflow's `category`): switches by channel or `all`.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, BTreeMap<String, bool>>)]
    pub categories: BTreeMap<String, Switches>,
}

impl Preferences {
    /// Every problem, as (field path, message).
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for name in self.channels.keys() {
            if ChannelKind::parse(name).is_none() {
                problems.push((format!("channels.{name}"), channel_message()));
            }
        }
        for (section, map) in [
            ("workflows", &self.workflows),
            ("categories", &self.categories),
        ] {
            if map.len() > MAX_ENTRIES {
                problems.push((
                    section.to_string(),
                    format!("at most {MAX_ENTRIES} entries"),
                ));
            }
            for (name, switches) in map.iter().take(MAX_ENTRIES + 1) {
                if !valid_name(name) {
                    problems.push((
                        format!("{section}.{}", truncate(name)),
                        "must be a name of 1-64 characters of [A-Za-z0-9_.-]".into(),
                    ));
                }
                for key in switches.keys() {
                    if key != "all" && ChannelKind::parse(key).is_none() {
                        problems.push((
                            format!("{section}.{}.{}", truncate(name), truncate(key)),
                            format!("{} or all", channel_message()),
                        ));
                    }
                }
            }
        }
        problems
    }

    /// Why a send on `channel` for `workflow` (of `category`) must not go out, or `None` if it may.
    pub fn opted_out(
        &self,
        channel: ChannelKind,
        workflow: &str,
        category: Option<&str>,
    ) -> Option<String> {
        let channel = channel.as_str();
        let decide = |switches: &Switches| {
            switches
                .get(channel)
                .map(|on| (*on, channel))
                .or_else(|| switches.get("all").map(|on| (*on, "all")))
        };
        if let Some((on, which)) = self.workflows.get(workflow).and_then(decide) {
            return (!on).then(|| format!("opted out of {which} for workflow {workflow}"));
        }
        if let Some(category) = category
            && let Some((on, which)) = self.categories.get(category).and_then(decide)
        {
            return (!on).then(|| format!("opted out of {which} for category {category}"));
        }
        match self.channels.get(channel) {
            Some(false) => Some(format!("opted out of {channel}")),
            _ => None,
        }
    }

    /// What one-click unsubscribe does: turns `channel` off for `category` if there is one, and for `workflow`
    /// whenever that workflow's own switch would otherwise let it through (a workflow's switch beats its
    /// category's), so the email the link came in is never sent again. Answers whether anything changed (a second
    /// click changes nothing).
    pub fn opt_out(
        &mut self,
        channel: ChannelKind,
        workflow: &str,
        category: Option<&str>,
    ) -> bool {
        let before = self.clone();
        let name = channel.as_str().to_string();
        if let Some(category) = category {
            self.categories
                .entry(category.to_string())
                .or_default()
                .insert(name.clone(), false);
        }
        if self.opted_out(channel, workflow, category).is_none() {
            self.workflows
                .entry(workflow.to_string())
                .or_default()
                .insert(name, false);
        }
        *self != before
    }
}

fn channel_message() -> String {
    format!(
        "must be a channel: {}",
        ChannelKind::ALL.map(|c| c.as_str()).join(", ")
    )
}

fn truncate(name: &str) -> String {
    name.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefs(json: serde_json::Value) -> Preferences {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_most_specific_switch_decides() {
        let p = prefs(serde_json::json!({
            "channels": {"email": false},
            "workflows": {"receipts": {"email": true}, "digest": {"all": false}},
            "categories": {"marketing": {"all": false}, "product": {"sms": false}}
        }));
        use ChannelKind::*;
        assert!(p.opted_out(Email, "welcome", None).is_some(), "channel off");
        assert_eq!(
            p.opted_out(Email, "receipts", Some("marketing")),
            None,
            "workflow on beats category and channel"
        );
        assert!(
            p.opted_out(Push, "digest", None)
                .unwrap()
                .contains("workflow digest")
        );
        assert!(
            p.opted_out(Push, "promo", Some("marketing"))
                .unwrap()
                .contains("category marketing")
        );
        assert_eq!(p.opted_out(Push, "promo", Some("product")), None);
        assert!(p.opted_out(Sms, "promo", Some("product")).is_some());
        assert_eq!(Preferences::default().opted_out(Sms, "x", Some("y")), None);
    }

    #[test]
    fn check_names_every_bad_key() {
        let p = prefs(serde_json::json!({
            "channels": {"fax": false},
            "workflows": {"bad name": {"email": false}, "ok": {"pigeon": true}},
        }));
        let fields: Vec<String> = p.check().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            ["channels.fax", "workflows.bad name", "workflows.ok.pigeon"]
        );
    }

    #[test]
    fn opt_out_prefers_the_category_and_always_stops_the_email_it_came_in() {
        let mut p = Preferences::default();
        assert!(p.opt_out(ChannelKind::Email, "promo", Some("marketing")));
        assert!(
            !p.opt_out(ChannelKind::Email, "promo", Some("marketing")),
            "a second click changes nothing"
        );
        assert!(p.opt_out(ChannelKind::Email, "welcome", None));
        assert!(!p.categories["marketing"]["email"]);
        assert!(!p.workflows["welcome"]["email"]);
        assert!(
            !p.workflows.contains_key("promo"),
            "the category switch is enough"
        );
        // A workflow switched on explicitly beats its category: the link turns the workflow off too.
        let mut p = prefs(serde_json::json!({"workflows": {"promo": {"all": true}}}));
        p.opt_out(ChannelKind::Email, "promo", Some("marketing"));
        assert!(
            p.opted_out(ChannelKind::Email, "promo", Some("marketing"))
                .is_some()
        );
        assert!(
            p.opted_out(ChannelKind::Push, "promo", Some("marketing"))
                .is_none()
        );
    }
}
