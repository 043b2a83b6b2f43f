//! `[templates]`: where the catalogue's files live.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSettings {
    /// Template, layout and partial files; synced at start of `up`, `api` and `worker` if the folder exists.
    pub dir: PathBuf,
}

impl Default for TemplateSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("templates"),
        }
    }
}
