//! Recipient tokens: what a browser holds to read and update one recipient's feed without an API key.
//!
//! The customer's backend, which knows who is logged in, mints a token for that recipient
//! (`POST /v1/recipients/{id}/feed/token`, an API key with the `enqueue` scope) and hands it to the page. A token
//! is `feed_<payload>.<signature>`: the payload names the recipient and the expiry (base64url JSON), the signature
//! is an HMAC-SHA256 with the fleet's feed key (made on first use and kept in the database, like the unsubscribe
//! key but a key of its own). It opens that recipient's feed routes and nothing else, until it expires (at most
//! `feed.token_max_ttl_secs`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgPool;

/// Every token starts so: an API key never does, so a request's bearer is told apart at a glance.
pub const PREFIX: &str = "feed_";

/// The longest token accepted (a recipient id is at most 255 characters).
const MAX_TOKEN_CHARS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature is not genuine")]
    Forged,
    #[error("the token has expired")]
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    /// The recipient.
    r: String,
    /// Expiry, Unix seconds.
    exp: i64,
}

/// Mints and checks tokens with the fleet's feed key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<redacted>)")
    }
}

impl TokenSigner {
    /// The fleet's feed key (made on first use, kept in the database).
    pub async fn load(pool: &PgPool) -> Result<Self, sqlx::Error> {
        Ok(Self::new(
            crate::recipients::store::secret(pool, "feed").await?,
        ))
    }

    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    /// A token for `recipient`, expiring at `expires`.
    pub fn mint(&self, recipient: &str, expires: DateTime<Utc>) -> String {
        let claims = Claims {
            r: recipient.to_string(),
            exp: expires.timestamp(),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signature =
            URL_SAFE_NO_PAD.encode(self.mac(payload.as_bytes()).finalize().into_bytes());
        format!("{PREFIX}{payload}.{signature}")
    }

    /// The recipient of a genuine token that has not expired at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<String, TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let body = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (payload, signature) = body.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        // Constant-time comparison.
        self.mac(payload.as_bytes())
            .verify_slice(&signature)
            .map_err(|_| TokenError::Forged)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(claims.r)
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts every key length"),
        };
        mac.update(payload);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_recipient_until_it_expires_and_nothing_else_passes() {
        let signer = TokenSigner::new(b"k".repeat(32));
        let now = Utc::now();
        let token = signer.mint("ada", now + chrono::Duration::minutes(5));
        assert_eq!(signer.verify(&token, now), Ok("ada".to_string()));
        assert_eq!(
            signer.verify(&token, now + chrono::Duration::minutes(6)),
            Err(TokenError::Expired)
        );
        // Another key's token, a payload swapped under the signature, garbage: refused.
        let other =
            TokenSigner::new(b"x".repeat(32)).mint("ada", now + chrono::Duration::minutes(5));
        assert_eq!(signer.verify(&other, now), Err(TokenError::Forged));
        let signature = token.split_once('.').unwrap().1;
        let bob = signer.mint("bob", now + chrono::Duration::minutes(5));
        let bob_payload = bob.split_once('.').unwrap().0;
        assert_eq!(
            signer.verify(&format!("{bob_payload}.{signature}"), now),
            Err(TokenError::Forged)
        );
        for junk in [
            "",
            "feed_",
            "feed_.",
            "feed_a.b",
            "key_x.y",
            &"feed_a.".repeat(400),
        ] {
            assert!(signer.verify(junk, now).is_err(), "{junk}");
        }
    }
}
