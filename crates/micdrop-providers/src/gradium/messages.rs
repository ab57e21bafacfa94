//! Gradium server messages (TTS and STT share one lenient parser: every field but `type` is
//! optional, numbers may be integers or floats, ids strings or numbers, unknown types ignored).

use serde::Deserialize;
use serde_json::Value;

/// One VAD horizon of a `step` message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VadPrediction {
    /// Horizon in seconds.
    #[serde(default)]
    pub horizon_s: f64,
    /// Probability that the speaker is inactive at that horizon.
    #[serde(default)]
    pub inactivity_prob: f64,
}

/// A Gradium server message.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// `ready` (one per setup).
    Ready {
        /// `request_id`, if sent.
        request_id: Option<String>,
        /// `sample_rate`, if sent.
        sample_rate: Option<u32>,
        /// `client_req_id` echo (TTS).
        client_req_id: Option<String>,
    },
    /// TTS `audio`: base64 audio of a request.
    Audio {
        /// Base64 audio.
        audio: String,
        /// `client_req_id` echo.
        client_req_id: Option<String>,
    },
    /// `text`: a spoken word (TTS, with `stop_s`) or a recognized word (STT).
    Text {
        /// The text.
        text: String,
        /// Start time.
        start_s: Option<f64>,
        /// End time (TTS).
        stop_s: Option<f64>,
        /// `client_req_id` echo (TTS).
        client_req_id: Option<String>,
    },
    /// STT `end_text`.
    EndText {
        /// End time of the previous word.
        stop_s: Option<f64>,
    },
    /// STT `step` (VAD every 80 ms).
    Step {
        /// Predictions (select by `horizon_s`, never by index).
        vad: Vec<VadPrediction>,
    },
    /// STT `flushed`.
    Flushed {
        /// The echoed `flush_id` (string or number).
        flush_id: Value,
    },
    /// `end_of_stream`.
    EndOfStream {
        /// `client_req_id` echo (TTS).
        client_req_id: Option<String>,
    },
    /// `error` (followed by a close).
    Error {
        /// Code (1002, 1008, 1011, ...).
        code: Option<i64>,
        /// Message.
        message: String,
        /// `client_req_id`, if the error is about one request.
        client_req_id: Option<String>,
    },
    /// Any other type (`need_more_text`, future types).
    Other(String),
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    request_id: Option<Value>,
    #[serde(default)]
    sample_rate: Option<f64>,
    #[serde(default)]
    client_req_id: Option<Value>,
    #[serde(default)]
    audio: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    start_s: Option<f64>,
    #[serde(default)]
    stop_s: Option<f64>,
    #[serde(default)]
    vad: Option<Vec<VadPrediction>>,
    #[serde(default)]
    flush_id: Option<Value>,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
}

