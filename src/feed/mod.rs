//! The in-app feed: the built-in `in_app` channel stores each message as a feed item of its recipient, which the
//! product's own UI lists, counts, marks and follows live.
//!
//! * [`store`]: the items (`herald_feed_items`): the channel that writes them ([`FeedChannel`]), listing with
//!   cursors and filters, unseen and unread counts, marking seen, read, unread, archived (one or many), erasure;
//! * [`tokens`]: recipient-scoped tokens a customer's backend mints for a browser, which open only that
//!   recipient's feed;
//! * [`live`]: one `LISTEN` connection per API process, waking the Server-Sent-Events streams of the recipients
//!   whose feed changed (a write anywhere in the fleet `NOTIFY`s), so any API process serves any recipient.
//!
//! States: an item is *unseen* until shown (`seen_at`), *unread* until opened (`read_at`), and *archived* once the
//! recipient dismisses it; archived items leave the default listing and the counts.

pub mod live;
pub mod retention;
mod settings;
mod sql;
pub mod store;
pub mod tokens;

pub use settings::FeedSettings;
pub use store::{FeedChannel, FeedCounts, FeedItem, FeedPage, FeedQuery, Mark};

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
}
