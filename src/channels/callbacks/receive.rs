//! Receiving one callback from start to end: authenticate it, confirm an SNS subscription if it asks for one,
//! and apply its events to deliveries. The HTTP handler only extracts the request and maps the error.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use super::{CallbackError, CallbackRequest, CallbackSettings, CallbackVerifier};
use crate::channels::deliveries::{self, Applied, CallbackUpdate};

// No doc comment: it would become the schema's description in `/openapi.json`, which has none.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackReceipt {
    /// Events in the callback.
    pub events: usize,
    /// Events that changed a delivery's status.
    pub moved: usize,
    /// Events applied before (the provider called twice).
    pub duplicates: usize,
    /// An SNS subscription was confirmed.
    pub subscription_confirmed: bool,
}

/// Delivery callbacks as a whole: the verifier, the deliveries they update, and the client that confirms SNS
/// subscriptions.
pub struct Callbacks {
    verifier: CallbackVerifier,
    pool: PgPool,
    /// Separate from the verifier's client, which refuses redirects for certificate fetches: confirmations keep
    /// reqwest's default redirect policy, as they always have.
    confirmer: reqwest::Client,
}

impl Callbacks {
    pub fn new(settings: CallbackSettings, pool: PgPool) -> Self {
        // No redirects: the checked SubscribeURL is the only URL ever fetched.
        let confirmer = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            verifier: CallbackVerifier::new(settings),
            pool,
            confirmer,
        }
    }

    pub fn settings(&self) -> &CallbackSettings {
        self.verifier.settings()
    }

    /// Handles `provider`'s callback. `path_and_query` is the path it called, query included: with
    /// `callbacks.public_url` (or else the Host header) it rebuilds the URL the provider signed.
    pub async fn receive(
        &self,
        provider: &str,
        headers: &http::HeaderMap,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<CallbackReceipt, CallbackError> {
        let url = self.called_url(headers, path_and_query);
        let request = CallbackRequest {
            headers,
            body,
            url: &url,
        };
        let outcome = self.verifier.verify(provider, &request).await?;
        let subscription_confirmed = match &outcome.subscribe_url {
            Some(url) => {
                self.confirm_subscription(url).await?;
                true
            }
            None => false,
        };
        let mut receipt = CallbackReceipt {
            events: outcome.events.len(),
            moved: 0,
            duplicates: 0,
            subscription_confirmed,
        };
        for event in &outcome.events {
            let update = CallbackUpdate {
                provider,
                event_key: &event.event_key,
                provider_message_id: &event.provider_message_id,
                status: event.status,
                recipient: event.recipient.as_deref(),
                suppress: event.suppress,
                reason: event.reason.as_deref(),
            };
            match deliveries::apply_callback(&self.pool, &update).await? {
                Applied::Duplicate => receipt.duplicates += 1,
                Applied::Applied { moved: true } => receipt.moved += 1,
                Applied::Applied { moved: false } => {}
            }
        }
        Ok(receipt)
    }

    /// The URL the provider called, as it saw it: `callbacks.public_url` (behind a proxy) or this request's Host.
    fn called_url(&self, headers: &http::HeaderMap, path_and_query: &str) -> String {
        match &self.settings().public_url {
            Some(base) => format!("{}{path_and_query}", base.trim_end_matches('/')),
            None => {
                let host = headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost");
                format!("http://{host}{path_and_query}")
            }
        }
    }

    async fn confirm_subscription(&self, url: &str) -> Result<(), CallbackError> {
        match self.confirmer.get(url).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(CallbackError::Subscription(format!(
                "SNS answered {} to the subscription confirmation",
                response.status()
            ))),
            Err(error) => Err(CallbackError::Subscription(format!(
                "cannot confirm the SNS subscription: {error}"
            ))),
        }
    }
}
