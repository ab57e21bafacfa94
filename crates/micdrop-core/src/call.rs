//! The call engine: one task owns each call and applies Micdrop's server rules (reference §C).
//!
//! The task runs a `select!` loop over the client's frames, the STT session's events, the
//! current turn's agent events, the TTS session's audio, control commands from the embedding
//! code, timers and shutdown. An answer in progress is a `Turn` value: dropping it aborts the
//! agent (and its model request). Every audio frame carries its utterance id; cancelling raises
//! a watermark shared with the writer task, so no frame of a cancelled answer is written after
//! the `StartSpeaking` that cancelled it has been read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::agent::{Agent, AgentEvent};
use crate::conversation::{Conversation, ConversationItem, Role};
use crate::error::MicdropError;
use crate::protocol::{
    CLOSE_GOING_AWAY, CLOSE_NORMAL, ClientCommand, ClientFrame, PcmAligner, ServerFrame, WsMessage,
    decode_client_frame,
};
use crate::socket::{SocketSink, SocketStream};
use crate::stt::{STT_COMMAND_CAPACITY, SpeechToText, SttCommand, SttEvent, SttSessionIo};
use crate::tts::{
    TTS_COMMAND_CAPACITY, TTS_EVENT_CAPACITY, TextToSpeech, TtsCommand, TtsEvent, TtsSessionIo,
    UtteranceId,
};
use crate::turn::{DEFAULT_TURN_MAX_WAIT, TurnDetector};

/// Default idle timeout: a call that receives no frame at all for this long is closed (1000).
/// Clients send nothing while the user is silent, so this is long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default safety net after `StopSpeaking`: if neither a transcript nor a failure arrives from
/// the STT within this time, the client gets `SkipAnswer` (providers have their own, shorter,
/// transcription timeout; this only guards against a stuck provider).
pub const DEFAULT_TRANSCRIPT_TIMEOUT: Duration = Duration::from_secs(12);
/// How long provider sessions get to close cleanly when a call ends, before being aborted.
pub const PROVIDER_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Capacity of the channel to the writer task (frames); beyond it, frames wait in the call's own
/// queue so that the call task never blocks on a slow client.
pub const WRITER_CAPACITY: usize = 64;

/// Everything a call needs: providers and options. Cheap to clone (providers are shared).
#[derive(Clone)]
pub struct CallConfig {
    /// The agent (none: dictation, every transcript gets `SkipAnswer`).
    pub agent: Option<Agent>,
    /// The speech-to-text provider (required).
    pub stt: Arc<dyn SpeechToText>,
    /// The text-to-speech provider (none: text-only answers followed by `SkipAnswer`).
    pub tts: Option<Arc<dyn TextToSpeech>>,
    /// A fixed first message, spoken when the call starts.
    pub first_message: Option<String>,
    /// Ask the agent for the first message (ignored when `first_message` is set).
    pub generate_first_message: bool,
    /// Send `PartialAssistantMessage` frames with the answer text so far.
    pub partial_messages: bool,
    /// Close the call after this long without any client frame.
    pub idle_timeout: Duration,
    /// Safety net: `SkipAnswer` if the STT says nothing this long after `StopSpeaking`.
    pub transcript_timeout: Duration,
    /// Cancelled when the server shuts down: the call closes with 1001.
    pub shutdown: CancellationToken,
    /// Prior conversation to resume (after the system prompt), for the resume pattern.
    pub history: Vec<ConversationItem>,
    /// Server-side turn detector (Micdrop recommends running it on the client instead).
    pub turn_detector: Option<Arc<dyn TurnDetector>>,
    /// How long a turn judged incomplete is held before being answered anyway.
    pub turn_max_wait: Duration,
    /// Receives the call's events (Micdrop's `Message`, `UserAudio`, `AssistantAudio`), for
    /// recording or persistence. Never blocks the call: events that do not fit are dropped
    /// (with a warning), so give it room.
    pub observer: Option<mpsc::Sender<CallEvent>>,
}

/// An event of a running call, for the embedding code.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// An item was added to the conversation (and sent as `Message`).
    Message(ConversationItem),
    /// The last user item was removed (`CancelLastUserMessage`).
    CancelLastUserMessage,
    /// A chunk of user audio of the open turn.
    UserAudio(Bytes),
    /// A chunk of assistant audio sent to the client.
    AssistantAudio(Bytes),
    /// The agent asked to end the call.
    EndCall,
}

