//! The vonage adapter (not built yet).

use std::sync::Arc;

use crate::channels::provider::{Provider, ProviderConfigError};

pub fn build(_settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    Err(ProviderConfigError::new(
        "vonage",
        "this adapter is not built yet",
    ))
}
