//! One-click unsubscribe (RFC 8058): every email sent to a recipient carries
//! `List-Unsubscribe: <https://…/v1/unsubscribe/<token>>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`,
//! and templates get the same link as `{{ unsubscribe_url }}`.
//!
//! A token is `<payload>.<signature>`, both base64url without padding: the payload is compact JSON naming the
//! recipient, the workflow, its category and the channel, and when the token expires; the signature is
//! HMAC-SHA256 of the payload's base64 text under the fleet's key. Nothing is stored per token, so any API process
//! can check any token, and a token cannot be changed to name someone else without the key. `POST
//! /v1/unsubscribe/{token}` (no API key: mail clients call it) turns off the matching preference
//! ([`Preferences::opt_out`](super::Preferences::opt_out)).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgPool;

use super::RecipientsSettings;
use crate::channels::ChannelKind;

/// The longest token accepted: a payload naming a 255-character id of 4-byte characters (JSON-escaped as
/// surrogate pairs at worst) and two 64-character names, signed, fits.
pub const MAX_TOKEN_CHARS: usize = 4096;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The recipient.
    pub r: String,
    /// The workflow.
    pub w: String,
    /// Its category, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<String>,
    /// The channel.
    pub ch: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
}

impl Claims {
    pub fn channel(&self) -> Option<ChannelKind> {
        ChannelKind::parse(&self.ch)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the unsubscribe link is malformed")]
    Malformed,
    #[error("the unsubscribe link's signature does not match")]
    Forged,
    #[error("the unsubscribe link has expired")]
    Expired,
}

/// Makes and checks tokens with the fleet's key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
    ttl: chrono::Duration,
    public_url: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key", &"<redacted>")
            .field("public_url", &self.public_url)
            .finish()
    }
}

impl Signer {
    /// The configured key, or the fleet's generated one (made on first use and kept in the database).
    pub async fn load(pool: &PgPool, settings: &RecipientsSettings) -> Result<Self, sqlx::Error> {
        let key = match &settings.signing_secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => super::store::secret(pool, "unsubscribe").await?,
        };
        Ok(Self::new(key, settings))
    }

    pub fn new(key: Vec<u8>, settings: &RecipientsSettings) -> Self {
        Self {
            key,
            ttl: chrono::Duration::days(i64::from(settings.unsubscribe_ttl_days)),
            public_url: settings.public_url.trim_end_matches('/').to_string(),
        }
    }

    /// A token for these claims, expiring `ttl` after `now`.
    pub fn token(
        &self,
        recipient: &str,
        workflow: &str,
        category: Option<&str>,
        channel: ChannelKind,
        now: DateTime<Utc>,
    ) -> String {
        let claims = Claims {
            r: recipient.into(),
            w: workflow.into(),
            c: category.map(str::to_string),
            ch: channel.as_str().into(),
            exp: (now + self.ttl).timestamp(),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&payload));
        format!("{payload}.{signature}")
    }

    /// The link a token is used at.
    pub fn url(&self, token: &str) -> String {
        format!("{}/v1/unsubscribe/{token}", self.public_url)
    }

    /// The claims of a genuine token that has not expired at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.hmac();
        mac.update(payload.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Forged)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    fn hmac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts every key length"),
        }
    }

    fn mac(&self, payload: &str) -> Vec<u8> {
        let mut mac = self.hmac();
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(key: &str) -> Signer {
        Signer::new(key.as_bytes().to_vec(), &RecipientsSettings::default())
    }

    #[test]
    fn a_token_round_trips_and_nothing_else_does() {
        let now = Utc::now();
        let signer = signer("k".repeat(32).as_str());
        let token = signer.token("ada", "promo", Some("marketing"), ChannelKind::Email, now);
        let claims = signer.verify(&token, now).unwrap();
        assert_eq!(
            (claims.r.as_str(), claims.c.as_deref()),
            ("ada", Some("marketing"))
        );

        // Another key's token, and a payload changed to name someone else, are forged.
        let other = signer_with_other_key().token("ada", "promo", None, ChannelKind::Email, now);
        assert_eq!(signer.verify(&other, now), Err(TokenError::Forged));
        let (_, signature) = token.split_once('.').unwrap();
        let bob =
            URL_SAFE_NO_PAD.encode(br#"{"r":"bob","w":"promo","ch":"email","exp":9999999999}"#);
        assert_eq!(
            signer.verify(&format!("{bob}.{signature}"), now),
            Err(TokenError::Forged)
        );
        // Expired at its time; malformed shapes.
        let later = now + chrono::Duration::days(61);
        assert_eq!(signer.verify(&token, later), Err(TokenError::Expired));
        for bad in ["", "abc", "a.b.c", "!!.!!", &"a".repeat(2000)] {
            assert!(signer.verify(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_longest_id_in_the_widest_characters_still_fits() {
        let now = Utc::now();
        let signer = signer("k".repeat(32).as_str());
        let id = "\u{1F600}".repeat(255);
        let token = signer.token(
            &id,
            &"w".repeat(64),
            Some(&"c".repeat(64)),
            ChannelKind::Email,
            now,
        );
        assert_eq!(signer.verify(&token, now).unwrap().r, id);
    }

    fn signer_with_other_key() -> Signer {
        signer("z".repeat(32).as_str())
    }
}