impl std::fmt::Debug for CallConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallConfig")
            .field("agent", &self.agent)
            .field("stt", &self.stt.name())
            .field("tts", &self.tts.as_ref().map(|t| t.name().to_owned()))
            .field("first_message", &self.first_message)
            .field("generate_first_message", &self.generate_first_message)
            .field("partial_messages", &self.partial_messages)
            .finish()
    }
}

impl CallConfig {
    /// A config with an STT provider and defaults for everything else.
    pub fn new(stt: Arc<dyn SpeechToText>) -> Self {
        Self {
            agent: None,
            stt,
            tts: None,
            first_message: None,
            generate_first_message: false,
            partial_messages: false,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            transcript_timeout: DEFAULT_TRANSCRIPT_TIMEOUT,
            shutdown: CancellationToken::new(),
            history: Vec::new(),
            turn_detector: None,
            turn_max_wait: DEFAULT_TURN_MAX_WAIT,
            observer: None,
        }
    }
    /// Sets the observer of the call's events.
    pub fn observer(mut self, tx: mpsc::Sender<CallEvent>) -> Self {
        self.observer = Some(tx);
        self
    }
    /// Sets a server-side turn detector.
    pub fn turn_detector(mut self, detector: Arc<dyn TurnDetector>) -> Self {
        self.turn_detector = Some(detector);
        self
    }
    /// Sets how long an incomplete turn is held.
    pub fn turn_max_wait(mut self, d: Duration) -> Self {
        self.turn_max_wait = d;
        self
    }
    /// Sets the agent.
    pub fn agent(mut self, agent: Agent) -> Self {
        self.agent = Some(agent);
        self
    }
    /// Sets the TTS provider.
    pub fn tts(mut self, tts: Arc<dyn TextToSpeech>) -> Self {
        self.tts = Some(tts);
        self
    }
    /// Sets a fixed first message.
    pub fn first_message(mut self, text: impl Into<String>) -> Self {
        self.first_message = Some(text.into());
        self
    }
    /// Asks the agent for the first message.
    pub fn generate_first_message(mut self, yes: bool) -> Self {
        self.generate_first_message = yes;
        self
    }
    /// Enables partial messages.
    pub fn partial_messages(mut self, yes: bool) -> Self {
        self.partial_messages = yes;
        self
    }
    /// Sets the idle timeout.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }
    /// Sets the shutdown token.
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The client closed the socket (or it dropped).
    ClientClosed,
    /// No frame for the idle timeout.
    Idle,
    /// The server is shutting down.
    Shutdown,
    /// The embedding code hung up.
    HungUp,
    /// A socket error (protocol error, invalid UTF-8, oversized frame, lost connection).
    SocketError(crate::socket::SocketError),
}

/// The end of a call, given to the embedding code (Micdrop's `End` event).
#[derive(Debug, Clone)]
pub struct CallEnd {
    /// The whole conversation, system message included.
    pub conversation: Vec<ConversationItem>,
    /// Duration in whole seconds (rounded).
    pub duration_secs: u64,
    /// Why it ended.
    pub reason: EndReason,
}

/// Commands the embedding code can send to a running call (see [`CallHandle`]).
#[derive(Debug)]
enum Control {
    Speak(String),
    AddUserMessage(String),
    AddAssistantMessage(String),
    Answer,
    Cancel,
    HangUp(u16, String),
}

/// Drives a running call from the embedding code: speak, add messages, answer, hang up.
#[derive(Debug, Clone)]
pub struct CallHandle {
    tx: mpsc::Sender<Control>,
}

impl CallHandle {
    async fn send(&self, c: Control) -> bool {
        self.tx.send(c).await.is_ok()
    }
    /// Speaks a text (adds it as an assistant message); returns false if the call ended.
    pub async fn speak(&self, text: impl Into<String>) -> bool {
        self.send(Control::Speak(text.into())).await
    }
    /// Adds a user message (sent as `Message`).
    pub async fn add_user_message(&self, text: impl Into<String>) -> bool {
        self.send(Control::AddUserMessage(text.into())).await
    }
    /// Adds an assistant message (sent as `Message`), without speaking it.
    pub async fn add_assistant_message(&self, text: impl Into<String>) -> bool {
        self.send(Control::AddAssistantMessage(text.into())).await
    }
    /// Asks the agent to answer now.
    pub async fn answer(&self) -> bool {
        self.send(Control::Answer).await
    }
    /// Cancels the answer in progress and queued speech.
    pub async fn cancel(&self) -> bool {
        self.send(Control::Cancel).await
    }
    /// Ends the call with a close code and reason.
    pub async fn hang_up(&self, code: u16, reason: impl Into<String>) -> bool {
        self.send(Control::HangUp(code, reason.into())).await
    }
}

