//! The client: one task owns the connection and the state, like Micdrop's `MicdropClient`.
//!
//! [`Client::start`] spawns the task and returns a handle and a bounded stream of
//! [`TimedEvent`]s. The handle sends user speech (explicit turns with [`Client::say`], or a
//! continuous source cut by the VAD with [`Client::feed`]), pauses, mutes and stops. The state
//! ([`ClientState`]) follows Micdrop's rules (reference §B.7): `is_processing` after
//! `StopSpeaking` until the first assistant audio or `SkipAnswer`; assistant audio received
//! while the user speaks or while paused is dropped; `StartSpeaking` interrupts the assistant
//! (stops the simulated speaker at once); a recoverable close reconnects after 1 s and re-sends
//! the params; 4400, 4401 and 4404 stop the client.
//!
//! There is no sound card here: the "speaker" is a playback clock. Each accepted audio frame is
//! scheduled right after the previous one, and `is_assistant_speaking` stays true until the
//! clock runs out, as a browser's playback queue would.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use micdrop_core::protocol::{CLOSE_NORMAL, ClientCommand, ServerFrame, ToolCallOutput, WsMessage};
use micdrop_core::time::sleep_until;
use micdrop_core::{ConversationItem, Role};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tracing::{debug, warn};

use crate::audio::{FRAME_SAMPLES, duration_of_bytes, to_bytes};
use crate::error::{ClientError, ClientErrorCode};
use crate::vad::{Recorder, RecorderEvent, Vad, VolumeVad};

/// Default capacity of the event channel.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// Reconnection options (Micdrop's `reconnect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectOptions {
    /// Maximum attempts after a drop; `None` retries forever (Micdrop's default).
    pub max_attempts: Option<u32>,
    /// Delay before each attempt (Micdrop: 1000 ms).
    pub delay: Duration,
    /// A connection still not open after this long fails (Micdrop: 5000 ms).
    pub connection_timeout: Duration,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        Self {
            max_attempts: None,
            delay: Duration::from_millis(1000),
            connection_timeout: Duration::from_millis(5000),
        }
    }
}

/// Options of a call.
pub struct ClientOptions {
    /// The server's WebSocket URL (`ws://…` or `wss://…`).
    pub url: String,
    /// Params sent as the first text frame on every connection (auth goes here).
    pub params: Option<Value>,
    /// Reconnection rules.
    pub reconnect: ReconnectOptions,
    /// The VAD that cuts [`Client::feed`] input into turns (default: [`VolumeVad`]).
    pub vad: Box<dyn Vad>,
    /// Capacity of the event channel; keep reading events, the client waits when it is full.
    pub event_capacity: usize,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Params may hold a token: never print them.
        f.debug_struct("ClientOptions")
            .field("url", &self.url)
            .field("params", &self.params.as_ref().map(|_| "<redacted>"))
            .field("reconnect", &self.reconnect)
            .finish()
    }
}

impl ClientOptions {
    /// Options with Micdrop's defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            params: None,
            reconnect: ReconnectOptions::default(),
            vad: Box::new(VolumeVad::default()),
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    /// Sets the params.
    pub fn params(mut self, params: Value) -> Self {
        self.params = Some(params);
        self
    }

    /// Sets params `{"authorization": "Bearer <token>"}`.
    pub fn bearer(self, token: &str) -> Self {
        self.params(serde_json::json!({ "authorization": format!("Bearer {token}") }))
    }

    /// Sets the reconnection rules.
    pub fn reconnect(mut self, reconnect: ReconnectOptions) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Sets the VAD.
    pub fn vad(mut self, vad: Box<dyn Vad>) -> Self {
        self.vad = vad;
        self
    }
}