fn opt_id(v: Option<Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// Parses a server text frame; errors only on invalid JSON or a missing `type`.
pub fn parse_message(text: &str) -> Result<ServerMessage, String> {
    let raw: Raw =
        serde_json::from_str(text).map_err(|e| format!("invalid Gradium message: {e}"))?;
    Ok(match raw.kind.as_str() {
        "ready" => ServerMessage::Ready {
            request_id: opt_id(raw.request_id),
            sample_rate: raw.sample_rate.map(|r| r as u32),
            client_req_id: opt_id(raw.client_req_id),
        },
        "audio" => ServerMessage::Audio {
            audio: raw.audio.unwrap_or_default(),
            client_req_id: opt_id(raw.client_req_id),
        },
        "text" => ServerMessage::Text {
            text: raw.text.unwrap_or_default(),
            start_s: raw.start_s,
            stop_s: raw.stop_s,
            client_req_id: opt_id(raw.client_req_id),
        },
        "end_text" => ServerMessage::EndText { stop_s: raw.stop_s },
        "step" => ServerMessage::Step {
            vad: raw.vad.unwrap_or_default(),
        },
        "flushed" => ServerMessage::Flushed {
            flush_id: raw.flush_id.unwrap_or(Value::Null),
        },
        "end_of_stream" => ServerMessage::EndOfStream {
            client_req_id: opt_id(raw.client_req_id),
        },
        "error" => ServerMessage::Error {
            code: raw.code.as_ref().and_then(|c| match c {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }),
            message: match raw.message {
                Some(Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => String::new(),
            },
            client_req_id: opt_id(raw.client_req_id),
        },
        other => ServerMessage::Other(other.to_owned()),
    })
}

/// The inactivity probability at `horizon_s` (selected by value, as horizons vary between 3
/// and 4 and their order is not guaranteed).
pub fn inactivity_at(vad: &[VadPrediction], horizon_s: f64) -> Option<f64> {
    vad.iter()
        .find(|p| (p.horizon_s - horizon_s).abs() < 1e-6)
        .map(|p| p.inactivity_prob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_variants() {
        // GR-TTS-READY-1, -2, -R, GR-STT-READY-LV (no request_id).
        for (text, rate) in [
            (
                r#"{"type": "ready", "request_id": "550e8400-e29b-41d4-a716-446655440000"}"#,
                None,
            ),
            (
                r#"{"type":"ready","request_id":"req_...","model_name":"default","model_ext":"resolved-model","sample_rate":48000,"frame_size":3840,"audio_stream_names":[],"text_stream_names":[]}"#,
                Some(48_000),
            ),
            (
                r#"{"type":"ready","request_id":"…","model_name":"default","sample_rate":16000,"frame_size":1280,
 "audio_stream_names":["tts"],"text_stream_names":["tts"]}"#,
                Some(16_000),
            ),
            (
                r#"{"type": "ready", "sample_rate": 24000, "frame_size": 1920, "delay_in_frames": 10}"#,
                Some(24_000),
            ),
        ] {
            match parse_message(text).unwrap() {
                ServerMessage::Ready { sample_rate, .. } => assert_eq!(sample_rate, rate),
                m => panic!("{m:?}"),
            }
        }
    }

    #[test]
    fn audio_text_and_end_of_stream() {
        // GR-TTS-AUDIO-1: only {type, audio}.
        assert_eq!(
            parse_message(r#"{"type": "audio", "audio": "AAAA"}"#).unwrap(),
            ServerMessage::Audio {
                audio: "AAAA".into(),
                client_req_id: None
            }
        );
        assert_eq!(
            parse_message(
                r#"{"type":"audio","audio":"AAAA","start_s":0.0,"stop_s":0.08,"stream_id":0,"client_req_id":"req-1"}"#
            )
            .unwrap(),
            ServerMessage::Audio {
                audio: "AAAA".into(),
                client_req_id: Some("req-1".into())
            }
        );
        // GR-STT-TEXT with stream_id null.
        assert!(matches!(
            parse_message(r#"{"type": "text", "text": "Hello world", "start_s": 0.5, "stream_id": null}"#)
                .unwrap(),
            ServerMessage::Text { ref text, start_s: Some(_), .. } if text == "Hello world"
        ));
        // GR-TTS-EOS-2 (the -1 doc sample is invalid JSON: a trailing comma).
        assert_eq!(
            parse_message(r#"{"type": "end_of_stream"}"#).unwrap(),
            ServerMessage::EndOfStream {
                client_req_id: None
            }
        );
        assert!(parse_message("{\n  \"type\": \"end_of_stream\",\n}").is_err());
    }

    #[test]
    fn errors_and_unknown_types() {
        // GR-TTS-ERR-R: code first, 1011.
        assert_eq!(
            parse_message(
                r#"{"type":"error","code":1011,"message":"Embeddings not found for default"}"#
            )
            .unwrap(),
            ServerMessage::Error {
                code: Some(1011),
                message: "Embeddings not found for default".into(),
                client_req_id: None
            }
        );
        assert!(matches!(
            parse_message(r#"{"type": "error", "message": "Session not found. Send setup first.", "code": 1002}"#).unwrap(),
            ServerMessage::Error { code: Some(1002), .. }
        ));
        assert_eq!(
            parse_message(r#"{"type":"need_more_text"}"#).unwrap(),
            ServerMessage::Other("need_more_text".into())
        );
        assert_eq!(
            parse_message(r#"{"type":"future_setup_event"}"#).unwrap(),
            ServerMessage::Other("future_setup_event".into())
        );
        assert!(parse_message(r#"{"no_type":1}"#).is_err());
    }

    #[test]
    fn flushed_ids_strings_or_numbers() {
        assert_eq!(
            parse_message(r#"{"type": "flushed", "flush_id": 1}"#).unwrap(),
            ServerMessage::Flushed {
                flush_id: serde_json::json!(1)
            }
        );
        let ServerMessage::Flushed { flush_id } =
            parse_message(r#"{"type": "flushed", "flush_id": "1"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(super::super::id_string(&flush_id), "1");
    }

    #[test]
    fn vad_horizons_by_value_not_index() {
        // GR-STT-STEP-LV: four horizons, 0.5 last.
        let m = parse_message(
            r#"{"type":"step","vad":[{"horizon_s":1.0,"inactivity_prob":0.1},{"horizon_s":2.0,"inactivity_prob":0.9},{"horizon_s":3.0,"inactivity_prob":0.95},{"horizon_s":0.5,"inactivity_prob":0.02}],"step_idx":5,"step_duration_s":0.08,"total_duration_s":0.4}"#,
        )
        .unwrap();
        let ServerMessage::Step { vad } = m else {
            panic!()
        };
        assert_eq!(inactivity_at(&vad, 0.5), Some(0.02));
        assert_eq!(inactivity_at(&vad, 2.0), Some(0.9));
        assert_eq!(inactivity_at(&vad, 4.0), None);
    }
}