/// Runs a call to its end on a socket (params, if any, already consumed).
pub async fn run_call(config: CallConfig, sink: SocketSink, stream: SocketStream) -> CallEnd {
    let (handle, fut) = start_call(config, sink, stream);
    drop(handle);
    fut.await
}

/// Prepares a call: returns a handle to drive it and the future that runs it.
pub fn start_call(
    config: CallConfig,
    sink: SocketSink,
    stream: SocketStream,
) -> (CallHandle, impl Future<Output = CallEnd> + Send) {
    let (tx, rx) = mpsc::channel(16);
    let id = next_call_id();
    let span = tracing::info_span!("call", call_id = %id);
    let fut = async move { CallTask::new(config, sink, rx).run(stream).await }.instrument(span);
    (CallHandle { tx }, fut)
}

fn next_call_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("c{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Closes a socket with a Micdrop error (4400, 4401, ...): sends a real close frame with the
/// reason and flushes it before dropping the socket.
pub async fn reject(mut sink: SocketSink, error: &MicdropError) {
    send_close(&mut sink, error.code, error.message.clone()).await;
}

/// Sends a close frame and flushes it (at most 2 s: a dead peer must not hold the call). Codes
/// that RFC 6455 reserves for reports (1005, 1006, 1015) are never sent; a sink that failed is
/// not touched again.
async fn send_close(sink: &mut SocketSink, code: u16, reason: String) {
    if matches!(code, 1005 | 1006 | 1015) {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if sink
            .send(WsMessage::Close(Some((code, reason))))
            .await
            .is_ok()
        {
            let _ = sink.close().await;
        }
    })
    .await;
}

/// Items for the writer task.
#[derive(Debug)]
enum Outgoing {
    Frame(WsMessage),
    Audio(UtteranceId, Bytes),
}

/// The writer task: writes frames in order, drops audio of cancelled utterances.
async fn writer(
    mut sink: SocketSink,
    mut rx: mpsc::Receiver<Outgoing>,
    watermark: Arc<AtomicU64>,
    close: tokio::sync::oneshot::Receiver<(u16, String)>,
) {
    while let Some(out) = rx.recv().await {
        let msg = match out {
            Outgoing::Frame(m) => m,
            Outgoing::Audio(utt, pcm) => {
                if utt < watermark.load(Ordering::Acquire) {
                    continue;
                }
                WsMessage::Binary(pcm)
            }
        };
        if sink.send(msg).await.is_err() {
            return;
        }
    }
    // The call ended: send its close frame, if it has one to send, and flush it.
    if let Ok((code, reason)) = close.await {
        send_close(&mut sink, code, reason).await;
    }
}

/// An answer in progress: the agent task and its events. Dropping it aborts the agent.
struct Turn {
    events: mpsc::Receiver<AgentEvent>,
    task: JoinHandle<()>,
    /// The utterance opened at the first text (if a TTS is configured).
    utterance: Option<UtteranceId>,
    /// The answer text so far (for partial messages).
    text: String,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A turn detector's verdict: (user turn number, complete).
type Verdict = (u64, bool);

/// The turn detector's verdict on the last user turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prediction {
    Pending,
    Complete,
    Incomplete,
}

/// What woke the call task up.
enum Wake {
    Prediction(u64, bool),
    HeldTurnExpired,
    Shutdown,
    Client(Option<Result<WsMessage, crate::socket::SocketError>>),
    Control(Control),
    Agent(Option<AgentEvent>),
    Tts(TtsEvent),
    Stt(SttEvent),
    Writable(Option<mpsc::OwnedPermit<Outgoing>>),
    TranscriptTimeout,
    Idle,
}

/// A job of the serial answer/speak queue.
#[derive(Debug)]
enum Job {
    Answer,
    Speak(String),
}

