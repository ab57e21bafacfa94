//! Gradium speech-to-text: one socket per call, `flush` at the end of each turn.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures::SinkExt;
use futures::future::BoxFuture;
use micdrop_core::stt::{SpeechToText, SttCommand, SttEvent, SttSessionIo};
use micdrop_core::{ProviderErrorKind, SttError};
use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};
use url::Url;

use super::messages::{ServerMessage, parse_message};
use super::{error_kind, id_string, open};
use crate::config::{ConfigError, GradiumSttConfig};
use crate::retry::RetryPolicy;
use crate::secret::ApiKey;
use crate::ws::{self, WsStream, boxed, next_msg, poll_opt, sleep_opt};

const NAME: &str = "gradium-stt";

/// Gradium speech-to-text (see the [module docs](super)).
#[derive(Debug, Clone)]
pub struct GradiumStt {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    url: Url,
    key: ApiKey,
    setup: Value,
    connect_timeout: Duration,
    transcription_timeout: Duration,
    retry: RetryPolicy,
}

impl GradiumStt {
    /// A provider from its configuration and key.
    pub fn new(config: GradiumSttConfig, key: ApiKey) -> Result<Self, ConfigError> {
        let url = config.url()?;
        let mut json_config = Map::new();
        if let Some(l) = &config.language {
            json_config.insert("language".into(), json!(l));
        }
        if let Some(d) = config.delay_in_frames {
            json_config.insert("delay_in_frames".into(), json!(d));
        }
        for (k, v) in &config.json_config {
            json_config.insert(k.clone(), v.clone());
        }
        let mut setup = json!({
            "type": "setup",
            "model_name": config.model_name,
            "input_format": "pcm_16000",
        });
        if !json_config.is_empty() {
            setup["json_config"] = Value::Object(json_config);
        }
        Ok(Self {
            shared: Arc::new(Shared {
                url,
                key,
                setup,
                connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                transcription_timeout: Duration::from_millis(config.transcription_timeout_ms),
                retry: config.retry(),
            }),
        })
    }

    /// The `setup` message sent on each connection.
    pub fn setup_message(&self) -> &Value {
        &self.shared.setup
    }
}

impl SpeechToText for GradiumStt {
    fn name(&self) -> &str {
        NAME
    }

    fn run(&self, io: SttSessionIo) -> BoxFuture<'static, ()> {
        Box::pin(Session::new(self.shared.clone(), io).run())
    }
}

struct Finalizing {
    flush_id: u64,
    deadline: Instant,
    heard_server: bool,
}

struct Session {
    sh: Arc<Shared>,
    io: SttSessionIo,
    ws: Option<WsStream>,
    connecting: Option<BoxFuture<'static, Result<WsStream, ProviderErrorKind>>>,
    retry_at: Option<Instant>,
    retries: u32,
    last_error: Option<ProviderErrorKind>,
    exhausted: bool,
    failed: bool,
    turn_open: bool,
    /// Audio of the current turn, and whether it was sent on the current socket.
    pending: VecDeque<(bool, Bytes)>,
    words: Vec<String>,
    next_flush: u64,
    finalizing: Option<Finalizing>,
}

enum Wake {
    Cmd(Option<SttCommand>),
    Connected(Box<Result<WsStream, ProviderErrorKind>>),
    Ws(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    RetryDue,
    Deadline,
}

impl Session {
    fn new(sh: Arc<Shared>, io: SttSessionIo) -> Self {
        Self {
            sh,
            io,
            ws: None,
            connecting: None,
            retry_at: None,
            retries: 0,
            last_error: None,
            exhausted: false,
            failed: false,
            turn_open: false,
            pending: VecDeque::new(),
            words: Vec::new(),
            next_flush: 1,
            finalizing: None,
        }
    }

