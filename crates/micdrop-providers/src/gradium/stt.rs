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

use super::GradiumSttConfig;
use super::messages::{ServerMessage, parse_message};
use super::{error_kind, id_string, open};
use crate::config::ConfigError;
use crate::link::{ConnectFailure, Connector, Link, LinkEvent, LinkPolicy};
use crate::secret::ApiKey;
use crate::ws::{self, WsStream};
use micdrop_core::time::sleep_until;

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
    flushed_grace: Duration,
    link: LinkPolicy,
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
                flushed_grace: Duration::from_millis(config.flushed_grace_ms),
                link: config.link_policy(),
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
    /// Until `flushed`: the transcription timeout; after it, the end of the grace period.
    deadline: Instant,
    heard_server: bool,
    /// The matching `flushed` came: the words that still arrive until `deadline` belong to
    /// the turn (Gradium may send the last ones just after `flushed`).
    flushed: bool,
}

/// Opens a Gradium STT socket: handshake, `setup`, then `ready`.
struct SttConnector {
    sh: Arc<Shared>,
    /// `setup` with this call's `client_req_id` (a random id: the sockets of one call can be
    /// told apart, and the simulator continues the call's transcripts across them).
    setup: Arc<str>,
}

impl Connector for SttConnector {
    type Info = ();

    fn connect(&mut self) -> BoxFuture<'static, Result<(WsStream, ()), ConnectFailure>> {
        let sh = self.sh.clone();
        let setup = self.setup.clone();
        Box::pin(async move {
            let ws = connect(&sh, &setup).await?;
            Ok((ws, ()))
        })
    }
}

struct Session {
    sh: Arc<Shared>,
    io: SttSessionIo,
    link: Link<SttConnector>,
    /// Gave up on the current turn (its audio went to `Failed`): no reconnection until the
    /// next turn.
    failed: bool,
    turn_open: bool,
    /// Audio of the current turn, and whether it was sent on the current socket.
    pending: VecDeque<(bool, Bytes)>,
    words: Vec<String>,
    next_flush: u64,
    finalizing: Option<Finalizing>,
    /// The last `error` message of the current socket (its close follows).
    server_error: Option<ProviderErrorKind>,
}

enum Wake {
    Cmd(Option<SttCommand>),
    Link(LinkEvent<()>),
    Deadline,
}

