//! Gladia live v2 speech-to-text.
//!
//! One Gladia session per call: `POST /v2/live?region=eu-west` (key in `x-gladia-key`), then the
//! returned WebSocket; PCM s16le 16 kHz mono as binary frames; final transcripts become
//! [`SttEvent::Transcript`], partials (when enabled) [`SttEvent::Partial`].
//!
//! **End of turn.** On [`SttCommand::EndTurn`] the session sends a burst of silence of
//! `endpointing + 250 ms` (not 2 s as Micdrop does): Gladia closes an utterance after
//! `endpointing` seconds of silence *in the audio*, so the final comes as soon as that much
//! silence is processed; more silence only adds billed audio. `stop_recording` would finalize
//! too, but it ends the session: every turn would then pay a new init request and handshake, and
//! a pre-opened next session would exceed the 1-session concurrency of free plans.
//! If no transcript comes within `transcription_timeout_ms` (4 s) although the server is alive
//! (acknowledgments keep coming), the turn yields `Transcript("")`.
//!
//! **Failures.** A dropped socket is reopened on the same session URL and the audio Gladia did
//! not acknowledge is re-sent; if the session is over (close 4xxx, failed handshake) a new
//! session is created and all the audio of the turn not yet transcribed is re-sent, so no
//! utterance is lost. A server silent after the end of a turn counts as a dropped connection.
//! Retries are bounded (`max_retries`, backoff); then [`SttEvent::Failed`] carries the pending
//! audio. An init refused with 4xx (bad key, bad settings) is not retried.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use futures::future::BoxFuture;
use micdrop_core::stt::{SpeechToText, SttCommand, SttEvent, SttSessionIo};
use micdrop_core::{ProviderErrorKind, SttError};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};
use url::Url;

use crate::audio::{MICDROP_RATE, silence};
use crate::config::{ConfigError, GladiaConfig, SovereigntyConfig, SovereigntyMode};
use crate::http::{reqwest_error, status_error};
use crate::retry::RetryPolicy;
use crate::secret::ApiKey;
use crate::ws::{self, WsStream, boxed, next_msg, poll_opt, sleep_opt};

const NAME: &str = "gladia";
const BYTES_PER_SEC: f64 = (MICDROP_RATE * 2) as f64;

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
    keepalive: Duration,
    retry: RetryPolicy,
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
                keepalive: Duration::from_millis(config.keepalive_ms.max(1000)),
                retry: config.retry(),
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
        Box::pin(Session::new(self.shared.clone(), io).run())
    }
}

// ---------------------------------------------------------------------------------------------
// Wire messages (lenient: every field optional, unknown fields and types ignored)
// ---------------------------------------------------------------------------------------------

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

#[derive(Debug, Deserialize)]
struct InitResponse {
    #[allow(dead_code)]
    #[serde(default)]
    id: Option<String>,
    url: String,
}

// ---------------------------------------------------------------------------------------------
// The session task
// ---------------------------------------------------------------------------------------------

struct Connected {
    ws: WsStream,
    url: Url,
    resumed: bool,
}

struct ConnectFailure {
    kind: ProviderErrorKind,
    /// Not worth retrying (4xx on init).
    fatal: bool,
}

struct Chunk {
    /// Session byte offset when sent on the current session (`None`: not sent yet).
    offset: Option<u64>,
    data: Bytes,
}

struct Finalizing {
    deadline: Instant,
    got_transcript: bool,
    heard_server: bool,
}

struct Session {
    sh: Arc<Shared>,
    io: SttSessionIo,
    ws: Option<WsStream>,
    session_url: Option<Url>,
    connecting: Option<BoxFuture<'static, Result<Connected, ConnectFailure>>>,
    retry_at: Option<Instant>,
    retries: u32,
    last_error: Option<ProviderErrorKind>,
    /// Gave up: no reconnection until the next turn.
    failed: bool,
    /// Retries are spent: emit `Failed` after the current handler.
    exhausted: bool,
    turn_open: bool,
    turn_bytes: usize,
    turn_transcripts: usize,
    finalizing: Option<Finalizing>,
    pending: VecDeque<Chunk>,
    bytes_sent: u64,
    acked: u64,
    last_sent_at: Instant,
}

