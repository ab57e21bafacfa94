//! Gladia live v2 speech-to-text.
//!
//! One Gladia session per call: `POST /v2/live?region=eu-west` (key in `x-gladia-key`), then the
//! returned WebSocket; PCM s16le 16 kHz mono as binary frames; final transcripts become
//! [`SttEvent::Transcript`](micdrop_core::stt::SttEvent::Transcript), partials (when enabled) [`SttEvent::Partial`](micdrop_core::stt::SttEvent::Partial).
//!
//! **End of turn.** On [`SttCommand::EndTurn`](micdrop_core::stt::SttCommand::EndTurn) the session sends a burst of silence of
//! `endpointing + 250 ms` (the fast path): Gladia closes an utterance after `endpointing`
//! seconds of silence *in the audio*, so the final usually comes as soon as that much silence is
//! processed. Gladia does not always close an utterance on so little trailing silence (Pipecat
//! issue 3405: missed utterances, late batched finals; Micdrop sends 2 s), so when no final has
//! come [`FEED_AFTER`] after the burst the session keeps feeding silence in real time (100 ms
//! every 100 ms) until a final arrives or `max_finalize_silence_ms` (2 s) of silence in total
//! has been sent: 1 s in total about 1 s after the end of the turn, well within 3 s.
//! `stop_recording` would finalize too, but it ends the session: every turn would then pay a new
//! init request and handshake, and a pre-opened next session would exceed the 1-session
//! concurrency of free plans.
//! If no transcript comes within `transcription_timeout_ms` (4 s) although the server is alive
//! (acknowledgments keep coming), the turn yields `Transcript("")`.
//!
//! **Failures.** A dropped socket is reopened on the same session URL and the audio Gladia did
//! not acknowledge is re-sent; if the session is over (close 4xxx, failed handshake) a new
//! session is created and all the audio of the turn not yet transcribed is re-sent, so no
//! utterance is lost. A server silent after the end of a turn counts as a dropped connection.
//! Retries are bounded (`max_retries`, backoff); then [`SttEvent::Failed`](micdrop_core::stt::SttEvent::Failed) carries the pending
//! audio. An init refused with 4xx (bad key, bad settings) is not retried.

mod config;
mod messages;
mod session;

pub use config::{GladiaConfig, GladiaRegion};
pub use messages::{ServerMessage, parse_message};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use micdrop_core::stt::{SpeechToText, SttSessionIo};
use serde_json::{Map, Value, json};
use url::Url;

use crate::audio::{MICDROP_RATE, silence};
use crate::config::{ConfigError, SovereigntyConfig, SovereigntyMode};
use crate::link::LinkPolicy;
use crate::secret::ApiKey;

const NAME: &str = "gladia";
const BYTES_PER_SEC: f64 = (MICDROP_RATE * 2) as f64;
/// How long after the first burst of finalize silence a missing final starts the feeding.
pub const FEED_AFTER: Duration = Duration::from_millis(300);
/// Silence fed per step (one step per this much time: real time).
const FEED_STEP: Duration = Duration::from_millis(100);

/// Gladia live speech-to-text (see the module docs).
#[derive(Debug, Clone)]
pub struct GladiaStt {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    key: ApiKey,
    init_url: Url,
    init_body: Value,
    client: reqwest::Client,
    connect_timeout: Duration,
    transcription_timeout: Duration,
    finalize_silence: Bytes,
    /// Duration of `finalize_silence`.
    first_silence: Duration,
    /// Silence fed in total at most (first burst included).
    max_silence: Duration,
    /// One step of fed silence ([`FEED_STEP`]).
    feed_step: Bytes,
    keepalive: Duration,
    link: LinkPolicy,
    partials: bool,
    /// Under the EU policy, the session URL Gladia returns must be on an allowed host too.
    ws_policy: Option<SovereigntyConfig>,
}