    async fn run(mut self) {
        self.ensure_connection();
        loop {
            let deadline = self.finalizing.as_ref().map(|f| f.deadline);
            let wake = tokio::select! {
                biased;
                c = self.io.commands.recv() => Wake::Cmd(c),
                r = poll_opt(&mut self.connecting) => Wake::Connected(Box::new(r)),
                m = next_msg(&mut self.ws) => Wake::Ws(m),
                _ = sleep_opt(self.retry_at) => Wake::RetryDue,
                _ = sleep_opt(deadline) => Wake::Deadline,
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
            };
            if !ok || !self.maybe_give_up().await {
                break;
            }
        }
        if let Some(mut w) = self.ws.take() {
            let _ = w.send(Message::text(r#"{"type":"end_of_stream"}"#)).await;
            ws::close(w).await;
        }
    }

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
        self.connecting = Some(boxed(async move { connect(&sh).await }));
    }

    async fn on_command(&mut self, cmd: SttCommand) -> bool {
        match cmd {
            SttCommand::StartTurn => {
                if self.finalizing.is_some() {
                    // The previous turn's flush is still out: whatever it brings is emitted.
                    let text = self.take_text();
                    self.finalizing = None;
                    if !text.is_empty() && !self.emit(SttEvent::Transcript(text)).await {
                        return false;
                    }
                }
                self.turn_open = true;
                self.pending.clear();
                self.words.clear();
                if self.failed {
                    self.failed = false;
                    self.retries = 0;
                }
                self.ensure_connection();
            }
            SttCommand::Audio(data) => {
                if data.is_empty() || self.failed {
                    return true;
                }
                self.pending.push_back((false, data));
                if self.ws.is_some() {
                    self.flush_pending().await;
                } else {
                    self.ensure_connection();
                }
            }
            SttCommand::EndTurn => {
                let was_open = std::mem::replace(&mut self.turn_open, false);
                if !was_open || self.pending.is_empty() || self.failed {
                    return true;
                }
                let flush_id = self.next_flush;
                self.next_flush += 1;
                self.finalizing = Some(Finalizing {
                    flush_id,
                    deadline: Instant::now() + self.sh.transcription_timeout,
                    heard_server: false,
                });
                if self.ws.is_some() {
                    self.send_flush(flush_id).await;
                } else {
                    self.ensure_connection();
                }
            }
            SttCommand::DiscardTurn => {
                self.turn_open = false;
                self.finalizing = None;
                self.pending.clear();
                self.words.clear();
            }
        }
        true
    }

    fn take_text(&mut self) -> String {
        let text = self.words.join(" ");
        self.words.clear();
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    async fn send_flush(&mut self, flush_id: u64) {
        // A number, as Micdrop sends it (the docs show both forms; the server echoes it).
        let msg = json!({"type": "flush", "flush_id": flush_id}).to_string();
        self.send(Message::text(msg)).await;
    }

    async fn flush_pending(&mut self) {
        let mut out = Vec::new();
        for (sent, data) in self.pending.iter_mut() {
            if !*sent {
                *sent = true;
                out.push(json!({"type": "audio", "audio": B64.encode(data)}).to_string());
            }
        }
        for m in out {
            if !self.send(Message::text(m)).await {
                return;
            }
        }
    }

    async fn send(&mut self, msg: Message) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        match ws.send(msg).await {
            Ok(()) => true,
            Err(e) => {
                self.lost(ws::ws_error(&e));
                false
            }
        }
    }

    async fn on_connected(&mut self, r: Result<WsStream, ProviderErrorKind>) -> bool {
        match r {
            Ok(ws) => {
                debug!("gradium stt connected");
                self.ws = Some(ws);
                // A new socket knows nothing: replay the whole turn, forget half-heard words.
                for p in self.pending.iter_mut() {
                    p.0 = false;
                }
                self.words.clear();
                self.flush_pending().await;
                if let Some(f) = self.finalizing.as_mut() {
                    f.deadline = Instant::now() + self.sh.transcription_timeout;
                    f.heard_server = false;
                    let id = f.flush_id;
                    self.send_flush(id).await;
                }
                true
            }
            Err(kind) if !kind.is_retryable() => self.give_up(kind).await,
            Err(kind) => {
                self.lost(kind);
                true
            }
        }
    }

    fn lost(&mut self, kind: ProviderErrorKind) {
        self.ws = None;
        self.last_error = Some(kind.clone());
        if self.retry_at.is_some() || self.connecting.is_some() || self.failed {
            return;
        }
        if self.sh.retry.allows(self.retries) {
            let delay = self.sh.retry.delay(self.retries);
            warn!(error = %kind, retry = self.retries + 1, "gradium stt connection lost; reconnecting");
            self.retries += 1;
            self.retry_at = Some(Instant::now() + delay);
        } else {
            self.exhausted = true;
        }
    }

    async fn maybe_give_up(&mut self) -> bool {
        if !self.exhausted {
            return true;
        }
        self.exhausted = false;
        let last = self
            .last_error
            .clone()
            .unwrap_or_else(|| ProviderErrorKind::Network("connection lost".into()));
        self.give_up(ProviderErrorKind::Exhausted {
            attempts: self.retries + 1,
            last: last.to_string(),
        })
        .await
    }

    async fn give_up(&mut self, kind: ProviderErrorKind) -> bool {
        self.failed = true;
        self.retry_at = None;
        self.connecting = None;
        self.ws = None;
        self.finalizing = None;
        self.words.clear();
        let pending: Vec<Bytes> = self.pending.drain(..).map(|(_, d)| d).collect();
        warn!(error = %kind, pending_chunks = pending.len(), "gradium stt gave up");
        self.emit(SttEvent::Failed {
            error: SttError::new(NAME, kind),
            pending,
        })
        .await
    }

    fn on_closed(&mut self, kind: ProviderErrorKind) {
        self.ws = None;
        let active = self.turn_open || self.finalizing.is_some();
        if !active {
            // Nothing to transcribe (e.g. the 300 s session cap): reopen at the next turn.
            debug!(error = %kind, "gradium stt socket closed while idle; will reopen at the next turn");
            return;
        }
        if !kind.is_retryable() {
            self.last_error = Some(kind);
            self.exhausted = true;
            return;
        }
        self.lost(kind);
    }

    async fn on_ws(
        &mut self,
        m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> bool {
        let text = match m {
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
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Close(f))) => {
                self.on_closed(ws::close_error(f.as_ref()));
                return true;
            }
            Some(Ok(_)) => return true,
        };
        if let Some(f) = self.finalizing.as_mut() {
            f.heard_server = true;
        }
        let msg = match parse_message(&text) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "ignoring a malformed gradium message");
                return true;
            }
        };
        if !matches!(msg, ServerMessage::Error { .. }) {
            // The socket works.
            self.retries = 0;
        }
        match msg {
            ServerMessage::Ready { .. } => true,
            ServerMessage::Text { text, .. } => {
                if !self.turn_open && self.finalizing.is_none() {
                    return true;
                }
                let t = text.trim();
                if t.is_empty() {
                    return true;
                }
                self.words.push(t.to_owned());
                let partial = self.words.join(" ");
                self.emit(SttEvent::Partial(partial)).await
            }
            ServerMessage::Flushed { flush_id } => {
                let Some(f) = &self.finalizing else {
                    return true;
                };
                if id_string(&flush_id) != f.flush_id.to_string() {
                    debug!(?flush_id, "flushed for an older flush");
                    return true;
                }
                self.finalizing = None;
                self.pending.clear();
                let text = self.take_text();
                self.emit(SttEvent::Transcript(text)).await
            }
            ServerMessage::Error { code, message, .. } => {
                warn!(?code, %message, "gradium stt error");
                self.on_closed(error_kind(code, &message));
                true
            }
            ServerMessage::EndOfStream { .. } => {
                self.on_closed(ProviderErrorKind::Closed {
                    code: 1000,
                    reason: "end_of_stream".into(),
                });
                true
            }
            ServerMessage::Step { .. }
            | ServerMessage::EndText { .. }
            | ServerMessage::Audio { .. }
            | ServerMessage::Other(_) => true,
        }
    }

    async fn on_deadline(&mut self) -> bool {
        let Some(f) = self.finalizing.take() else {
            return true;
        };
        if self.ws.is_none() || !f.heard_server {
            // Reconnecting, or a socket that says nothing (steps come every 80 ms on a live
            // one): treat as dead, bounded by the retries.
            self.finalizing = Some(Finalizing {
                deadline: Instant::now() + self.sh.transcription_timeout,
                ..f
            });
            if self.ws.is_some() {
                self.on_closed(ProviderErrorKind::Timeout(format!(
                    "no message from Gradium within {} ms after the end of the turn",
                    self.sh.transcription_timeout.as_millis()
                )));
            }
            return true;
        }
        // Alive but no `flushed`: emit what was heard (possibly nothing).
        self.pending.clear();
        let text = self.take_text();
        self.emit(SttEvent::Transcript(text)).await
    }
}