enum Wake {
    Cmd(Option<SttCommand>),
    Connected(Box<Result<Connected, ConnectFailure>>),
    Ws(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    RetryDue,
    Deadline,
    Keepalive,
}

impl Session {
    fn new(sh: Arc<Shared>, io: SttSessionIo) -> Self {
        Self {
            sh,
            io,
            ws: None,
            session_url: None,
            connecting: None,
            retry_at: None,
            retries: 0,
            last_error: None,
            failed: false,
            exhausted: false,
            turn_open: false,
            turn_bytes: 0,
            turn_transcripts: 0,
            finalizing: None,
            pending: VecDeque::new(),
            bytes_sent: 0,
            acked: 0,
            last_sent_at: Instant::now(),
        }
    }

    async fn run(mut self) {
        // Connect at once, as Micdrop does: the first turn should not wait for the handshake.
        self.ensure_connection();
        loop {
            let keepalive_at = self
                .ws
                .as_ref()
                .map(|_| self.last_sent_at + self.sh.keepalive);
            let deadline = self.finalizing.as_ref().map(|f| f.deadline);
            let wake = tokio::select! {
                biased;
                c = self.io.commands.recv() => Wake::Cmd(c),
                r = poll_opt(&mut self.connecting) => Wake::Connected(Box::new(r)),
                m = next_msg(&mut self.ws) => Wake::Ws(m),
                _ = sleep_opt(self.retry_at) => Wake::RetryDue,
                _ = sleep_opt(deadline) => Wake::Deadline,
                _ = sleep_opt(keepalive_at) => Wake::Keepalive,
            };
            let ok = match wake {
                Wake::Cmd(None) => break,
                Wake::Cmd(Some(c)) => self.on_command(c).await,
                Wake::Connected(r) => {
                    self.connecting = None;
                    self.on_connected(*r).await
                }
                Wake::Ws(m) => self.on_ws(m).await,
                Wake::RetryDue => {
                    self.retry_at = None;
                    self.start_connecting();
                    true
                }
                Wake::Deadline => self.on_deadline().await,
                Wake::Keepalive => {
                    let msg = json!({"type": "audio_chunk", "data": {"chunk": ""}}).to_string();
                    self.send(Message::text(msg)).await;
                    true
                }
            };
            if !ok || !self.maybe_give_up().await {
                break;
            }
        }
        if let Some(mut ws) = self.ws.take() {
            // The call is over: end the Gladia session (a bare close would leave it resumable
            // until its idle timeout), then close the socket.
            let stop = json!({"type": "stop_recording"}).to_string();
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                ws.send(Message::text(stop)),
            )
            .await;
            ws::close(ws).await;
        }
    }

    /// Returns false when the call is gone.
    async fn emit(&mut self, ev: SttEvent) -> bool {
        self.io.events.send(ev).await.is_ok()
    }

    fn ensure_connection(&mut self) {
        if self.ws.is_none() && self.connecting.is_none() && self.retry_at.is_none() && !self.failed
        {
            self.start_connecting();
        }
    }

    fn start_connecting(&mut self) {
        let sh = self.sh.clone();
        let resume = self.session_url.clone();
        self.connecting = Some(boxed(async move { connect(sh, resume).await }));
    }