impl GladiaStt {
    /// A provider from its configuration and key.
    pub fn new(config: GladiaConfig, key: ApiKey) -> Result<Self, ConfigError> {
        let init_url = config.init_url()?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .build()
            .map_err(|e| ConfigError::Invalid {
                field: "stt.gladia".into(),
                message: e.to_string(),
            })?;
        let endpointing_ms = config
            .endpointing
            .map(|e| (e * 1000.0).clamp(10.0, 10_000.0) as u64)
            .unwrap_or(50);
        let silence_ms = config.finalize_silence_ms.unwrap_or(endpointing_ms + 250);
        Ok(Self {
            shared: Arc::new(Shared {
                key,
                init_url,
                init_body: init_body(&config),
                client,
                connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                transcription_timeout: Duration::from_millis(config.transcription_timeout_ms),
                finalize_silence: silence(MICDROP_RATE, silence_ms),
                first_silence: Duration::from_millis(silence_ms),
                max_silence: Duration::from_millis(config.max_finalize_silence_ms),
                feed_step: silence(MICDROP_RATE, FEED_STEP.as_millis() as u64),
                keepalive: Duration::from_millis(config.keepalive_ms.max(1000)),
                link: config.link_policy(),
                partials: config.partial_transcripts,
                ws_policy: None,
            }),
        })
    }

    /// Refuses session URLs (returned by the init request) whose host `policy` does not allow
    /// (when `policy.mode` is `eu`).
    pub fn with_session_host_policy(mut self, policy: SovereigntyConfig) -> Self {
        if let Some(sh) = Arc::get_mut(&mut self.shared) {
            sh.ws_policy = (policy.mode == SovereigntyMode::Eu).then_some(policy);
        }
        self
    }

    /// The init request body.
    pub fn init_body(&self) -> &Value {
        &self.shared.init_body
    }
}

/// A random id for one call's provider sessions (16 hex digits).
pub(crate) fn call_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Builds the init body: audio format, settings, then `settings` deep-merged, then the message
/// flags the client relies on.
pub fn init_body(config: &GladiaConfig) -> Value {
    let mut body = json!({
        "encoding": "wav/pcm",
        "bit_depth": 16,
        "sample_rate": MICDROP_RATE,
        "channels": 1,
    });
    let o = body.as_object_mut().expect("object literal");
    if let Some(m) = &config.model {
        o.insert("model".into(), json!(m));
    }
    if let Some(e) = config.endpointing {
        o.insert("endpointing".into(), json!(e));
    }
    if let Some(m) = config.maximum_duration_without_endpointing {
        o.insert("maximum_duration_without_endpointing".into(), json!(m));
    }
    if !config.languages.is_empty() || config.code_switching.is_some() {
        let mut lc = Map::new();
        if !config.languages.is_empty() {
            lc.insert("languages".into(), json!(config.languages));
        }
        if let Some(c) = config.code_switching {
            lc.insert("code_switching".into(), json!(c));
        }
        o.insert("language_config".into(), Value::Object(lc));
    }
    if !config.custom_vocabulary.is_empty() {
        o.insert(
            "realtime_processing".into(),
            json!({
                "custom_vocabulary": true,
                "custom_vocabulary_config": {"vocabulary": config.custom_vocabulary},
            }),
        );
    }
    o.insert(
        "messages_config".into(),
        json!({
            "receive_partial_transcripts": config.partial_transcripts,
            "receive_final_transcripts": true,
            "receive_speech_events": false,
            "receive_pre_processing_events": false,
            "receive_realtime_processing_events": false,
            "receive_post_processing_events": false,
            "receive_acknowledgments": true,
            "receive_errors": true,
            "receive_lifecycle_events": true,
        }),
    );
    deep_merge(&mut body, &Value::Object(config.settings.clone()));
    // The session depends on these: finals, acknowledgments (replay, liveness), errors.
    if let Some(mc) = body
        .get_mut("messages_config")
        .and_then(Value::as_object_mut)
    {
        mc.insert("receive_final_transcripts".into(), json!(true));
        mc.insert("receive_acknowledgments".into(), json!(true));
        mc.insert("receive_errors".into(), json!(true));
    }
    body
}

/// Merges `patch` into `target`: objects recursively, anything else replaced.
pub fn deep_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl SpeechToText for GladiaStt {
    fn name(&self) -> &str {
        NAME
    }

    fn run(&self, io: SttSessionIo) -> BoxFuture<'static, ()> {
        Box::pin(session::Session::new(self.shared.clone(), io).run())
    }
}

#[cfg(test)]
mod tests;