async fn connect(sh: &Shared) -> Result<WsStream, ProviderErrorKind> {
    let mut ws = open(&sh.url, &sh.key, sh.connect_timeout).await?;
    ws.send(Message::text(sh.setup.to_string()))
        .await
        .map_err(|e| ws::ws_error(&e))?;
    // Wait for `ready` (unknown messages before it are ignored).
    let wait = async {
        use futures::StreamExt;
        loop {
            match ws.next().await {
                None => {
                    return Err(ProviderErrorKind::Closed {
                        code: 1006,
                        reason: "closed before ready".into(),
                    });
                }
                Some(Err(e)) => return Err(ws::ws_error(&e)),
                Some(Ok(Message::Text(t))) => match parse_message(&t) {
                    Ok(ServerMessage::Ready { .. }) => return Ok(()),
                    Ok(ServerMessage::Error { code, message, .. }) => {
                        return Err(error_kind(code, &message));
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(f))) => return Err(ws::close_error(f.as_ref())),
                Some(Ok(_)) => {}
            }
        }
    };
    match tokio::time::timeout(sh.connect_timeout, wait).await {
        Err(_) => Err(ProviderErrorKind::Timeout(format!(
            "no ready within {} ms",
            sh.connect_timeout.as_millis()
        ))),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => Ok(ws),
    }
}