    async fn on_command(&mut self, cmd: SttCommand) -> bool {
        match cmd {
            SttCommand::StartTurn => {
                // The previous turn's transcript may still come; its `""` is no longer needed.
                self.finalizing = None;
                self.turn_open = true;
                self.turn_bytes = 0;
                self.turn_transcripts = 0;
                if self.failed {
                    self.failed = false;
                    self.retries = 0;
                    self.pending.clear();
                }
                self.ensure_connection();
            }
            SttCommand::Audio(data) => {
                if data.is_empty() || self.failed {
                    // After giving up, the turn's audio went to `Failed`; the rest is dropped.
                    return true;
                }
                self.turn_bytes += data.len();
                self.pending.push_back(Chunk { offset: None, data });
                if self.ws.is_some() {
                    self.flush_pending().await;
                } else {
                    self.ensure_connection();
                }
            }
            SttCommand::EndTurn => {
                let was_open = std::mem::replace(&mut self.turn_open, false);
                if !was_open || self.turn_bytes == 0 {
                    return true;
                }
                self.finalizing = Some(Finalizing {
                    deadline: Instant::now() + self.sh.transcription_timeout,
                    got_transcript: self.turn_transcripts > 0,
                    heard_server: false,
                });
                if self.failed {
                    // Already gave up on this turn's audio (Failed was emitted).
                    self.finalizing = None;
                } else if self.ws.is_some() {
                    self.send_finalize_silence().await;
                } else {
                    self.ensure_connection();
                }
            }
            SttCommand::DiscardTurn => {
                self.turn_open = false;
                self.finalizing = None;
                self.pending.clear();
            }
        }
        true
    }

    async fn send_finalize_silence(&mut self) {
        let s = self.sh.finalize_silence.clone();
        self.bytes_sent += s.len() as u64;
        self.send(Message::binary(s)).await;
    }

    /// Sends the pending chunks not sent on this session yet.
    async fn flush_pending(&mut self) {
        let mut to_send = Vec::new();
        for c in self.pending.iter_mut() {
            if c.offset.is_none() {
                c.offset = Some(self.bytes_sent);
                self.bytes_sent += c.data.len() as u64;
                to_send.push(c.data.clone());
            }
        }
        for d in to_send {
            if !self.send(Message::binary(d)).await {
                return;
            }
        }
    }

