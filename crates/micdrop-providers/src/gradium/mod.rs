//! Gradium text-to-speech and speech-to-text over WebSocket (`wss://eu.api.gradium.ai` by
//! default; key in `x-api-key`).
//!
//! - [`GradiumTts`]: one multiplexed socket per call (`close_ws_on_eos: false`), one
//!   `client_req_id` per utterance: text streamed in whole words as the agent writes it,
//!   `end_of_stream` at the end of the utterance; audio of cancelled utterances dropped;
//!   utterances spoken in order; reconnection re-sends the unspoken text.
//! - [`GradiumStt`]: one socket per call; `flush` at the end of each turn, the transcript is
//!   emitted `flushed_grace_ms` (150 ms) after the matching `flushed` (words may still come
//!   just after it).

mod config;
mod messages;
mod stt;
mod tts;

pub use config::{DELAY_IN_FRAMES, GradiumRegion, GradiumSttConfig, GradiumTtsConfig};
pub use messages::{ServerMessage, VadPrediction, inactivity_at, parse_message};
pub use stt::GradiumStt;
pub use tts::GradiumTts;

use std::time::Duration;

use micdrop_core::ProviderErrorKind;
use serde_json::Value;
use url::Url;

use crate::secret::ApiKey;
use crate::ws::{self, WsStream};

/// Value of the informational `x-api-source` header.
const API_SOURCE: &str = "micdrop-rs";

/// Opens a Gradium socket (handshake only).
async fn open(url: &Url, key: &ApiKey, timeout: Duration) -> Result<WsStream, ProviderErrorKind> {
    ws::connect(
        url,
        &[
            ("x-api-key", key.expose().to_owned()),
            ("x-api-source", API_SOURCE.to_owned()),
        ],
        timeout,
    )
    .await
}

/// The error kind of a Gradium `error` message: a close-like error with its code (1008 is
/// final: bad key, bad setup; 1011 is retryable).
fn error_kind(code: Option<i64>, message: &str) -> ProviderErrorKind {
    ProviderErrorKind::Closed {
        code: code.and_then(|c| u16::try_from(c).ok()).unwrap_or(1011),
        reason: message.to_owned(),
    }
}

/// Renders a JSON value used as an id (`"1"` or `1`) for comparison.
fn id_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
