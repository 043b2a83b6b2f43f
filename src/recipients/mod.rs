//! Recipients: the people herald notifies. One profile per person under the caller's own id, with every channel
//! address (email, phone, push devices, chat handles), a locale and time zone, custom data, and the
//! preferences every send respects; topics group them for fan-out.
//!
//! * [`types`]: the parsed values of a profile (email address, E.164 number, device, IANA zone, BCP 47 tag);
//! * [`profile`]: a profile document as the API and the Kafka bridge take it, parsed field by field;
//! * [`store`]: the tables (`herald_recipients`, devices, topic members) and every statement on them;
//! * [`preferences`]: opt-outs by channel, workflow and category, and how a send decides;
//! * [`quiet_hours`]: when a window in the recipient's time zone next opens;
//! * [`unsubscribe`]: signed, expiring one-click unsubscribe tokens (RFC 8058).
//!
//! Sending to a recipient (resolving addresses at send time, skipping what preferences forbid), topic fan-out and
//! erase are the workflow engine's (`workflow::engine`, `workflow::fanout`, `workflow::erase`): they change runs
//! and deliveries too. See `docs/recipients.md`.

pub mod preferences;
pub mod profile;
pub mod quiet_hours;
mod settings;
mod sql;
pub mod store;
pub mod types;
pub mod unsubscribe;

pub use preferences::Preferences;
pub use profile::Profile;
pub use settings::RecipientsSettings;
pub use store::{Recipient, SendProfile};
pub use types::{DeviceProvider, RecipientId, valid_name};

/// What the recipient store answers when it cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RecipientsError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Field problems, as (field path, message).
    #[error("invalid input: {}", .0.iter().map(|(f, m)| format!("{f} {m}")).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<(String, String)>),
    #[error("recipient `{0}` not found")]
    NotFound(String),
}