    /// Sends a frame; on failure drops the socket and schedules a reconnection. Returns whether
    /// it was sent.
    async fn send(&mut self, msg: Message) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        match ws.send(msg).await {
            Ok(()) => {
                self.last_sent_at = Instant::now();
                true
            }
            Err(e) => {
                self.lost(ws::ws_error(&e));
                false
            }
        }
    }

    async fn on_connected(&mut self, r: Result<Connected, ConnectFailure>) -> bool {
        match r {
            Ok(c) => {
                debug!(resumed = c.resumed, "gladia connected");
                if !c.resumed {
                    self.bytes_sent = 0;
                    self.acked = 0;
                    for p in self.pending.iter_mut() {
                        p.offset = None;
                    }
                } else {
                    // Re-send what the server did not acknowledge, from its byte count on.
                    let acked = self.acked;
                    let mut resend = VecDeque::new();
                    for mut p in std::mem::take(&mut self.pending) {
                        match p.offset {
                            Some(off) if off + p.data.len() as u64 <= acked => {
                                // Received, not transcribed yet: keep for a new session.
                                resend.push_back(p);
                            }
                            Some(off) => {
                                let skip = acked.saturating_sub(off) as usize;
                                let tail = p.data.slice(skip.min(p.data.len())..);
                                // The part the server has keeps its offset; the tail is re-sent.
                                if skip > 0 {
                                    resend.push_back(Chunk {
                                        offset: Some(off),
                                        data: p.data.slice(..skip),
                                    });
                                }
                                resend.push_back(Chunk {
                                    offset: None,
                                    data: tail,
                                });
                            }
                            None => {
                                p.offset = None;
                                resend.push_back(p);
                            }
                        }
                    }
                    self.pending = resend;
                    self.bytes_sent = acked;
                }
                self.ws = Some(c.ws);
                self.session_url = Some(c.url);
                self.last_sent_at = Instant::now();
                self.flush_pending().await;
                if let Some(f) = self.finalizing.as_mut() {
                    f.deadline = Instant::now() + self.sh.transcription_timeout;
                    f.heard_server = false;
                    self.send_finalize_silence().await;
                }
                true
            }
            Err(f) => {
                if f.fatal {
                    warn!(error = %f.kind, "gladia session refused; not retrying");
                    return self.give_up(f.kind).await;
                }
                // The saved session may be over: next time, create a new one.
                self.session_url = None;
                self.lost(f.kind);
                true
            }
        }
    }

    /// The connection is gone: schedule a reconnection (or give up when retries are spent).
    fn lost(&mut self, kind: ProviderErrorKind) {
        self.ws = None;
        self.last_error = Some(kind.clone());
        if self.retry_at.is_some() || self.connecting.is_some() || self.failed {
            return;
        }
        if self.sh.retry.allows(self.retries) {
            let delay = self.sh.retry.delay(self.retries);
            warn!(error = %kind, retry = self.retries + 1, "gladia connection lost; reconnecting");
            self.retries += 1;
            self.retry_at = Some(Instant::now() + delay);
        } else {
            self.exhausted = true;
        }
    }

    async fn maybe_give_up(&mut self) -> bool {
        if self.exhausted {
            self.exhausted = false;
            let kind = self
                .last_error
                .clone()
                .unwrap_or_else(|| ProviderErrorKind::Network("connection lost".into()));
            return self
                .give_up(ProviderErrorKind::Exhausted {
                    attempts: self.retries + 1,
                    last: kind.to_string(),
                })
                .await;
        }
        true
    }

    async fn give_up(&mut self, kind: ProviderErrorKind) -> bool {
        self.failed = true;
        self.retry_at = None;
        self.connecting = None;
        self.ws = None;
        self.finalizing = None;
        let pending: Vec<Bytes> = self.pending.drain(..).map(|c| c.data).collect();
        warn!(error = %kind, pending_chunks = pending.len(), "gladia gave up");
        self.emit(SttEvent::Failed {
            error: SttError::new(NAME, kind),
            pending,
        })
        .await
    }

    async fn on_ws(
        &mut self,
        m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> bool {
        let msg = match m {
            None => {
                self.on_closed(ProviderErrorKind::Closed {
                    code: 1006,
                    reason: "stream ended".into(),
                });
                return true;
            }
            Some(Err(e)) => {
                self.on_closed(ws::ws_error(&e));
                return true;
            }
            Some(Ok(m)) => m,
        };
        let text = match msg {
            Message::Text(t) => t.to_string(),
            Message::Close(frame) => {
                self.on_closed(ws::close_error(frame.as_ref()));
                return true;
            }
            _ => return true,
        };
        if let Some(f) = self.finalizing.as_mut() {
            f.heard_server = true;
        }
        let parsed = match parse_message(&text) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "ignoring a malformed gladia message");
                return true;
            }
        };
        // A well-formed message: the connection works.
        self.retries = 0;
        match parsed {
            ServerMessage::Transcript {
                is_final,
                text,
                end,
                ..
            } => {
                let trimmed = text.trim().to_owned();
                if !is_final {
                    if self.sh.partials && !trimmed.is_empty() {
                        return self.emit(SttEvent::Partial(trimmed)).await;
                    }
                    return true;
                }
                if let Some(end) = end {
                    let end_byte = (end * BYTES_PER_SEC) as u64;
                    while let Some(front) = self.pending.front() {
                        match front.offset {
                            Some(off) if off + front.data.len() as u64 <= end_byte => {
                                self.pending.pop_front();
                            }
                            _ => break,
                        }
                    }
                }
                if trimmed.is_empty() {
                    return true;
                }
                self.turn_transcripts += 1;
                if let Some(f) = self.finalizing.as_mut() {
                    f.got_transcript = true;
                }
                self.emit(SttEvent::Transcript(trimmed)).await
            }
            ServerMessage::AudioAck {
                acknowledged,
                byte_end,
                error,
            } => {
                if let Some(e) = error {
                    warn!(error = %e, acknowledged, "gladia refused an audio chunk");
                }
                if let Some(b) = byte_end {
                    self.acked = self.acked.max(b);
                }
                true
            }
            ServerMessage::SessionOver => {
                self.session_url = None;
                true
            }
            ServerMessage::Error(e) => {
                warn!(error = %e, "gladia error message");
                true
            }
            ServerMessage::Other(kind) => {
                debug!(kind, "gladia message");
                true
            }
        }
    }

    fn on_closed(&mut self, kind: ProviderErrorKind) {
        self.ws = None;
        let code = match &kind {
            ProviderErrorKind::Closed { code, .. } => Some(*code),
            _ => None,
        };
        // 1000 (session finished, inactivity) and 4xxx (session over): new session next time.
        if matches!(code, Some(1000) | Some(4000..=4999)) {
            self.session_url = None;
        }
        let active = self.turn_open || self.finalizing.is_some();
        if !active {
            // Nothing to transcribe: reopen at the next turn (no retries spent while idle).
            debug!(error = %kind, "gladia socket closed while idle; will reopen at the next turn");
            return;
        }
        self.lost(kind);
    }

    async fn on_deadline(&mut self) -> bool {
        let Some(f) = self.finalizing.take() else {
            return true;
        };
        if !f.heard_server && self.ws.is_some() {
            // Not a word from the server since the end of the turn: a dead connection.
            self.finalizing = Some(Finalizing {
                deadline: Instant::now() + self.sh.transcription_timeout,
                ..f
            });
            self.on_closed(ProviderErrorKind::Timeout(format!(
                "no message from Gladia within {} ms after the end of the turn",
                self.sh.transcription_timeout.as_millis()
            )));
            return true;
        }
        if self.ws.is_none() {
            // Still reconnecting: keep waiting (bounded by the retries).
            self.finalizing = Some(Finalizing {
                deadline: Instant::now() + self.sh.transcription_timeout,
                ..f
            });
            return true;
        }
        self.pending.clear();
        if f.got_transcript {
            return true;
        }
        debug!("no transcript within the timeout; empty transcript");
        self.emit(SttEvent::Transcript(String::new())).await
    }
}

