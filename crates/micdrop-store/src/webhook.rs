//! The end-of-call webhook: the call as JSON, POSTed with an HMAC-SHA256 signature
//! (`X-Micdrop-Signature: sha256=<hex>` over the exact body), retried with exponential backoff
//! in a background task (a failure never blocks or fails a call).

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tracing::{info, warn};

use crate::session::METRIC_WEBHOOK_FAILED;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Micdrop-Signature";
/// Timeout of each attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay before the first retry (doubled at each retry, at most [`MAX_BACKOFF`]).
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest delay between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why the webhook cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The secret's variable is not set.
    #[error(
        "[store] webhook_url is set but the secret variable {0} is missing or empty (webhooks are always signed)"
    )]
    MissingSecret(String),
    /// The URL is not http(s).
    #[error("[store] webhook_url must be an http:// or https:// URL")]
    BadUrl,
    /// The HTTP client.
    #[error("webhook client: {0}")]
    Client(String),
}

/// A configured webhook.
#[derive(Clone)]
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    secret: Vec<u8>,
    max_attempts: u32,
    first_backoff: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Webhook")
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

impl Webhook {
    /// A webhook whose secret is read from the environment variable `secret_env`.
    pub fn from_env(url: &str, secret_env: &str, max_attempts: u32) -> Result<Self, WebhookError> {
        let secret = std::env::var(secret_env)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| WebhookError::MissingSecret(secret_env.to_owned()))?;
        Self::new(url, secret.into_bytes(), max_attempts)
    }

    /// A webhook with its secret.
    pub fn new(url: &str, secret: Vec<u8>, max_attempts: u32) -> Result<Self, WebhookError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(WebhookError::BadUrl);
        }
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Self {
            client,
            url: url.to_owned(),
            secret,
            max_attempts: max_attempts.max(1),
            first_backoff: FIRST_BACKOFF,
        })
    }

    /// Sets the first retry delay (tests).
    pub fn first_backoff(mut self, d: Duration) -> Self {
        self.first_backoff = d;
        self
    }

    /// Sends `body` in a background task; returns at once.
    pub fn send(&self, body: Value) -> tokio::task::JoinHandle<bool> {
        let this = self.clone();
        tokio::spawn(async move { this.deliver(body).await })
    }

    /// Sends `body`, retrying network errors, 429 and 5xx with backoff; returns whether it was
    /// delivered (a 2xx).
    pub async fn deliver(&self, body: Value) -> bool {
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let signature = sign(&self.secret, &bytes);
        let mut backoff = self.first_backoff;
        for attempt in 1..=self.max_attempts {
            let result = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .body(bytes.clone())
                .send()
                .await;
            let retry = match result {
                Ok(r) if r.status().is_success() => {
                    info!(attempt, "webhook delivered");
                    return true;
                }
                Ok(r) => {
                    let s = r.status();
                    warn!(status = s.as_u16(), attempt, "webhook refused");
                    s.is_server_error() || s == reqwest::StatusCode::TOO_MANY_REQUESTS
                }
                Err(e) => {
                    // The error without the URL (it may hold a token).
                    warn!(error = %e.without_url(), attempt, "webhook failed");
                    true
                }
            };
            if !retry || attempt == self.max_attempts {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        metrics::counter!(METRIC_WEBHOOK_FAILED).increment(1);
        warn!("webhook not delivered: given up");
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