struct CallTask {
    config: CallConfig,
    started: Instant,
    conversation: Conversation,
    /// Whether the call has an agent (else the server owns the conversation, without system).
    user_turn_open: bool,
    user_chunks: u32,
    /// Id of the last item that an answer was started for (Micdrop's `lastMessageSpeeched`).
    last_answered: Option<u64>,
    /// When set, the STT owes a transcript (StopSpeaking with audio, no unanswered message).
    transcript_deadline: Option<tokio::time::Instant>,
    queue: VecDeque<Job>,
    turn: Option<Turn>,
    /// Turn detection (only with a detector): the samples of the open user turn, the pending
    /// prediction, whether an answer waits for it, and the held-turn deadline.
    turn_samples: Vec<i16>,
    prediction: Prediction,
    /// Created only when a turn detector is configured (channels cost memory per call).
    predictions: Option<(mpsc::Sender<Verdict>, mpsc::Receiver<Verdict>)>,
    user_turn_seq: u64,
    answer_waits_prediction: bool,
    held_deadline: Option<tokio::time::Instant>,
    next_utterance: UtteranceId,
    /// Utterances below this id are cancelled (shared with the writer).
    watermark: Arc<AtomicU64>,
    /// Utterances that already sent audio (to know whether a TTS failure left the client waiting).
    utterance_with_audio: UtteranceId,
    aligner: PcmAligner,
    aligner_utterance: UtteranceId,
    out: mpsc::Sender<Outgoing>,
    out_pending: VecDeque<Outgoing>,
    out_rx: Option<mpsc::Receiver<Outgoing>>,
    sink: Option<SocketSink>,
    control: mpsc::Receiver<Control>,
    stt_tx: Option<mpsc::Sender<SttCommand>>,
    stt_rx: Option<mpsc::Receiver<SttEvent>>,
    tts_tx: Option<mpsc::Sender<TtsCommand>>,
    tts_rx: Option<mpsc::Receiver<TtsEvent>>,
    providers: Vec<JoinHandle<()>>,
}

impl CallTask {
    fn new(config: CallConfig, sink: SocketSink, control: mpsc::Receiver<Control>) -> Self {
        let mut conversation = match &config.agent {
            Some(agent) => Conversation::with_system(agent.system_prompt()),
            None => Conversation::new(),
        };
        for item in &config.history {
            conversation.push(item.clone());
        }
        let (out, out_rx) = mpsc::channel(WRITER_CAPACITY);
        let predictions = config.turn_detector.is_some().then(|| mpsc::channel(4));
        Self {
            config,
            started: Instant::now(),
            conversation,
            user_turn_open: false,
            user_chunks: 0,
            last_answered: None,
            transcript_deadline: None,
            queue: VecDeque::new(),
            turn: None,
            turn_samples: Vec::new(),
            prediction: Prediction::Complete,
            predictions,
            user_turn_seq: 0,
            answer_waits_prediction: false,
            held_deadline: None,
            next_utterance: 1,
            watermark: Arc::new(AtomicU64::new(0)),
            utterance_with_audio: 0,
            aligner: PcmAligner::default(),
            aligner_utterance: 0,
            out,
            out_pending: VecDeque::new(),
            out_rx: Some(out_rx),
            sink: Some(sink),
            control,
            stt_tx: None,
            stt_rx: None,
            tts_tx: None,
            tts_rx: None,
            providers: Vec::new(),
        }
    }

    fn start_providers(&mut self) {
        let (cmd_tx, cmd_rx) = mpsc::channel(STT_COMMAND_CAPACITY);
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let fut = self.config.stt.run(SttSessionIo {
            commands: cmd_rx,
            events: ev_tx,
        });
        self.providers
            .push(tokio::spawn(fut.instrument(tracing::Span::current())));
        self.stt_tx = Some(cmd_tx);
        self.stt_rx = Some(ev_rx);
        if let Some(tts) = &self.config.tts {
            let (cmd_tx, cmd_rx) = mpsc::channel(TTS_COMMAND_CAPACITY);
            let (ev_tx, ev_rx) = mpsc::channel(TTS_EVENT_CAPACITY);
            let fut = tts.run(TtsSessionIo {
                commands: cmd_rx,
                events: ev_tx,
            });
            self.providers
                .push(tokio::spawn(fut.instrument(tracing::Span::current())));
            self.tts_tx = Some(cmd_tx);
            self.tts_rx = Some(ev_rx);
        }
    }

