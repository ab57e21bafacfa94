//! The call engine: one task owns each call and applies Micdrop's server rules (reference §C).
//!
//! The task runs a `select!` loop over the client's frames, the STT session's events, the
//! answer's agent events, the TTS session's audio, control commands from the embedding code,
//! timers and shutdown, and writes the socket itself. Its state is a few owning values:
//!
//! - the user's turn (`UserTurn`: audio count and budget, turn-detector samples and verdict,
//!   deadlines), replaced by a new value at every `StartSpeaking`. Its audio may run ahead of
//!   real time by [`CallConfig::audio_burst`] at most; beyond, the call closes with 1008
//!   `Audio faster than real time` ([`crate::call_budget`]);
//! - the answer in progress (`Answer`); dropping it aborts the agent;
//! - the `Outbox`: the frames waiting for the socket, the watermark below which audio is
//!   cancelled, the PCM aligner and the pacing of assistant audio (real time plus
//!   [`CallConfig::audio_lead`]). Every audio frame carries its utterance id; a cancel drops
//!   the queued audio of the cancelled utterances at once, so no frame of a cancelled answer is
//!   written after the `StartSpeaking` that cancelled it has been read.
//!
//! Each answered user turn's latencies ([`TurnLatencies`]) are logged and sent to the observer.

mod answer;
mod engine;
mod floor;
mod latency;
mod outbox;
mod trace;
mod user_turn;
mod woken;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::conversation::ConversationItem;
use crate::error::MicdropError;
use crate::protocol::WsMessage;
use crate::socket::{SocketSink, SocketStream};
use crate::stt::SpeechToText;
use crate::tts::TextToSpeech;
use crate::turn::{DEFAULT_TURN_MAX_WAIT, TurnDetector};

pub use floor::{FLOOR_CHUNK, FloorAnswer, io_floor};
pub use latency::TurnLatencies;

/// Default idle timeout: a call that receives no frame at all for this long is closed (1000).
/// Clients send nothing while the user is silent, so this is long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default safety net after `StopSpeaking`: if neither a transcript nor a failure arrives from
/// the STT within this time, the client gets `SkipAnswer` (providers have their own, shorter,
/// transcription timeout; this only guards against a stuck provider).
pub const DEFAULT_TRANSCRIPT_TIMEOUT: Duration = Duration::from_secs(12);
/// How long provider sessions get to close cleanly when a call ends, before being aborted.
pub const PROVIDER_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Default lead of paced assistant audio: the first 500 ms of an answer go out at once, then
/// audio is written at real time, 500 ms ahead of what the client plays.
pub const DEFAULT_AUDIO_LEAD: Duration = Duration::from_millis(500);

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
    /// The call's id, in every log line of the call, in [`CallEnd`] and for the store. `None`:
    /// the engine makes a UUID v4 (unique across server instances).
    pub call_id: Option<String>,
    /// How far assistant audio may run ahead of real time (see [`DEFAULT_AUDIO_LEAD`]); `None`
    /// sends it as fast as the TTS produces it. A barge-in drops what has not been sent yet.
    pub audio_lead: Option<Duration>,
    /// How far the user's audio may run ahead of real time in a turn (default
    /// [`DEFAULT_AUDIO_BURST`](crate::call_budget::DEFAULT_AUDIO_BURST), 5 s); beyond, the call
    /// closes with 1008 `Audio faster than real time`. `None`: no check (clients that send
    /// recorded audio as fast as possible, such as `micdrop call --fast` in tests).
    pub audio_burst: Option<Duration>,
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
    /// The latencies of an answered user turn (once per turn: when its first audio frame is
    /// written, or when the answer ends without audio or is interrupted).
    TurnLatencies(TurnLatencies),
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
            .field("call_id", &self.call_id)
            .field("audio_lead", &self.audio_lead)
            .field("audio_burst", &self.audio_burst)
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
            call_id: None,
            audio_lead: Some(DEFAULT_AUDIO_LEAD),
            audio_burst: Some(crate::call_budget::DEFAULT_AUDIO_BURST),
        }
    }
    /// Sets how far user audio may run ahead of real time (`None`: no check).
    pub fn audio_burst(mut self, burst: Option<Duration>) -> Self {
        self.audio_burst = burst;
        self
    }
    /// Sets the call's id (default: a UUID v4 made when the call starts).
    pub fn call_id(mut self, id: impl Into<String>) -> Self {
        self.call_id = Some(id.into());
        self
    }
    /// Sets the lead of paced assistant audio (`None`: unpaced).
    pub fn audio_lead(mut self, lead: Option<Duration>) -> Self {
        self.audio_lead = lead;
        self
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
    /// The client sent audio faster than real time beyond [`CallConfig::audio_burst`]: closed
    /// with 1008 `Audio faster than real time`.
    AudioFlood(crate::call_budget::AudioFlood),
}

