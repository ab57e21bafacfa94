//! Gladia live v2 server messages (lenient: every field optional, unknown fields and types
//! ignored).

use serde::Deserialize;
use serde_json::Value;

/// A server message of the live WebSocket, as far as the client needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// `transcript`. `is_final` defaults to true when absent (the guide's multichannel
    /// examples omit it on finals).
    Transcript {
        /// Utterance id (opaque: `00-00000011`, `00_00000000`).
        id: String,
        /// Final or partial.
        is_final: bool,
        /// The text (leading space kept).
        text: String,
        /// End of the utterance in session seconds.
        end: Option<f64>,
    },
    /// `audio_chunk` acknowledgment: bytes received so far (`byte_range[1]`).
    AudioAck {
        /// Whether accepted.
        acknowledged: bool,
        /// End of the acknowledged range.
        byte_end: Option<u64>,
        /// Error message, if refused.
        error: Option<String>,
    },
    /// `end_session` (or `end_recording`): the session is over.
    SessionOver,
    /// A standalone `error` (not documented, seen in third-party clients).
    Error(String),
    /// Anything else (speech events, lifecycle, post-processing, unknown types).
    Other(String),
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    acknowledged: Option<bool>,
    #[serde(default)]
    error: Option<Value>,
}

/// Parses a server text frame. Errors only on invalid JSON.
pub fn parse_message(text: &str) -> Result<ServerMessage, String> {
    let raw: RawMessage =
        serde_json::from_str(text).map_err(|e| format!("invalid Gladia message: {e}"))?;
    let data = raw.data.unwrap_or(Value::Null);
    Ok(match raw.kind.as_str() {
        "transcript" => {
            let utterance = data.get("utterance").cloned().unwrap_or(Value::Null);
            ServerMessage::Transcript {
                id: match data.get("id") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                },
                is_final: data
                    .get("is_final")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
                text: utterance
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                end: utterance.get("end").and_then(Value::as_f64),
            }
        }
        "audio_chunk" => ServerMessage::AudioAck {
            acknowledged: raw.acknowledged.unwrap_or(true),
            byte_end: data
                .get("byte_range")
                .and_then(Value::as_array)
                .and_then(|r| r.get(1))
                .and_then(Value::as_f64)
                .map(|v| v.max(0.0) as u64),
            error: raw.error.filter(|e| !e.is_null()).map(|e| {
                e.get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| e.to_string())
            }),
        },
        "end_session" => ServerMessage::SessionOver,
        "error" => ServerMessage::Error(
            raw.error
                .or(Some(data))
                .map(|e| crate::http::error_message(&e.to_string()))
                .unwrap_or_default(),
        ),
        other => ServerMessage::Other(other.to_owned()),
    })
}