/// The state of the client (Micdrop's `MicdropState`, without the device fields).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientState {
    /// Connecting (first connection).
    pub is_starting: bool,
    /// Connected.
    pub is_started: bool,
    /// Waiting for the user: connected, not paused, muted, processing or speaking.
    pub is_listening: bool,
    /// Waiting for an answer (after `StopSpeaking`, until audio or `SkipAnswer`).
    pub is_processing: bool,
    /// A user turn is open (`StartSpeaking` sent, `StopSpeaking` not yet).
    pub is_user_speaking: bool,
    /// Assistant audio is playing (the playback clock has not run out).
    pub is_assistant_speaking: bool,
    /// Paused (`Mute` sent; nothing captured or played).
    pub is_paused: bool,
    /// Muted (nothing captured; the assistant keeps talking).
    pub is_muted: bool,
    /// Waiting to reconnect after a recoverable close.
    pub is_reconnecting: bool,
    /// The conversation as received (kept across reconnections).
    pub conversation: Vec<ConversationItem>,
    /// The answer text so far (with servers sending partial messages).
    pub partial_assistant_message: Option<String>,
    /// The last error.
    pub error: Option<ClientError>,
}

/// An event of the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The state changed.
    StateChange {
        /// The new state.
        state: Box<ClientState>,
        /// The previous state.
        prev: Box<ClientState>,
    },
    /// A conversation item arrived (`Message`).
    Message(ConversationItem),
    /// The answer text so far (`PartialAssistantMessage`).
    PartialAssistantMessage(String),
    /// A tool with `emitOutput` ran (`ToolCall`).
    ToolCall(ToolCallOutput),
    /// A classification result (`Classification`).
    Classification(Value),
    /// The agent ended the call (`EndCall`); the client does not close by itself.
    EndCall,
    /// No (more) answer is coming (`SkipAnswer`).
    SkipAnswer,
    /// The last user message was noise (`CancelLastUserMessage`).
    CancelLastUserMessage,
    /// An error (the state's `error` holds it too).
    Error(ClientError),
    /// Assistant audio accepted for playback (PCM s16le 16 kHz mono).
    AssistantAudio(Bytes),
    /// Assistant audio dropped because the user was speaking or the client was paused.
    AssistantAudioDropped(Bytes),
    /// A command was written to the socket.
    Sent(ClientCommand),
    /// The socket is open (and the params were sent).
    Connected {
        /// 0 for the first connection, then 1, 2, … for reconnections.
        reconnection: u32,
    },
    /// The socket closed (a reconnection may follow).
    Closed {
        /// The close code (1006 when the socket dropped without a close frame).
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The client stopped for good; this is the last event.
    Stopped,
}

/// An event with the instant the client task produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedEvent {
    /// When it happened.
    pub at: Instant,
    /// What happened.
    pub event: Event,
}

/// How fast [`Client::say`] and [`Client::feed_paced`] send audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    /// One 100 ms frame every 100 ms, each sent when its window has been "recorded".
    #[default]
    RealTime,
    /// As fast as the socket takes them.
    Fast,
}

#[derive(Debug)]
enum Cmd {
    StartSpeaking,
    Audio(Bytes),
    StopSpeaking,
    Feed(Vec<i16>),
    Pause,
    Resume,
    Mute,
    Unmute,
    Stop,
}

/// A handle on a running client. Dropping every handle stops the client.
#[derive(Debug)]
pub struct Client {
    tx: mpsc::Sender<Cmd>,
    state: watch::Receiver<ClientState>,
    task: JoinHandle<()>,
}

