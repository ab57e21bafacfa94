//! Errors: one enum per capability, with `is_retryable()` helpers.

use crate::protocol::{CLOSE_BAD_REQUEST, CLOSE_INTERNAL, CLOSE_NOT_FOUND, CLOSE_UNAUTHORIZED};

/// An error that ends a call with a WebSocket close code, as Micdrop's `MicdropError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {message}")]
pub struct MicdropError {
    /// The close code (4400, 4401, 4404, 1011, ...).
    pub code: u16,
    /// The close reason sent to the client (never a secret).
    pub message: String,
}

impl MicdropError {
    /// An error with a code and a reason.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// 4400 `Missing params`.
    pub fn missing_params() -> Self {
        Self::new(CLOSE_BAD_REQUEST, "Missing params")
    }
    /// 4400 `Invalid params`.
    pub fn invalid_params() -> Self {
        Self::new(CLOSE_BAD_REQUEST, "Invalid params")
    }
    /// 4401 `Unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(CLOSE_UNAUTHORIZED, "Unauthorized")
    }
    /// 4404 `Not found`.
    pub fn not_found() -> Self {
        Self::new(CLOSE_NOT_FOUND, "Not found")
    }
    /// 1011 `Internal error`.
    pub fn internal() -> Self {
        Self::new(CLOSE_INTERNAL, "Internal error")
    }
}

/// What went wrong with a provider call: kept apart from the capability so every provider
/// reports it the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderErrorKind {
    /// Network failure (connect refused, reset, DNS, TLS).
    #[error("network error: {0}")]
    Network(String),
    /// A timeout (connect, first byte, transcription).
    #[error("timeout: {0}")]
    Timeout(String),
    /// The provider answered an HTTP status (body kept, secrets never included).
    #[error("HTTP {status}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// Response body (truncated).
        body: String,
    },
    /// The provider closed its WebSocket with a code.
    #[error("closed with {code}: {reason}")]
    Closed {
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// The provider sent something we could not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Configuration is wrong (missing key, bad URL, ...).
    #[error("configuration error: {0}")]
    Config(String),
    /// Gave up after retries.
    #[error("failed after {attempts} attempts: {last}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
}

impl ProviderErrorKind {
    /// Whether trying again may help: network errors, timeouts, 408/409/425/429/5xx, and
    /// abnormal WebSocket closes. 4xx and configuration errors are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderErrorKind::Network(_) | ProviderErrorKind::Timeout(_) => true,
            ProviderErrorKind::Status { status, .. } => {
                matches!(status, 408 | 409 | 425 | 429) || *status >= 500
            }
            ProviderErrorKind::Closed { code, .. } => {
                !matches!(code, 1000 | 1008) && !(4000..4500).contains(code)
            }
            ProviderErrorKind::Protocol(_) => true,
            ProviderErrorKind::Config(_) | ProviderErrorKind::Exhausted { .. } => false,
        }
    }
}

macro_rules! capability_error {
    ($name:ident, $what:literal) => {
        #[doc = concat!("An error of a ", $what, " provider.")]
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[error("{provider}: {kind}")]
        pub struct $name {
            /// The provider's name (`gladia`, `mistral`, ...).
            pub provider: String,
            /// What happened.
            pub kind: ProviderErrorKind,
        }

        impl $name {
            /// An error of `provider`.
            pub fn new(provider: impl Into<String>, kind: ProviderErrorKind) -> Self {
                Self {
                    provider: provider.into(),
                    kind,
                }
            }
            /// Whether trying again may help.
            pub fn is_retryable(&self) -> bool {
                self.kind.is_retryable()
            }
        }
    };
}

capability_error!(SttError, "speech-to-text");
capability_error!(TtsError, "text-to-speech");
capability_error!(AgentError, "agent model");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable() {
        let s = |status| ProviderErrorKind::Status {
            status,
            body: String::new(),
        };
        assert!(s(429).is_retryable());
        assert!(s(503).is_retryable());
        assert!(!s(401).is_retryable());
        assert!(!s(422).is_retryable());
        assert!(ProviderErrorKind::Network("x".into()).is_retryable());
        assert!(!ProviderErrorKind::Config("x".into()).is_retryable());
        assert!(AgentError::new("m", ProviderErrorKind::Timeout("t".into())).is_retryable());
    }
}
