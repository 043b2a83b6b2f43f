//! The template catalogue: message content kept once, by name, and used by any workflow's actions
//! (`template: order-shipped`), with a variant per channel, layouts and partials for email, and per-locale
//! variants chosen by the recipient's locale.
//!
//! * [`document`]: the file format (`templates/*.yaml`, `POST /v1/templates`) and its validation;
//! * [`language`]: the minijinja environments, syntax checks, renders off the async executor;
//! * [`render`]: rendering a template for a channel and locale, with its layout, partials and the filters of
//!   [`format`] (locale-aware dates and numbers); a plain-text email part made from the HTML one when missing;
//! * [`catalog`]: stored versions (`herald_templates`), the sync of `templates/` at start, and the snapshot of the
//!   latest versions each process renders with (refreshed every few seconds);
//! * `herald templates check`: every file validated and rendered with its sample data, without a database.
//!
//! Versions are immutable, as workflow versions are. An action renders the latest version of its template at the
//! moment it sends: a new version reaches every process within [`catalog::REFRESH`].

pub mod catalog;
pub mod document;
pub mod format;
pub mod language;
pub mod render;
mod settings;
mod sql;

pub use catalog::{Catalogue, TemplateSummary};
pub use document::{Document, Kind};
pub use render::{Rendered, Snapshot};
pub use settings::TemplateSettings;

/// Instructions one render of one field may run (minijinja's fuel), as for workflow templates.
pub const FUEL: u64 = 200_000;

/// The longest a rendered field may be.
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TemplatesError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Problems with one or more documents, each naming the file (or `request`) and field.
    #[error("invalid template: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error(
        "version {version} of template `{name}` is already stored with different content; bump `version`"
    )]
    VersionConflict { name: String, version: i32 },
    #[error("{0} not found")]
    NotFound(String),
    /// Rendering failed (a missing variable, a budget spent, no variant for the channel).
    #[error("{0}")]
    Render(String),
    #[error("{0}")]
    Io(String),
}