impl EndReason {
    /// The call's `outcome`: the label of the `micdrop_calls_total` metric and the field of the
    /// call's trace span.
    pub fn outcome(&self) -> &'static str {
        match self {
            EndReason::HungUp => "completed",
            EndReason::ClientClosed => "client_closed",
            EndReason::Idle => "idle",
            EndReason::Shutdown => "shutdown",
            EndReason::SocketError(_) => "error",
            EndReason::AudioFlood(_) => "audio_flood",
        }
    }
}

/// The close frame that ended a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallClose {
    /// The close code (1000, 1001, 1002, 1007, 1009, 1011, 4xxx, ...).
    pub code: u16,
    /// The close reason.
    pub reason: String,
    /// Sent by the server (else received from the client).
    pub by_server: bool,
}

/// The end of a call, given to the embedding code (Micdrop's `End` event).
#[derive(Debug, Clone)]
pub struct CallEnd {
    /// The call's id ([`CallConfig::call_id`] or the one the engine made).
    pub call_id: String,
    /// The close frame that ended the call: the server's, or the client's; `None` when the
    /// connection dropped without one.
    pub close: Option<CallClose>,
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
pub fn run_call(
    config: CallConfig,
    sink: SocketSink,
    stream: SocketStream,
) -> impl Future<Output = CallEnd> + Send {
    // No handle: no control channel either (it would cost memory for every call).
    call_future(config, sink, stream, None)
}

/// Prepares a call: returns a handle to drive it and the future that runs it.
pub fn start_call(
    config: CallConfig,
    sink: SocketSink,
    stream: SocketStream,
) -> (CallHandle, impl Future<Output = CallEnd> + Send) {
    let (tx, rx) = mpsc::channel(16);
    (
        CallHandle { tx },
        call_future(config, sink, stream, Some(rx)),
    )
}

/// The call's future. The call's state is built here and boxed (not moved into the future):
/// the future of a call, held by every call for its whole life, stays small (see
/// `engine::CallTask::run`).
fn call_future(
    mut config: CallConfig,
    sink: SocketSink,
    stream: SocketStream,
    control: Option<mpsc::Receiver<Control>>,
) -> impl Future<Output = CallEnd> + Send {
    let id = config
        .call_id
        .take()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // At error level: the span, and so the call_id, is on every line at every log level.
    let span = tracing::error_span!(
        "call",
        call_id = %id,
        outcome = tracing::field::Empty,
        close_code = tracing::field::Empty,
    );
    // Built inside the call's span (its trace holds the span; the task enters it itself, see
    // `engine::CallTask::run`).
    let task = span.in_scope(|| Box::new(engine::CallTask::new(config, id, sink, control)));
    task.run(stream)
}

/// Closes a socket with a Micdrop error (4400, 4401, ...): sends a real close frame with the
/// reason and flushes it before dropping the socket.
pub async fn reject(mut sink: SocketSink, error: &MicdropError) {
    send_close(&mut sink, error.code, error.message.clone()).await;
}

/// Sends a close frame and flushes it (at most 2 s: a dead peer must not hold the call). Codes
/// that RFC 6455 reserves for reports (1005, 1006, 1015) are never sent; a sink that failed is
/// not touched again.
pub(crate) async fn send_close(sink: &mut SocketSink, code: u16, reason: String) {
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