async fn connect(sh: Arc<Shared>, resume: Option<Url>) -> Result<Connected, ConnectFailure> {
    if let Some(url) = resume {
        match ws::connect(&url, &[], sh.connect_timeout).await {
            Ok(ws) => {
                return Ok(Connected {
                    ws,
                    url,
                    resumed: true,
                });
            }
            Err(e) => debug!(error = %e, "gladia resume failed; creating a new session"),
        }
    }
    let url = init(&sh).await?;
    let ws = ws::connect(&url, &[], sh.connect_timeout)
        .await
        .map_err(|kind| ConnectFailure { kind, fatal: false })?;
    Ok(Connected {
        ws,
        url,
        resumed: false,
    })
}

async fn init(sh: &Shared) -> Result<Url, ConnectFailure> {
    let req = sh
        .client
        .post(sh.init_url.clone())
        .header("x-gladia-key", sh.key.expose())
        .json(&sh.init_body)
        .timeout(sh.connect_timeout);
    let resp = req.send().await.map_err(|e| ConnectFailure {
        kind: reqwest_error(&e),
        fatal: false,
    })?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| ConnectFailure {
        kind: reqwest_error(&e),
        fatal: false,
    })?;
    if !(200..300).contains(&status) {
        let kind = status_error(status, &body);
        let fatal = !kind.is_retryable();
        return Err(ConnectFailure { kind, fatal });
    }
    let parsed: InitResponse = serde_json::from_str(&body).map_err(|e| ConnectFailure {
        kind: ProviderErrorKind::Protocol(format!("invalid Gladia init response: {e}")),
        fatal: false,
    })?;
    let url = Url::parse(&parsed.url).map_err(|e| ConnectFailure {
        kind: ProviderErrorKind::Protocol(format!("invalid Gladia session URL: {e}")),
        fatal: false,
    })?;
    if let Some(policy) = &sh.ws_policy {
        let host = url.host_str().unwrap_or_default();
        if !policy.host_allowed(host) {
            return Err(ConnectFailure {
                kind: ProviderErrorKind::Config(format!(
                    "Gladia returned a session on host {host:?}, not allowed by [sovereignty] mode = \"eu\""
                )),
                fatal: true,
            });
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests;