    async fn run(mut self, mut stream: SocketStream) -> CallEnd {
        info!(
            stt = self.config.stt.name(),
            tts = self.config.tts.as_ref().map(|t| t.name()),
            agent = self.config.agent.as_ref().map(|a| a.model_name()),
            "call started"
        );
        let (close_tx, close_rx) = tokio::sync::oneshot::channel();
        let writer_task = tokio::spawn(
            writer(
                self.sink.take().expect("sink"),
                self.out_rx.take().expect("writer channel"),
                self.watermark.clone(),
                close_rx,
            )
            .instrument(tracing::Span::current()),
        );
        self.start_providers();
        self.first_message();

        let idle = tokio::time::sleep(self.config.idle_timeout);
        tokio::pin!(idle);
        let shutdown = self.config.shutdown.clone();
        let (reason, close): (EndReason, Option<(u16, String)>) = loop {
            let transcript_deadline = self.transcript_deadline;
            let held_deadline = self.held_deadline;
            let wake = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::Shutdown,
                // Client frames first: an interruption is handled before any queued audio.
                msg = stream.next() => Wake::Client(msg),
                Some(control) = self.control.recv() => Wake::Control(control),
                ev = recv_turn(&mut self.turn) => Wake::Agent(ev),
                Some(ev) = recv_opt(self.tts_rx.as_mut()) => Wake::Tts(ev),
                Some(ev) = recv_opt(self.stt_rx.as_mut()) => Wake::Stt(ev),
                permit = self.out.clone().reserve_owned(), if !self.out_pending.is_empty() => {
                    Wake::Writable(permit.ok())
                }
                Some((seq, complete)) = recv_opt(self.predictions.as_mut().map(|p| &mut p.1)) => {
                    Wake::Prediction(seq, complete)
                }
                _ = sleep_until(transcript_deadline) => Wake::TranscriptTimeout,
                _ = sleep_until(held_deadline) => Wake::HeldTurnExpired,
                _ = &mut idle => Wake::Idle,
            };
            match wake {
                Wake::Shutdown => {
                    break (
                        EndReason::Shutdown,
                        Some((CLOSE_GOING_AWAY, "Server shutting down".into())),
                    );
                }
                Wake::Client(msg) => {
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + self.config.idle_timeout);
                    match msg {
                        None => break (EndReason::ClientClosed, None),
                        Some(Err(e)) => {
                            // The error's type picks the close code (1002, 1007, 1009, 1011);
                            // a lost connection gets none.
                            if e.is_disconnect() {
                                info!(error = %e, "connection lost");
                            } else {
                                warn!(error = %e, "socket error");
                            }
                            let close = e.close_code().map(|c| (c, e.close_reason().to_owned()));
                            break (EndReason::SocketError(e), close);
                        }
                        Some(Ok(msg)) => match decode_client_frame(msg) {
                            ClientFrame::Close => break (EndReason::ClientClosed, None),
                            ClientFrame::Ignored => {}
                            ClientFrame::Command(c) => self.on_command(c),
                            ClientFrame::Audio(pcm) => self.on_audio(pcm),
                        },
                    }
                }
                Wake::Control(Control::HangUp(code, reason)) => {
                    break (EndReason::HungUp, Some((code, reason)));
                }
                Wake::Control(control) => self.on_control(control),
                Wake::Agent(ev) => self.on_agent_event(ev),
                Wake::Tts(ev) => self.on_tts_event(ev),
                Wake::Stt(ev) => self.on_stt_event(ev),
                Wake::Writable(permit) => {
                    if let (Some(permit), Some(o)) = (permit, self.out_pending.pop_front()) {
                        permit.send(o);
                    }
                }
                Wake::Prediction(seq, complete) => self.on_prediction(seq, complete),
                Wake::HeldTurnExpired => {
                    // Rule 6: the held turn is answered anyway.
                    self.held_deadline = None;
                    debug!("held turn expired: answering");
                    self.cancel();
                    self.enqueue(Job::Answer);
                }
                Wake::TranscriptTimeout => {
                    self.transcript_deadline = None;
                    warn!("no transcript from the STT in time: skipping the answer");
                    self.send(ServerFrame::SkipAnswer);
                }
                Wake::Idle => {
                    break (EndReason::Idle, Some((CLOSE_NORMAL, "Idle timeout".into())));
                }
            }
        };

        // Release providers and the turn, flush what is queued, then close.
        self.turn = None;
        // Closing the command channels ends the provider sessions: give them a moment to close
        // their provider connections cleanly (end the STT session, close the sockets), then
        // abort whatever still runs.
        self.stt_tx = None;
        self.tts_tx = None;
        let providers: Vec<JoinHandle<()>> = self.providers.drain(..).collect();
        let release = async move {
            let aborts: Vec<_> = providers.iter().map(|p| p.abort_handle()).collect();
            if tokio::time::timeout(PROVIDER_CLOSE_GRACE, futures::future::join_all(providers))
                .await
                .is_err()
            {
                for a in aborts {
                    a.abort();
                }
            }
        };
        let out = self.out.clone();
        let pending: Vec<Outgoing> = self.out_pending.drain(..).collect();
        let conversation = self.conversation.to_vec();
        let duration_secs = (self.started.elapsed().as_secs_f64()).round() as u64;
        drop(self);
        let flush = async move {
            for o in pending {
                if out.send(o).await.is_err() {
                    break;
                }
            }
            drop(out);
        };
        let _ = tokio::join!(tokio::time::timeout(Duration::from_secs(2), flush), release);
        if let Some(close) = close {
            let _ = close_tx.send(close);
        } else {
            drop(close_tx);
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), writer_task).await;
        info!(
            ?reason,
            duration_secs,
            items = conversation.len(),
            "call ended"
        );
        CallEnd {
            conversation,
            duration_secs,
            reason,
        }
    }

    // ----- output -----

    fn push_out(&mut self, o: Outgoing) {
        if self.out_pending.is_empty() {
            match self.out.try_send(o) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(o)) => self.out_pending.push_back(o),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        } else {
            self.out_pending.push_back(o);
        }
    }

    fn send(&mut self, frame: ServerFrame) {
        debug!(frame = ?DebugFrame(&frame), "send");
        self.push_out(Outgoing::Frame(frame.encode()));
    }

    fn emit(&mut self, ev: CallEvent) {
        if let Some(obs) = &self.config.observer {
            if let Err(mpsc::error::TrySendError::Full(_)) = obs.try_send(ev) {
                warn!("call observer is full: event dropped");
            }
        }
    }

    // ----- conversation -----

    fn add_item(&mut self, item: ConversationItem) -> u64 {
        let id = self.conversation.push(item.clone());
        self.send(ServerFrame::Message(item.clone()));
        self.emit(CallEvent::Message(item));
        id
    }

    fn add_message(&mut self, role: Role, text: &str) -> Option<u64> {
        // Blank messages are ignored (Micdrop, Aug 2026).
        if text.trim().is_empty() {
            return None;
        }
        let item = match role {
            Role::User => ConversationItem::user(text),
            _ => match &self.config.agent {
                Some(agent) => agent.assistant_item(text)?,
                None => ConversationItem::assistant(text),
            },
        };
        Some(self.add_item(item))
    }

    // ----- rules -----

    fn first_message(&mut self) {
        if let Some(text) = self.config.first_message.clone() {
            self.speak_text(text);
        } else if self.config.generate_first_message && self.config.agent.is_some() {
            self.enqueue(Job::Answer);
        } else {
            self.send(ServerFrame::SkipAnswer);
        }
    }

    /// Rule 1: `cancel()`: the current turn, queued jobs, TTS, stale audio.
    fn cancel(&mut self) {
        self.turn = None;
        self.queue.clear();
        self.watermark.store(self.next_utterance, Ordering::Release);
        let wm = self.next_utterance;
        self.out_pending
            .retain(|o| !matches!(o, Outgoing::Audio(u, _) if *u < wm));
        self.aligner.reset();
        if let Some(tts) = &self.tts_tx {
            if tts.try_send(TtsCommand::Cancel).is_err() {
                warn!("TTS session not accepting commands");
            }
        }
    }

    fn stt(&mut self, cmd: SttCommand) {
        if let Some(stt) = &self.stt_tx {
            if let Err(e) = stt.try_send(cmd) {
                warn!(error = %e, "STT session not accepting commands");
            }
        }
    }

    fn tts(&mut self, cmd: TtsCommand) {
        if let Some(tts) = &self.tts_tx {
            if let Err(e) = tts.try_send(cmd) {
                warn!(error = %e, "TTS session not accepting commands");
            }
        }
    }

    fn on_command(&mut self, cmd: ClientCommand) {
        debug!(?cmd, "client command");
        match cmd {
            // Rule 2.
            ClientCommand::StartSpeaking => {
                self.user_chunks = 0;
                self.transcript_deadline = None;
                self.turn_samples.clear();
                self.held_deadline = None;
                self.answer_waits_prediction = false;
                self.user_turn_seq += 1;
                self.stt(SttCommand::StartTurn);
                self.user_turn_open = true;
                self.cancel();
            }
            // Rule 4.
            ClientCommand::StopSpeaking => {
                let was_open = std::mem::replace(&mut self.user_turn_open, false);
                if was_open {
                    self.stt(SttCommand::EndTurn);
                }
                if !was_open || self.user_chunks == 0 {
                    self.send(ServerFrame::SkipAnswer);
                    return;
                }
                self.start_prediction();
                if self.last_is_unanswered_user() {
                    self.answer_turn();
                } else {
                    self.transcript_deadline =
                        Some(tokio::time::Instant::now() + self.config.transcript_timeout);
                }
            }
            // Rule 11.
            ClientCommand::Mute => {
                self.user_chunks = 0;
                if std::mem::replace(&mut self.user_turn_open, false) {
                    self.stt(SttCommand::DiscardTurn);
                }
                self.transcript_deadline = None;
                self.cancel();
            }
        }
    }

    // Rule 3.
    fn on_audio(&mut self, pcm: Bytes) {
        if !self.user_turn_open {
            return;
        }
        self.user_chunks += 1;
        if self.config.turn_detector.is_some() {
            self.turn_samples.extend(
                pcm.chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]])),
            );
        }
        if self.config.observer.is_some() {
            self.emit(CallEvent::UserAudio(pcm.clone()));
        }
        self.stt(SttCommand::Audio(pcm));
    }

    fn last_is_unanswered_user(&self) -> bool {
        matches!(self.conversation.last(), Some((id, item))
            if item.role() == Role::User && Some(id) != self.last_answered)
    }

    // Rule 5.
    fn on_stt_event(&mut self, ev: SttEvent) {
        match ev {
            SttEvent::Partial(text) => debug!(%text, "partial transcript"),
            SttEvent::Transcript(text) => {
                self.transcript_deadline = None;
                debug!(%text, "transcript");
                if text.trim().is_empty() {
                    self.send(ServerFrame::SkipAnswer);
                    return;
                }
                self.add_message(Role::User, &text);
                if !self.user_turn_open {
                    self.answer_turn();
                }
            }
            SttEvent::Failed { error, pending } => {
                warn!(%error, pending_chunks = pending.len(), "STT failed");
                if self.transcript_deadline.take().is_some() {
                    self.send(ServerFrame::SkipAnswer);
                }
            }
        }
    }

    /// Starts the turn detector on the turn's audio (rule 4); without one the turn is complete.
    fn start_prediction(&mut self) {
        let Some(detector) = self.config.turn_detector.clone() else {
            self.prediction = Prediction::Complete;
            return;
        };
        self.prediction = Prediction::Pending;
        let samples = std::mem::take(&mut self.turn_samples);
        let seq = self.user_turn_seq;
        let Some(tx) = self.predictions.as_ref().map(|p| p.0.clone()) else {
            return;
        };
        tokio::spawn(async move {
            let complete = detector.predict(samples).await;
            let _ = tx.send((seq, complete)).await;
        });
    }

    fn on_prediction(&mut self, seq: u64, complete: bool) {
        if seq != self.user_turn_seq || self.prediction != Prediction::Pending {
            return;
        }
        debug!(complete, "turn prediction");
        self.prediction = if complete {
            Prediction::Complete
        } else {
            Prediction::Incomplete
        };
        if std::mem::take(&mut self.answer_waits_prediction) {
            self.answer_turn();
        }
    }

    // Rule 6.
    fn answer_turn(&mut self) {
        match self.prediction {
            Prediction::Pending => {
                self.answer_waits_prediction = true;
                return;
            }
            Prediction::Incomplete => {
                // Hold the turn: the user probably continues.
                self.send(ServerFrame::SkipAnswer);
                if self.held_deadline.is_none() {
                    self.held_deadline =
                        Some(tokio::time::Instant::now() + self.config.turn_max_wait);
                }
                return;
            }
            Prediction::Complete => self.held_deadline = None,
        }
        self.cancel();
        self.enqueue(Job::Answer);
    }

    fn enqueue(&mut self, job: Job) {
        self.queue.push_back(job);
        self.run_queue();
    }

    /// Starts queued jobs while no answer is in progress (speak jobs complete at once).
    fn run_queue(&mut self) {
        while self.turn.is_none() {
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            match job {
                Job::Speak(text) => self.speak_now(text),
                Job::Answer => self.start_answer(),
            }
        }
    }

    // Rule 7.
    fn start_answer(&mut self) {
        let last = self.conversation.last().map(|(id, _)| id);
        let Some(agent) = self.config.agent.clone() else {
            // Dictation: the `SkipAnswer` is the answer. Unlike Micdrop (which never marks the
            // message answered and so sends a second, early `SkipAnswer` at the next
            // `StopSpeaking`), the message counts as answered.
            self.last_answered = last;
            self.send(ServerFrame::SkipAnswer);
            return;
        };
        if last.is_some() && last == self.last_answered {
            debug!("already answered");
            return;
        }
        self.last_answered = last;
        let (tx, rx) = mpsc::channel(32);
        let items = self.conversation.to_vec();
        let task = tokio::spawn(
            async move { agent.answer(items, tx).await }.instrument(tracing::Span::current()),
        );
        self.turn = Some(Turn {
            events: rx,
            task,
            utterance: None,
            text: String::new(),
        });
    }

    fn open_utterance(&mut self) -> UtteranceId {
        let u = self.next_utterance;
        self.next_utterance += 1;
        self.tts(TtsCommand::Speak(u));
        u
    }

    // Rule 8 for a fixed text: record it, then speak it (or `SkipAnswer` without TTS).
    fn speak_text(&mut self, text: String) {
        self.enqueue(Job::Speak(text));
    }

    fn speak_now(&mut self, text: String) {
        if self.add_message(Role::Assistant, &text).is_none() {
            return;
        }
        let spoken = self
            .config
            .agent
            .as_ref()
            .map_or(text.clone(), |a| a.split_extract(&text).0);
        if self.tts_tx.is_some() {
            let u = self.open_utterance();
            self.tts(TtsCommand::Text(u, spoken));
            self.tts(TtsCommand::EndText(u));
        } else {
            self.send(ServerFrame::SkipAnswer);
        }
    }

    fn on_agent_event(&mut self, ev: Option<AgentEvent>) {
        let Some(ev) = ev else {
            // The answer is complete.
            if let Some(turn) = self.turn.take() {
                match turn.utterance {
                    Some(u) => self.tts(TtsCommand::EndText(u)),
                    None => self.send(ServerFrame::SkipAnswer),
                }
            }
            self.run_queue();
            return;
        };
        match ev {
            AgentEvent::Text(delta) => {
                let Some(turn) = self.turn.as_mut() else {
                    return;
                };
                turn.text.push_str(&delta);
                let cumulative = self.config.partial_messages.then(|| turn.text.clone());
                // The first text of an answer opens its utterance (never for an empty answer).
                let utterance = match turn.utterance {
                    Some(u) => Some(u),
                    None if self.tts_tx.is_some() => {
                        let u = self.open_utterance();
                        if let Some(turn) = self.turn.as_mut() {
                            turn.utterance = Some(u);
                        }
                        Some(u)
                    }
                    None => None,
                };
                if let Some(text) = cumulative {
                    self.send(ServerFrame::PartialAssistantMessage(text));
                }
                if let Some(u) = utterance {
                    self.tts(TtsCommand::Text(u, delta));
                }
            }
            AgentEvent::Message(item) => {
                self.add_item(item);
            }
            AgentEvent::CancelLastUserMessage => {
                if self.conversation.remove_last_user() {
                    self.send(ServerFrame::CancelLastUserMessage);
                    self.emit(CallEvent::CancelLastUserMessage);
                }
            }
            AgentEvent::EndCall => {
                self.send(ServerFrame::EndCall);
                self.emit(CallEvent::EndCall);
            }
            AgentEvent::ToolCall(call) => self.send(ServerFrame::ToolCall(call)),
            AgentEvent::Failed(error) => warn!(%error, "agent failed"),
        }
    }

    fn on_tts_event(&mut self, ev: TtsEvent) {
        match ev {
            TtsEvent::Audio(u, pcm) => {
                if u < self.watermark.load(Ordering::Relaxed) {
                    return;
                }
                if u != self.aligner_utterance {
                    self.aligner.reset();
                    self.aligner_utterance = u;
                }
                if let Some(chunk) = self.aligner.push(&pcm) {
                    self.utterance_with_audio = self.utterance_with_audio.max(u);
                    if self.config.observer.is_some() {
                        self.emit(CallEvent::AssistantAudio(chunk.clone()));
                    }
                    self.push_out(Outgoing::Audio(u, chunk));
                }
            }
            TtsEvent::Done(u) => debug!(utterance = u, "utterance spoken"),
            TtsEvent::Failed {
                utterance,
                error,
                unspoken,
            } => {
                warn!(%error, utterance, unspoken = unspoken.len(), "TTS failed");
                // Without any audio the client would wait forever: release it.
                if utterance >= self.watermark.load(Ordering::Relaxed)
                    && self.utterance_with_audio < utterance
                {
                    self.send(ServerFrame::SkipAnswer);
                }
            }
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Speak(text) => self.speak_text(text),
            Control::AddUserMessage(text) => {
                self.add_message(Role::User, &text);
            }
            Control::AddAssistantMessage(text) => {
                self.add_message(Role::Assistant, &text);
            }
            Control::Answer => self.answer_turn(),
            Control::Cancel => self.cancel(),
            Control::HangUp(..) => {}
        }
    }
}

async fn recv_turn(turn: &mut Option<Turn>) -> Option<AgentEvent> {
    match turn {
        Some(t) => t.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_opt<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Logs frames without user content at info level: the content only shows at debug.
struct DebugFrame<'a>(&'a ServerFrame);

impl std::fmt::Debug for DebugFrame<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            ServerFrame::Audio(b) => write!(f, "Audio({} bytes)", b.len()),
            other => write!(f, "{other:?}"),
        }
    }
}
