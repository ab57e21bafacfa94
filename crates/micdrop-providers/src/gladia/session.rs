//! The Gladia session task: one call's turns over a reconnecting [`Link`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use micdrop_core::stt::{SttCommand, SttEvent, SttSessionIo};
use micdrop_core::{ProviderErrorKind, SttError};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};
use url::Url;

use super::messages::{ServerMessage, parse_message};
use super::{BYTES_PER_SEC, FEED_AFTER, FEED_STEP, NAME, Shared};
use crate::http::{reqwest_error, status_error};
use crate::link::{ConnectFailure, Connector, Link, LinkEvent};
use crate::ws::{self, WsStream};
use micdrop_core::time::sleep_until;

#[derive(Debug, Deserialize)]
struct InitResponse {
    #[allow(dead_code)]
    #[serde(default)]
    id: Option<String>,
    url: String,
}

/// What the session learns about a new connection.
#[derive(Debug)]
pub(super) struct Opened {
    /// The session URL (to resume after a drop).
    url: Url,
    /// The socket resumed the previous Gladia session (its byte count goes on).
    resumed: bool,
}

/// Resumes the saved Gladia session, or creates one (`POST /v2/live`) and opens its socket.
pub(super) struct GladiaConnector {
    sh: Arc<Shared>,
    /// The session to resume at the next attempt (taken by the attempt: a failed attempt
    /// creates a new session next time).
    resume: Option<Url>,
    /// A random id of this call, sent as `custom_metadata.micdrop_call` so that the sessions of
    /// one call can be told apart (and the simulator continues the call's transcripts).
    call: Arc<str>,
}

impl Connector for GladiaConnector {
    type Info = Opened;

    fn connect(&mut self) -> BoxFuture<'static, Result<(WsStream, Opened), ConnectFailure>> {
        let sh = self.sh.clone();
        let resume = self.resume.take();
        Box::pin(connect(sh, resume, self.call.clone()))
    }
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
    /// The silence sent after the end of the turn, and when more is due.
    feed: SilenceFeed,
}

/// The finalize silence of one turn: a first burst at once, then (while no final came) one
/// [`FEED_STEP`] per [`FEED_STEP`] of time from [`FEED_AFTER`] after the burst on, until `max` in
/// total.
#[derive(Debug, Clone, Copy)]
pub(super) struct SilenceFeed {
    sent: Duration,
    max: Duration,
    /// When the next step is due (`None`: feeding is over).
    next_at: Option<Instant>,
}

impl SilenceFeed {
    /// The first burst (`first`) was sent at `now`.
    pub(super) fn after_burst(first: Duration, max: Duration, now: Instant) -> Self {
        Self {
            sent: first,
            max,
            next_at: (first < max).then_some(now + FEED_AFTER),
        }
    }

    /// When the next step is due.
    pub(super) fn next_at(&self) -> Option<Instant> {
        self.next_at
    }

    /// Silence sent so far.
    pub(super) fn sent(&self) -> Duration {
        self.sent
    }

    /// At `now`: the silence to send now (`None`: nothing, feeding over or not due).
    pub(super) fn due(&mut self, now: Instant) -> Option<Duration> {
        let at = self.next_at?;
        if now < at {
            return None;
        }
        let step = FEED_STEP.min(self.max.saturating_sub(self.sent));
        self.sent += step;
        // Real time: a late wake-up sends the missed steps at once.
        self.next_at = (self.sent < self.max).then_some(at + FEED_STEP);
        (!step.is_zero()).then_some(step)
    }

    /// A final came: no more silence.
    pub(super) fn stop(&mut self) {
        self.next_at = None;
    }
}

pub(super) struct Session {
    sh: Arc<Shared>,
    io: SttSessionIo,
    link: Link<GladiaConnector>,
    /// The URL of the current Gladia session (saved for a resume when the socket drops).
    session_url: Option<Url>,
    /// Gave up: no reconnection until the next turn.
    failed: bool,
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
    Link(LinkEvent<Opened>),
    Deadline,
    Feed,
    Keepalive,
}

