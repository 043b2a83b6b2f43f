//! AWS Signature Version 4 for the SES and SNS adapters, with the `aws-sigv4` crate (never hand-rolled).
//!
//! Settings shared by both: `region`, `access_key_id`, `secret_access_key` (a secret) and an optional
//! `session_token` (temporary credentials).

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde::Deserialize;

use super::provider::{ProviderConfigError, Secret, required};

#[derive(Debug, Clone, Deserialize)]
pub struct AwsSettings {
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Secret,
    #[serde(default)]
    pub session_token: Option<Secret>,
}

/// Signs requests for one AWS service in one region.
pub struct AwsSigner {
    service: &'static str,
    region: String,
    access_key_id: String,
    secret_access_key: Secret,
    session_token: Option<Secret>,
}

impl AwsSigner {
    pub fn new(
        provider: &str,
        service: &'static str,
        settings: AwsSettings,
    ) -> Result<Self, ProviderConfigError> {
        settings
            .secret_access_key
            .required(provider, "secret_access_key")?;
        Ok(Self {
            service,
            region: required(provider, "region", &settings.region)?.to_string(),
            access_key_id: required(provider, "access_key_id", &settings.access_key_id)?
                .to_string(),
            secret_access_key: settings.secret_access_key,
            session_token: settings.session_token,
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The headers (`authorization`, `x-amz-date`, and `x-amz-security-token` for temporary credentials) that
    /// sign a request with this method, URL, headers and body, at `now`.
    pub fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        now: SystemTime,
    ) -> Result<Vec<(String, String)>, String> {
        let credentials = Credentials::new(
            &self.access_key_id,
            self.secret_access_key.expose(),
            self.session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "herald-settings",
        );
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(self.service)
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("cannot sign: {e}"))?
            .into();
        let request = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| format!("cannot sign: {e}"))?;
        let (instructions, _signature) = sign(request, &params)
            .map_err(|e| format!("cannot sign: {e}"))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect())
    }
}

impl AwsSigner {
    /// A POST of `body` to `url`, signed now; a signing failure is a configuration problem.
    pub fn signed_post(
        &self,
        client: &reqwest::Client,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::RequestBuilder, super::Outcome> {
        let headers = [("content-type", content_type)];
        let signed = self
            .sign("POST", url, &headers, &body, SystemTime::now())
            .map_err(super::Outcome::config)?;
        let mut request = client
            .post(url)
            .header("content-type", content_type)
            .body(body);
        for (name, value) in signed {
            request = request.header(name, value);
        }
        Ok(request)
    }
}

/// An AWS error's type name: from the `x-amzn-ErrorType` header, else the JSON body's `__type`, `code` or `Code`,
/// else the XML body's `<Code>`. The name is what AWS documents (`MessageRejected`, `Throttling`), stripped of
/// any namespace (`…#Name`) and suffix (`Name:http://…`).
pub fn error_type(header: Option<&str>, body: &str) -> Option<String> {
    let from_json = || {
        let value: serde_json::Value = serde_json::from_str(body).ok()?;
        ["__type", "code", "Code"]
            .iter()
            .find_map(|key| value.get(*key).and_then(|v| v.as_str()).map(str::to_string))
    };
    let raw = header
        .map(str::to_string)
        .or_else(from_json)
        .or_else(|| xml_text(body, "Code"))?;
    let name = raw.split(':').next().unwrap_or(&raw);
    let name = name.rsplit('#').next().unwrap_or(name);
    Some(name.trim().to_string()).filter(|n| !n.is_empty())
}

/// The text of the first `<tag>…</tag>` (AWS query APIs answer XML; only single values are read).
pub fn xml_text(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&close)?;
    Some(body[start..end].trim().to_string())
}