impl Client {
    /// Starts a call: spawns the client task (which connects) and returns the handle and the
    /// events. Must be called inside a Tokio runtime.
    pub fn start(options: ClientOptions) -> (Client, mpsc::Receiver<TimedEvent>) {
        let (tx, rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(options.event_capacity.max(1));
        let initial = ClientState {
            is_starting: true,
            is_processing: true,
            ..Default::default()
        };
        let (state_tx, state_rx) = watch::channel(initial.clone());
        let task = Task {
            recorder: Recorder::new(options.vad),
            url: options.url,
            params: options.params,
            reconnect: options.reconnect,
            events: ev_tx,
            state_tx,
            state: initial.clone(),
            notified: initial,
            processing: true,
            playback_until: None,
            ws: None,
            ended: None,
            commands: rx,
        };
        let task = tokio::spawn(task.run());
        (
            Client {
                tx,
                state: state_rx,
                task,
            },
            ev_rx,
        )
    }

    async fn cmd(&self, c: Cmd) -> bool {
        self.tx.send(c).await.is_ok()
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn watch_state(&self) -> watch::Receiver<ClientState> {
        self.state.clone()
    }

    /// Opens a user turn (`StartSpeaking`); this interrupts the assistant. Ignored while
    /// offline, paused or muted. Returns false once the client has stopped.
    pub async fn start_speaking(&self) -> bool {
        self.cmd(Cmd::StartSpeaking).await
    }

    /// Sends a chunk of user audio (PCM s16le 16 kHz mono) in the open turn.
    pub async fn send_audio(&self, pcm: Bytes) -> bool {
        self.cmd(Cmd::Audio(pcm)).await
    }

    /// Closes the user turn (`StopSpeaking`).
    pub async fn stop_speaking(&self) -> bool {
        self.cmd(Cmd::StopSpeaking).await
    }

    /// Speaks one turn: `StartSpeaking`, the samples in 100 ms frames at `pace`, `StopSpeaking`.
    pub async fn say(&self, samples: &[i16], pace: Pace) -> bool {
        if !self.start_speaking().await {
            return false;
        }
        let mut ticker = pacer(pace);
        for frame in samples.chunks(FRAME_SAMPLES) {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            if !self.send_audio(to_bytes(frame)).await {
                return false;
            }
        }
        self.stop_speaking().await
    }

    /// Feeds a continuous source (a microphone, a file) through the VAD, which decides when
    /// turns start and stop. Dropped while offline, paused or muted.
    pub async fn feed(&self, samples: Vec<i16>) -> bool {
        self.cmd(Cmd::Feed(samples)).await
    }

    /// Feeds samples in 100 ms windows at `pace` (a simulated microphone).
    pub async fn feed_paced(&self, samples: &[i16], pace: Pace) -> bool {
        let mut ticker = pacer(pace);
        for w in samples.chunks(FRAME_SAMPLES) {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            if !self.feed(w.to_vec()).await {
                return false;
            }
        }
        true
    }

    /// Pauses: ends an open turn, stops playback and sends `Mute`.
    pub async fn pause(&self) -> bool {
        self.cmd(Cmd::Pause).await
    }

    /// Resumes after a pause.
    pub async fn resume(&self) -> bool {
        self.cmd(Cmd::Resume).await
    }

    /// Mutes the microphone locally (an open turn ends); nothing is sent to the server.
    pub async fn mute(&self) -> bool {
        self.cmd(Cmd::Mute).await
    }

    /// Unmutes.
    pub async fn unmute(&self) -> bool {
        self.cmd(Cmd::Unmute).await
    }

    /// Stops the call (close 1000) and waits for the client task to end.
    pub async fn stop(self) {
        let _ = self.tx.send(Cmd::Stop).await;
        let _ = self.task.await;
    }

    /// Waits for the client to stop by itself (final close or given-up reconnection).
    pub async fn finished(self) {
        let Client { tx, task, .. } = self;
        // Keep the sender alive: dropping it would stop the client.
        let _keep = tx;
        let _ = task.await;
    }
}

fn pacer(pace: Pace) -> Option<tokio::time::Interval> {
    match pace {
        Pace::Fast => None,
        Pace::RealTime => {
            let period = Duration::from_millis(100);
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            Some(i)
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why the connected phase ended.
enum ConnEnd {
    /// `stop()` or every handle dropped.
    Stop,
    /// The socket closed with this code and reason.
    Closed(u16, String),
}

struct Task {
    url: String,
    params: Option<Value>,
    reconnect: ReconnectOptions,
    recorder: Recorder,
    events: mpsc::Sender<TimedEvent>,
    state_tx: watch::Sender<ClientState>,
    /// The live state (flags derived in `notify`).
    state: ClientState,
    /// The last state announced.
    notified: ClientState,
    /// Micdrop's `_isProcessing` (the state shows it only when not paused).
    processing: bool,
    /// When the simulated speaker runs out of audio.
    playback_until: Option<tokio::time::Instant>,
    ws: Option<Ws>,
    /// The end of the socket (close, error), read while taking in what had already arrived
    /// before a `StartSpeaking` (see [`Task::take_received`]); handled next.
    ended: Option<WsRead>,
    commands: mpsc::Receiver<Cmd>,
}

/// What reading the socket gave (`None`: the stream ended).
type WsRead = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;

impl Task {
    async fn emit(&mut self, event: Event) {
        let _ = self
            .events
            .send(TimedEvent {
                at: Instant::now(),
                event,
            })
            .await;
    }

    async fn notify(&mut self) {
        let s = &mut self.state;
        s.is_processing = self.processing && !s.is_paused;
        s.is_assistant_speaking = self.playback_until.is_some();
        s.is_listening = s.is_started
            && !s.is_paused
            && !s.is_processing
            && !s.is_muted
            && !s.is_user_speaking
            && !s.is_assistant_speaking;
        if self.state != self.notified {
            let prev = std::mem::replace(&mut self.notified, self.state.clone());
            self.state_tx.send_replace(self.state.clone());
            self.emit(Event::StateChange {
                state: Box::new(self.state.clone()),
                prev: Box::new(prev),
            })
            .await;
        }
    }

    async fn set_error(&mut self, error: ClientError) {
        warn!(%error, "client error");
        self.state.error = Some(error.clone());
        self.notify().await;
        self.emit(Event::Error(error)).await;
    }

    async fn run(mut self) {
        let mut reconnection = 0u32;
        let mut failures = 0u32;
        loop {
            if self.url.is_empty() {
                self.set_error(ClientError::new(ClientErrorCode::MissingUrl, "no URL"))
                    .await;
                break;
            }
            let end = match self.connect().await {
                Ok(ws) => {
                    failures = 0;
                    self.ws = Some(ws);
                    self.state.is_starting = false;
                    self.state.is_started = true;
                    self.state.is_reconnecting = false;
                    self.state.error = None;
                    self.notify().await;
                    self.emit(Event::Connected { reconnection }).await;
                    let end = self.connected().await;
                    self.ws = None;
                    self.ended = None;
                    end
                }
                Err(e) => {
                    debug!(error = %e, "connection failed");
                    ConnEnd::Closed(1006, e)
                }
            };
            // Offline: nothing is captured or played.
            self.state.is_started = false;
            self.state.is_user_speaking = false;
            self.playback_until = None;
            let mut discard = Vec::new();
            self.recorder.reset(&mut discard);
            let (code, reason) = match end {
                ConnEnd::Stop => break,
                ConnEnd::Closed(code, reason) => (code, reason),
            };
            self.emit(Event::Closed {
                code,
                reason: reason.clone(),
            })
            .await;
            let Some(error) = ClientError::from_close(code, &reason) else {
                break;
            };
            let recoverable = error.is_recoverable();
            self.set_error(error).await;
            failures += 1;
            let exhausted = self
                .reconnect
                .max_attempts
                .is_some_and(|max| failures > max);
            if !recoverable || exhausted {
                if exhausted {
                    self.set_error(ClientError::new(
                        ClientErrorCode::Connection,
                        format!("gave up after {} reconnection attempts", failures - 1),
                    ))
                    .await;
                }
                break;
            }
            self.state.is_starting = false;
            self.state.is_reconnecting = true;
            self.notify().await;
            if !self.wait_offline(self.reconnect.delay).await {
                break;
            }
            reconnection += 1;
        }
        self.processing = false;
        self.state.is_starting = false;
        self.state.is_started = false;
        self.state.is_reconnecting = false;
        self.state.is_paused = false;
        self.state.is_muted = false;
        self.notify().await;
        self.emit(Event::Stopped).await;
    }

    async fn connect(&mut self) -> Result<Ws, String> {
        let timeout = self.reconnect.connection_timeout;
        let (mut ws, _) =
            // Small frames (commands, 100 ms of audio) go out at once: no Nagle delay.
            tokio::time::timeout(
                timeout,
                tokio_tungstenite::connect_async_with_config(self.url.as_str(), None, true),
            )
                .await
                .map_err(|_| format!("connection timeout after {} ms", timeout.as_millis()))?
                .map_err(|e| e.to_string())?;
        if let Some(params) = &self.params {
            ws.send(Message::Text(params.to_string().into()))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(ws)
    }

    /// Waits `delay` while offline, handling commands (audio is dropped). False on stop.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let deadline = tokio::time::sleep(delay);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return true,
                cmd = self.commands.recv() => match cmd {
                    None | Some(Cmd::Stop) => return false,
                    Some(cmd) => self.on_command(cmd).await,
                },
            }
        }
    }

    async fn connected(&mut self) -> ConnEnd {
        loop {
            if let Some(read) = self.ended.take() {
                if let Some(end) = self.on_read(read).await {
                    return end;
                }
            }
            let playback = self.playback_until;
            let Some(ws) = self.ws.as_mut() else {
                return ConnEnd::Closed(1006, "no socket".into());
            };
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    None | Some(Cmd::Stop) => {
                        self.close().await;
                        return ConnEnd::Stop;
                    }
                    Some(cmd) => self.on_command(cmd).await,
                },
                read = ws.next() => if let Some(end) = self.on_read(read).await {
                    return end;
                },
                _ = sleep_until(playback) => {
                    self.playback_until = None;
                    self.notify().await;
                }
            }
        }
    }

    /// Handles what reading the socket gave; `Some` when the connection is over.
    async fn on_read(&mut self, read: WsRead) -> Option<ConnEnd> {
        match read {
            None => return Some(ConnEnd::Closed(1006, "socket ended".into())),
            Some(Err(e)) => return Some(ConnEnd::Closed(1006, e.to_string())),
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.as_str().to_owned())
                });
                return Some(ConnEnd::Closed(code, reason));
            }
            Some(Ok(Message::Text(t))) => {
                self.on_server(WsMessage::Text(t.as_str().to_owned())).await;
            }
            Some(Ok(Message::Binary(b))) => self.on_server(WsMessage::Binary(b)).await,
            Some(Ok(_)) => {}
        }
        None
    }

    /// Handles the server frames that have already arrived (they wait in the socket's buffers)
    /// before the client acts on what it heard: a `StartSpeaking` interrupts what came before it,
    /// and only the frames that arrive after it are late. A close or error read here is kept for
    /// the connected loop.
    async fn take_received(&mut self) {
        // Tokio learns that the socket is readable from its I/O driver: a yield lets the runtime
        // poll the driver before this task goes on.
        tokio::task::yield_now().await;
        while self.ended.is_none() {
            let Some(ws) = self.ws.as_mut() else { return };
            let Some(read) = ws.next().now_or_never() else {
                return;
            };
            match read {
                Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                    let _ = self.on_read(read).await;
                }
                Some(Ok(_)) => {}
                end => self.ended = Some(end),
            }
        }
    }

    async fn close(&mut self) {
        if let Some(ws) = self.ws.as_mut() {
            let frame = CloseFrame {
                code: CLOSE_NORMAL.into(),
                reason: "".into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
        }
    }

    async fn write(&mut self, msg: Message) -> bool {
        match self.ws.as_mut() {
            Some(ws) => ws.send(msg).await.is_ok(),
            None => false,
        }
    }

    async fn send_command(&mut self, c: ClientCommand) {
        if self.write(Message::Text(c.as_str().into())).await {
            self.emit(Event::Sent(c)).await;
        }
    }

    fn online(&self) -> bool {
        self.ws.is_some()
    }

    async fn start_turn(&mut self) {
        if !self.online()
            || self.state.is_paused
            || self.state.is_muted
            || self.state.is_user_speaking
        {
            return;
        }
        self.take_received().await;
        self.send_command(ClientCommand::StartSpeaking).await;
        // Interruption: stop the speaker at once, forget the partial answer.
        self.state.is_user_speaking = true;
        self.processing = false;
        self.state.partial_assistant_message = None;
        self.playback_until = None;
        self.notify().await;
    }

    async fn end_turn(&mut self) {
        if !self.state.is_user_speaking {
            return;
        }
        self.state.is_user_speaking = false;
        if self.online() {
            self.send_command(ClientCommand::StopSpeaking).await;
            self.processing = true;
        }
        self.notify().await;
    }

    async fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::StartSpeaking => self.start_turn().await,
            Cmd::Audio(pcm) => {
                if self.state.is_user_speaking && self.online() && !pcm.is_empty() {
                    self.write(Message::Binary(pcm)).await;
                }
            }
            Cmd::StopSpeaking => self.end_turn().await,
            Cmd::Feed(samples) => {
                if !self.online() || self.state.is_paused || self.state.is_muted {
                    return;
                }
                let mut out = Vec::new();
                self.recorder.push(&samples, &mut out);
                for ev in out {
                    match ev {
                        RecorderEvent::StartSpeaking => self.start_turn().await,
                        RecorderEvent::Audio(a) => {
                            if self.state.is_user_speaking {
                                self.write(Message::Binary(to_bytes(&a))).await;
                            }
                        }
                        RecorderEvent::StopSpeaking => self.end_turn().await,
                    }
                }
            }
            Cmd::Pause => {
                if self.state.is_paused {
                    return;
                }
                let mut out = Vec::new();
                self.recorder.reset(&mut out);
                self.end_turn().await;
                self.state.is_paused = true;
                self.processing = false;
                self.playback_until = None;
                self.notify().await;
                if self.online() {
                    self.send_command(ClientCommand::Mute).await;
                }
            }
            Cmd::Resume => {
                self.state.is_paused = false;
                self.notify().await;
            }
            Cmd::Mute => {
                let mut out = Vec::new();
                self.recorder.reset(&mut out);
                self.end_turn().await;
                self.state.is_muted = true;
                self.notify().await;
            }
            Cmd::Unmute => {
                self.state.is_muted = false;
                self.notify().await;
            }
            Cmd::Stop => {}
        }
    }

    async fn on_server(&mut self, msg: WsMessage) {
        let Some(frame) = ServerFrame::decode(&msg) else {
            if let WsMessage::Text(t) = &msg {
                if let Some(json) = t.strip_prefix("Classification ") {
                    if let Ok(v) = serde_json::from_str(json) {
                        self.emit(Event::Classification(v)).await;
                    }
                } else {
                    debug!(len = t.len(), "ignored unknown server text");
                }
            }
            return;
        };
        match frame {
            ServerFrame::Audio(pcm) => {
                if self.state.is_paused || self.state.is_user_speaking {
                    self.emit(Event::AssistantAudioDropped(pcm)).await;
                    return;
                }
                let now = tokio::time::Instant::now();
                let start = self.playback_until.map_or(now, |t| t.max(now));
                let changed = self.processing || self.playback_until.is_none();
                self.playback_until = Some(start + duration_of_bytes(pcm.len()));
                self.processing = false;
                self.emit(Event::AssistantAudio(pcm)).await;
                if changed {
                    self.notify().await;
                }
            }
            ServerFrame::Message(item) => {
                if item.role() == Role::Assistant {
                    self.state.partial_assistant_message = None;
                }
                self.state.conversation.push(item.clone());
                self.notify().await;
                self.emit(Event::Message(item)).await;
            }
            ServerFrame::PartialAssistantMessage(text) => {
                self.state.partial_assistant_message = Some(text.clone());
                self.notify().await;
                self.emit(Event::PartialAssistantMessage(text)).await;
            }
            ServerFrame::CancelLastUserMessage => {
                let conv = &mut self.state.conversation;
                if let Some(i) = conv.iter().rposition(|m| m.role() == Role::User) {
                    conv.remove(i);
                    self.processing = false;
                    self.notify().await;
                }
                self.emit(Event::CancelLastUserMessage).await;
            }
            ServerFrame::SkipAnswer => {
                self.processing = false;
                self.state.partial_assistant_message = None;
                self.notify().await;
                self.emit(Event::SkipAnswer).await;
            }
            ServerFrame::EndCall => self.emit(Event::EndCall).await,
            ServerFrame::ToolCall(call) => self.emit(Event::ToolCall(call)).await,
        }
    }
}