impl Session {
    pub(super) fn new(sh: Arc<Shared>, io: SttSessionIo) -> Self {
        let connector = GladiaConnector {
            sh: sh.clone(),
            resume: None,
            call: super::call_id().into(),
        };
        // Ending the call (or closing an idle link) ends the Gladia session: a bare close would
        // leave it resumable, holding a concurrency slot until its idle timeout.
        let link = Link::new(NAME, connector, sh.link)
            .with_goodbye(Message::text(json!({"type": "stop_recording"}).to_string()));
        Self {
            sh,
            io,
            link,
            session_url: None,
            failed: false,
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

    pub(super) async fn run(mut self) {
        loop {
            let keepalive_at = self
                .link
                .is_up()
                .then(|| self.last_sent_at + self.sh.keepalive);
            let deadline = self.finalizing.as_ref().map(|f| f.deadline);
            let feed_at = self
                .finalizing
                .as_ref()
                .and_then(|f| f.feed.next_at())
                .filter(|_| self.link.is_up());
            let wake = tokio::select! {
                biased;
                c = self.io.commands.recv() => Wake::Cmd(c),
                e = self.link.next() => Wake::Link(e),
                _ = sleep_until(deadline) => Wake::Deadline,
                _ = sleep_until(feed_at) => Wake::Feed,
                _ = sleep_until(keepalive_at) => Wake::Keepalive,
            };
            let ok = match wake {
                Wake::Cmd(None) => break,
                Wake::Cmd(Some(c)) => self.on_command(c).await,
                Wake::Link(LinkEvent::Connected(o)) => self.on_connected(o).await,
                Wake::Link(LinkEvent::Message(m)) => self.on_message(m).await,
                Wake::Link(LinkEvent::Lost(kind)) => {
                    self.on_lost(kind);
                    true
                }
                Wake::Link(LinkEvent::GaveUp(kind)) => self.give_up(kind).await,
                Wake::Link(LinkEvent::Closed) => {
                    // The idle link ended the Gladia session (`stop_recording`).
                    self.session_url = None;
                    true
                }
                Wake::Deadline => self.on_deadline().await,
                Wake::Feed => {
                    self.feed_silence().await;
                    true
                }
                Wake::Keepalive => {
                    let msg = json!({"type": "audio_chunk", "data": {"chunk": ""}}).to_string();
                    self.send(Message::text(msg)).await;
                    true
                }
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

    /// Returns false when the call is gone.
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
                // The previous turn's transcript may still come; its `""` is no longer needed.
                self.finalizing = None;
                self.turn_open = true;
                self.turn_bytes = 0;
                self.turn_transcripts = 0;
                if self.failed {
                    self.failed = false;
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
                if self.link.is_up() {
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
                    feed: SilenceFeed::after_burst(
                        self.sh.first_silence,
                        self.sh.max_silence,
                        Instant::now(),
                    ),
                });
                if self.failed {
                    // Already gave up on this turn's audio (Failed was emitted).
                    self.finalizing = None;
                } else if self.link.is_up() {
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

    /// The first burst of the turn's finalize silence (again after a reconnection); the feeding
    /// restarts from it.
    async fn send_finalize_silence(&mut self) {
        let s = self.sh.finalize_silence.clone();
        self.bytes_sent += s.len() as u64;
        self.send(Message::binary(s)).await;
        if let Some(f) = self.finalizing.as_mut() {
            f.feed = SilenceFeed::after_burst(
                self.sh.first_silence,
                self.sh.max_silence,
                Instant::now(),
            );
        }
    }

    /// No final yet after the first burst: one more step of silence.
    async fn feed_silence(&mut self) {
        let Some(f) = self.finalizing.as_mut() else {
            return;
        };
        let Some(step) = f.feed.due(Instant::now()) else {
            return;
        };
        if f.feed.sent() <= self.sh.first_silence + FEED_STEP {
            debug!("no final after the first burst of silence: feeding more");
        }
        let bytes = whole_samples((step.as_secs_f64() * BYTES_PER_SEC) as u64) as usize;
        let s = self
            .sh
            .feed_step
            .slice(..bytes.min(self.sh.feed_step.len()));
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

    /// Sends a frame (a failure is reported by the link as `Lost`). Returns whether it was sent.
    async fn send(&mut self, msg: Message) -> bool {
        let sent = self.link.send(msg).await;
        if sent {
            self.last_sent_at = Instant::now();
        }
        sent
    }

    async fn on_connected(&mut self, o: Opened) -> bool {
        debug!(resumed = o.resumed, "gladia connected");
        if !o.resumed {
            self.bytes_sent = 0;
            self.acked = 0;
            for p in self.pending.iter_mut() {
                p.offset = None;
            }
        } else {
            // Re-send what the server did not acknowledge, from its byte count on, rounded down
            // to a whole sample (an odd count would shift every later sample by one byte).
            let acked = whole_samples(self.acked);
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
        self.session_url = Some(o.url);
        self.last_sent_at = Instant::now();
        self.flush_pending().await;
        if let Some(f) = self.finalizing.as_mut() {
            f.deadline = Instant::now() + self.sh.transcription_timeout;
            f.heard_server = false;
            self.send_finalize_silence().await;
        }
        true
    }

    /// The socket is gone. A session that is over (close 1000 or 4xxx) is not resumed. During a
    /// turn: reconnect (resume, or a new session with the turn's audio replayed); idle: reopen
    /// at the next turn, no retries spent.
    fn on_lost(&mut self, kind: ProviderErrorKind) {
        let code = match &kind {
            ProviderErrorKind::Closed { code, .. } => Some(*code),
            _ => None,
        };
        if matches!(code, Some(1000) | Some(4000..=4999)) {
            self.session_url = None;
        }
        self.link.connector_mut().resume = self.session_url.clone();
        if !self.active() {
            debug!(error = %kind, "gladia socket closed while idle; will reopen at the next turn");
            return;
        }
        self.link.reconnect(kind);
    }

    async fn give_up(&mut self, kind: ProviderErrorKind) -> bool {
        self.failed = true;
        self.finalizing = None;
        self.session_url = None;
        let pending: Vec<Bytes> = self.pending.drain(..).map(|c| c.data).collect();
        warn!(error = %kind, pending_chunks = pending.len(), "gladia gave up");
        self.emit(SttEvent::Failed {
            error: SttError::new(NAME, kind),
            pending,
        })
        .await
    }

    async fn on_message(&mut self, m: Message) -> bool {
        let Message::Text(text) = m else {
            return true;
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
        if !matches!(parsed, ServerMessage::Error(_)) {
            // A well-formed message: the connection works.
            self.link.confirm();
        }
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
                if let Some(f) = self.finalizing.as_mut() {
                    // The utterance closed: no more silence needed.
                    f.feed.stop();
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

    async fn on_deadline(&mut self) -> bool {
        let Some(f) = self.finalizing.take() else {
            return true;
        };
        if !f.heard_server && self.link.is_up() {
            // Not a word from the server since the end of the turn: a dead connection.
            self.finalizing = Some(Finalizing {
                deadline: Instant::now() + self.sh.transcription_timeout,
                ..f
            });
            self.link.abandon();
            self.on_lost(ProviderErrorKind::Timeout(format!(
                "no message from Gladia within {} ms after the end of the turn",
                self.sh.transcription_timeout.as_millis()
            )));
            return true;
        }
        if !self.link.is_up() {
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

async fn connect(
    sh: Arc<Shared>,
    resume: Option<Url>,
    call: Arc<str>,
) -> Result<(WsStream, Opened), ConnectFailure> {
    if let Some(url) = resume {
        match ws::connect(&url, &[], sh.connect_timeout).await {
            Ok(ws) => {
                return Ok((ws, Opened { url, resumed: true }));
            }
            Err(e) => debug!(error = %e, "gladia resume failed; creating a new session"),
        }
    }
    let url = init(&sh, &call).await?;
    let ws = ws::connect(&url, &[], sh.connect_timeout)
        .await
        .map_err(|kind| ConnectFailure { kind, fatal: false })?;
    Ok((
        ws,
        Opened {
            url,
            resumed: false,
        },
    ))
}

pub(super) async fn init(sh: &Shared, call: &str) -> Result<Url, ConnectFailure> {
    let mut body = sh.init_body.clone();
    if let Some(o) = body.as_object_mut() {
        let meta = o.entry("custom_metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("micdrop_call".into(), json!(call));
        }
    }
    let req = sh
        .client
        .post(sh.init_url.clone())
        .header("x-gladia-key", sh.key.expose())
        .json(&body)
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
        if !session_host_allowed(policy, host) {
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

/// Whether the session URL's host is acceptable under the EU policy: Gladia's own hosts
/// (`*.gladia.io`: the init request went to Gladia with `region = "eu-west"`, and Gladia may hand
/// out a regional WebSocket host), or a host the policy allows.
pub(super) fn session_host_allowed(policy: &crate::config::SovereigntyConfig, host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "gladia.io" || h.ends_with(".gladia.io") || policy.host_allowed(host)
}

/// `bytes` rounded down to whole 16-bit samples.
pub(super) fn whole_samples(bytes: u64) -> u64 {
    bytes & !1
}