impl Session {
    fn new(sh: Arc<Shared>, io: SttSessionIo) -> Self {
        let mut setup = sh.setup.clone();
        setup["client_req_id"] = json!(crate::gladia::call_id());
        let connector = SttConnector {
            sh: sh.clone(),
            setup: setup.to_string().into(),
        };
        let link = Link::new(NAME, connector, sh.link)
            .with_goodbye(Message::text(r#"{"type":"end_of_stream"}"#));
        Self {
            sh,
            io,
            link,
            failed: false,
            turn_open: false,
            pending: VecDeque::new(),
            words: Vec::new(),
            next_flush: 1,
            finalizing: None,
            server_error: None,
        }
    }

    async fn run(mut self) {
        loop {
            let deadline = self.finalizing.as_ref().map(|f| f.deadline);
            let wake = tokio::select! {
                biased;
                c = self.io.commands.recv() => Wake::Cmd(c),
                e = self.link.next() => Wake::Link(e),
                _ = sleep_until(deadline) => Wake::Deadline,
            };
            let ok = match wake {
                Wake::Cmd(None) => break,
                Wake::Cmd(Some(c)) => self.on_command(c).await,
                Wake::Link(LinkEvent::Connected(())) => self.on_connected().await,
                Wake::Link(LinkEvent::Message(m)) => self.on_message(m).await,
                Wake::Link(LinkEvent::Lost(kind)) => {
                    self.on_lost(kind);
                    true
                }
                Wake::Link(LinkEvent::GaveUp(kind)) => self.give_up(kind).await,
                Wake::Link(LinkEvent::Closed) => {
                    self.words.clear();
                    true
                }
                Wake::Deadline => self.on_deadline().await,
            };
            self.link.set_busy(self.active());
            if !ok {
                break;
            }
        }
        self.link.close();
    }

    /// A turn is open or being finalized.
    fn active(&self) -> bool {
        self.turn_open || self.finalizing.is_some()
    }

    async fn emit(&mut self, ev: SttEvent) -> bool {
        self.io.events.send(ev).await.is_ok()
    }

    fn ensure_connection(&mut self) {
        if !self.failed {
            self.link.open();
        }
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
                self.failed = false;
                self.ensure_connection();
            }
            SttCommand::Audio(data) => {
                if data.is_empty() || self.failed {
                    return true;
                }
                self.pending.push_back((false, data));
                if self.link.is_up() {
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
                    flushed: false,
                });
                if self.link.is_up() {
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
        self.link.send(Message::text(msg)).await;
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
            if !self.link.send(Message::text(m)).await {
                return;
            }
        }
    }

    async fn on_connected(&mut self) -> bool {
        debug!("gradium stt connected");
        self.server_error = None;
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

    async fn give_up(&mut self, kind: ProviderErrorKind) -> bool {
        self.failed = true;
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

    /// The socket is gone. During a turn: reconnect and replay the turn, also after a normal or
    /// 1008 close of a socket that worked (Gradium's 300 s session cap); a refusal of a socket
    /// that never worked gives up. Idle: reopened at the next turn.
    fn on_lost(&mut self, kind: ProviderErrorKind) {
        let kind = self.server_error.take().unwrap_or(kind);
        let flushed = self.finalizing.as_ref().is_some_and(|f| f.flushed);
        if !self.active() || flushed {
            // Idle, or the turn is transcribed (its grace period ends on the deadline).
            debug!(error = %kind, "gradium stt socket closed while idle; will reopen at the next turn");
            return;
        }
        if kind.is_retryable() || self.link.socket_worked() {
            self.link.reconnect(kind);
        } else {
            self.link.fail(kind);
        }
    }

    async fn on_message(&mut self, m: Message) -> bool {
        let Message::Text(text) = m else {
            return true;
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
            self.link.confirm();
        }
        match msg {
            ServerMessage::Ready { .. } => true,
            ServerMessage::Text { text, .. } => {
                if !self.active() {
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
                let grace = self.sh.flushed_grace;
                let Some(f) = self.finalizing.as_mut().filter(|f| !f.flushed) else {
                    return true;
                };
                if id_string(&flush_id) != f.flush_id.to_string() {
                    debug!(?flush_id, "flushed for an older flush");
                    return true;
                }
                // Words may still come just after `flushed`: collect them for a moment.
                f.flushed = true;
                f.deadline = Instant::now() + grace;
                self.pending.clear();
                if grace.is_zero() {
                    return self.on_deadline().await;
                }
                true
            }
            ServerMessage::Error { code, message, .. } => {
                // The close follows; it is handled as a loss with this error.
                warn!(?code, %message, "gradium stt error");
                self.server_error = Some(error_kind(code, &message));
                true
            }
            ServerMessage::EndOfStream { .. } => {
                // The server ended the stream (its close follows).
                self.server_error = Some(ProviderErrorKind::Closed {
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
        if f.flushed {
            // The grace period after `flushed` is over: the turn's transcript.
            let text = self.take_text();
            return self.emit(SttEvent::Transcript(text)).await;
        }
        if !self.link.is_up() || !f.heard_server {
            // Reconnecting, or a socket that says nothing (steps come every 80 ms on a live
            // one): treat as dead, bounded by the retries.
            self.finalizing = Some(Finalizing {
                deadline: Instant::now() + self.sh.transcription_timeout,
                ..f
            });
            if self.link.is_up() {
                self.link.abandon();
                self.on_lost(ProviderErrorKind::Timeout(format!(
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

async fn connect(sh: &Shared, setup: &str) -> Result<WsStream, ProviderErrorKind> {
    let mut ws = open(&sh.url, &sh.key, sh.connect_timeout).await?;
    ws.send(Message::text(setup))
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
