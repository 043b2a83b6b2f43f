//! ES256 (ECDSA P-256) JWTs for APNs provider tokens and Web Push VAPID, signed with `jsonwebtoken`.
//!
//! Keys arrive as PEM: Apple's `.p8` files are PKCS#8, VAPID keys are often SEC1 (`BEGIN EC PRIVATE KEY`).
//! OpenSSL reads either; `jsonwebtoken` wants PKCS#8, so the key is re-encoded once at start.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::bn::BigNumContext;
use openssl::ec::PointConversionForm;
use openssl::pkey::PKey;
use serde::Serialize;

use crate::channels::provider::ProviderConfigError;

pub struct Es256Key {
    encoding: EncodingKey,
    /// The public key as an uncompressed point (65 bytes): VAPID sends it in the `k=` parameter.
    pub public_point: Vec<u8>,
}

impl Es256Key {
    pub fn from_pem(provider: &str, pem: &str) -> Result<Self, ProviderConfigError> {
        let invalid =
            || ProviderConfigError::new(provider, "the private key is not a P-256 EC key in PEM");
        let key = PKey::private_key_from_pem(pem.as_bytes()).map_err(|_| invalid())?;
        let ec = key.ec_key().map_err(|_| invalid())?;
        let mut context = BigNumContext::new().map_err(|_| invalid())?;
        let public_point = ec
            .public_key()
            .to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut context)
            .map_err(|_| invalid())?;
        let pkcs8 = key.private_key_to_pem_pkcs8().map_err(|_| invalid())?;
        let encoding = EncodingKey::from_ec_pem(&pkcs8).map_err(|_| invalid())?;
        Ok(Self {
            encoding,
            public_point,
        })
    }

    pub fn sign<T: Serialize>(&self, key_id: Option<&str>, claims: &T) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = key_id.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| format!("cannot sign a token: {e}"))
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
