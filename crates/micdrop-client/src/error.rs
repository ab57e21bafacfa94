//! Client errors and Micdrop's close-code mapping (reference §A.8).

use micdrop_core::protocol::{
    CLOSE_BAD_REQUEST, CLOSE_INTERNAL, CLOSE_NOT_FOUND, CLOSE_UNAUTHORIZED,
};

/// The code of a [`ClientError`], as in Micdrop's `MicdropClientErrorCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ClientErrorCode {
    /// No URL was given.
    MissingUrl,
    /// The microphone failed (live audio only).
    Mic,
    /// The connection failed or dropped (recoverable).
    Connection,
    /// The server closed with 1011 (recoverable).
    InternalServer,
    /// The server closed with 4401 (not retried).
    Unauthorized,
    /// The server closed with 4404 (not retried).
    NotFound,
    /// The server closed with 4400 (not retried).
    BadRequest,
    /// The server closed with another code ≥ 4000 (recoverable).
    Unknown,
}

/// An error of the client: a code, the close code that caused it (if any) and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{code:?}{}: {message}", close_code.map(|c| format!(" (close code {c})")).unwrap_or_default())]
pub struct ClientError {
    /// What went wrong.
    pub code: ClientErrorCode,
    /// The WebSocket close code, when the error comes from a close.
    pub close_code: Option<u16>,
    /// A human-readable message (the close reason, or the transport error).
    pub message: String,
}

impl ClientError {
    /// An error with a code and a message.
    pub fn new(code: ClientErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            close_code: None,
            message: message.into(),
        }
    }

    /// Micdrop's mapping from a close code (`getClientErrorFromWSCloseEventCode`):
    /// `None` means a clean end (1000, 1005, 1012–3999): the client stops without error.
    pub fn from_close(code: u16, reason: &str) -> Option<Self> {
        let kind = match code {
            CLOSE_INTERNAL => ClientErrorCode::InternalServer,
            CLOSE_UNAUTHORIZED => ClientErrorCode::Unauthorized,
            CLOSE_NOT_FOUND => ClientErrorCode::NotFound,
            CLOSE_BAD_REQUEST => ClientErrorCode::BadRequest,
            1005 => return None,
            1001..=1010 => ClientErrorCode::Connection,
            4000.. => ClientErrorCode::Unknown,
            _ => return None,
        };
        Some(Self {
            code: kind,
            close_code: Some(code),
            message: reason.to_owned(),
        })
    }

    /// Whether the client reconnects after this error (4400, 4401, 4404 and `MissingUrl`/`Mic`
    /// are final).
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self.code,
            ClientErrorCode::Connection
                | ClientErrorCode::InternalServer
                | ClientErrorCode::Unknown
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_mapping_matches_micdrop() {
        let code = |c: u16| ClientError::from_close(c, "").map(|e| (e.code, e.is_recoverable()));
        assert_eq!(code(1000), None);
        assert_eq!(code(1005), None);
        assert_eq!(code(1012), None);
        assert_eq!(code(3999), None);
        assert_eq!(code(1001), Some((ClientErrorCode::Connection, true)));
        assert_eq!(code(1006), Some((ClientErrorCode::Connection, true)));
        assert_eq!(code(1010), Some((ClientErrorCode::Connection, true)));
        assert_eq!(code(1011), Some((ClientErrorCode::InternalServer, true)));
        assert_eq!(code(4400), Some((ClientErrorCode::BadRequest, false)));
        assert_eq!(code(4401), Some((ClientErrorCode::Unauthorized, false)));
        assert_eq!(code(4404), Some((ClientErrorCode::NotFound, false)));
        assert_eq!(code(4000), Some((ClientErrorCode::Unknown, true)));
        assert_eq!(code(4999), Some((ClientErrorCode::Unknown, true)));
        let e = ClientError::from_close(4401, "Unauthorized").unwrap();
        assert_eq!(
            e.to_string(),
            "Unauthorized (close code 4401): Unauthorized"
        );
    }
}
