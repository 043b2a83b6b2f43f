//! Signed JWTs (compact JWS) for the push adapters, signed with OpenSSL: ES256 for APNs provider tokens and Web
//! Push VAPID, RS256 for the FCM service-account assertion.
//!
//! herald only ever *signs* tokens (the providers verify them), so this is the whole of it: a header, the claims,
//! and a signature over `base64url(header) . base64url(claims)`. Keys arrive as PEM: Apple's `.p8` files are
//! PKCS#8, VAPID keys are often SEC1 (`BEGIN EC PRIVATE KEY`), Google's service accounts PKCS#8 RSA; OpenSSL
//! reads all of them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::bn::BigNumContext;
use openssl::ec::PointConversionForm;
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use serde::Serialize;
use serde_json::json;

use crate::channels::provider::ProviderConfigError;

/// Width of each of `r` and `s` in an ES256 signature: JWS wants them fixed-width and concatenated (RFC 7518
/// section 3.4), not the DER structure OpenSSL produces.
const P256_SCALAR_BYTES: i32 = 32;

/// A P-256 private key that signs ES256 tokens.
pub struct Es256Key {
    key: PKey<Private>,
    /// The public key as an uncompressed point (65 bytes): VAPID sends it in the `k=` parameter.
    pub public_point: Vec<u8>,
}

impl Es256Key {
    pub fn from_pem(provider: &str, pem: &str) -> Result<Self, ProviderConfigError> {
        let invalid =
            || ProviderConfigError::new(provider, "the private key is not a P-256 EC key in PEM");
        let key = PKey::private_key_from_pem(pem.as_bytes()).map_err(|_| invalid())?;
        let ec = key.ec_key().map_err(|_| invalid())?;
        if ec.group().curve_name() != Some(openssl::nid::Nid::X9_62_PRIME256V1) {
            return Err(invalid());
        }
        let mut context = BigNumContext::new().map_err(|_| invalid())?;
        let public_point = ec
            .public_key()
            .to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut context)
            .map_err(|_| invalid())?;
        Ok(Self { key, public_point })
    }

    /// A token with `alg: ES256` and, when given, the key id as `kid`.
    pub fn sign<T: Serialize>(&self, key_id: Option<&str>, claims: &T) -> Result<String, String> {
        let mut header = json!({ "alg": "ES256", "typ": "JWT" });
        if let Some(kid) = key_id {
            header["kid"] = json!(kid);
        }
        compact(&header, claims, |input| {
            der_to_raw(&digest_sign(&self.key, input)?)
        })
    }
}

/// An ECDSA signature as OpenSSL makes it (DER) in JWS form: `r` and `s`, each left-padded to 32 bytes.
fn der_to_raw(der: &[u8]) -> Result<Vec<u8>, String> {
    let signature = EcdsaSig::from_der(der).map_err(|e| e.to_string())?;
    let mut raw = signature
        .r()
        .to_vec_padded(P256_SCALAR_BYTES)
        .map_err(|e| e.to_string())?;
    raw.extend(
        signature
            .s()
            .to_vec_padded(P256_SCALAR_BYTES)
            .map_err(|e| e.to_string())?,
    );
    Ok(raw)
}

/// An RSA private key that signs RS256 (RSASSA-PKCS1-v1_5 with SHA-256) tokens.
pub struct Rs256Key {
    key: PKey<Private>,
}

impl Rs256Key {
    pub fn from_pem(provider: &str, pem: &str) -> Result<Self, ProviderConfigError> {
        let invalid =
            || ProviderConfigError::new(provider, "the private key is not an RSA key in PEM");
        let key = PKey::private_key_from_pem(pem.as_bytes()).map_err(|_| invalid())?;
        // RSA proper: an RSA-PSS key would sign with PSS padding, which is not RS256.
        if key.id() != openssl::pkey::Id::RSA {
            return Err(invalid());
        }
        Ok(Self { key })
    }

    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, String> {
        compact(&json!({ "alg": "RS256", "typ": "JWT" }), claims, |input| {
            digest_sign(&self.key, input)
        })
    }
}

/// `header.claims.signature`, each part base64url without padding.
fn compact<T: Serialize>(
    header: &serde_json::Value,
    claims: &T,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<String, String> {
    let encode = |value: Vec<u8>| URL_SAFE_NO_PAD.encode(value);
    let header = serde_json::to_vec(header).map_err(|e| e.to_string())?;
    let claims = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
    let mut token = format!("{}.{}", encode(header), encode(claims));
    let signature = sign(token.as_bytes()).map_err(|e| format!("cannot sign a token: {e}"))?;
    token.push('.');
    token.push_str(&encode(signature));
    Ok(token)
}

/// SHA-256 signature of `input` (DER for EC keys, PKCS#1 v1.5 for RSA keys: OpenSSL's defaults).
fn digest_sign(key: &PKey<Private>, input: &[u8]) -> Result<Vec<u8>, String> {
    let mut signer = Signer::new(MessageDigest::sha256(), key).map_err(|e| e.to_string())?;
    signer.update(input).map_err(|e| e.to_string())?;
    signer.sign_to_vec().map_err(|e| e.to_string())
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::rsa::Rsa;
    use openssl::sign::Verifier;

    fn parts(token: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>, String) {
        let pieces: Vec<&str> = token.split('.').collect();
        assert_eq!(pieces.len(), 3, "compact JWS has three parts");
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).unwrap();
        (
            serde_json::from_slice(&decode(pieces[0])).unwrap(),
            serde_json::from_slice(&decode(pieces[1])).unwrap(),
            decode(pieces[2]),
            format!("{}.{}", pieces[0], pieces[1]),
        )
    }

    #[test]
    fn es256_signatures_are_raw_r_and_s_and_verify() {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let ec = EcKey::generate(&group).unwrap();
        let pem = String::from_utf8(ec.private_key_to_pem().unwrap()).unwrap(); // SEC1, as VAPID keys come
        let key = Es256Key::from_pem("apns", &pem).unwrap();
        for _ in 0..20 {
            // OpenSSL's DER encodes a short r or s in fewer bytes: JWS must still get 32 + 32.
            let token = key.sign(Some("KID1"), &json!({ "iss": "team" })).unwrap();
            let (header, claims, signature, input) = parts(&token);
            assert_eq!(
                header,
                json!({ "alg": "ES256", "typ": "JWT", "kid": "KID1" })
            );
            assert_eq!(claims, json!({ "iss": "team" }));
            assert_eq!(signature.len(), 64);
            let r = openssl::bn::BigNum::from_slice(&signature[..32]).unwrap();
            let s = openssl::bn::BigNum::from_slice(&signature[32..]).unwrap();
            let der = EcdsaSig::from_private_components(r, s)
                .unwrap()
                .to_der()
                .unwrap();
            let public =
                PKey::from_ec_key(EcKey::from_public_key(&group, ec.public_key()).unwrap())
                    .unwrap();
            let mut verifier = Verifier::new(MessageDigest::sha256(), &public).unwrap();
            verifier.update(input.as_bytes()).unwrap();
            assert!(verifier.verify(&der).unwrap());
        }
    }

    /// A short `r` or `s` (one signature in about 128) is still 32 bytes in the JWS form: checked with a
    /// signature whose `r` is 1 and `s` is 31 bytes long.
    #[test]
    fn short_signature_components_are_left_padded() {
        let r = openssl::bn::BigNum::from_u32(1).unwrap();
        let s = openssl::bn::BigNum::from_slice(&[0xab; 31]).unwrap();
        let der = EcdsaSig::from_private_components(r, s)
            .unwrap()
            .to_der()
            .unwrap();
        let raw = der_to_raw(&der).unwrap();
        assert_eq!(raw.len(), 64);
        assert_eq!(&raw[..31], &[0u8; 31]);
        assert_eq!(raw[31], 1);
        assert_eq!(raw[32], 0);
        assert_eq!(&raw[33..], &[0xab; 31]);
    }

    #[test]
    fn rs256_signatures_verify_and_other_key_types_are_refused() {
        let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let pem = String::from_utf8(rsa.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let key = Rs256Key::from_pem("fcm", &pem).unwrap();
        let token = key.sign(&json!({ "aud": "x" })).unwrap();
        let (header, _, signature, input) = parts(&token);
        assert_eq!(header["alg"], "RS256");
        let mut verifier = Verifier::new(MessageDigest::sha256(), &rsa).unwrap();
        verifier.update(input.as_bytes()).unwrap();
        assert!(verifier.verify(&signature).unwrap());

        assert!(
            Es256Key::from_pem("apns", &pem).is_err(),
            "an RSA key is not ES256"
        );
        let p384 = EcKey::generate(&EcGroup::from_curve_name(Nid::SECP384R1).unwrap()).unwrap();
        let p384 = String::from_utf8(p384.private_key_to_pem().unwrap()).unwrap();
        assert!(
            Es256Key::from_pem("apns", &p384).is_err(),
            "ES256 is P-256 only"
        );
        assert!(
            Rs256Key::from_pem("fcm", &p384).is_err(),
            "an EC key is not RS256"
        );
    }
}
