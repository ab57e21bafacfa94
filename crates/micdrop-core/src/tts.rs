//! The text-to-speech provider trait.
//!
//! Like STT, a provider runs one **session task** per call. The call opens an utterance with
//! [`TtsCommand::Speak`], streams its text as the agent writes it, and ends it; audio comes back
//! tagged with the utterance id, so audio of a cancelled utterance is dropped by the call even if
//! the provider still sends it. Utterances are spoken in the order they were opened (the audio of
//! a later utterance follows the audio of an earlier one); [`TtsCommand::Cancel`] drops them all.

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::error::TtsError;

/// Identifies one utterance of a call (increasing).
pub type UtteranceId = u64;

/// A command from the call to a TTS session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtsCommand {
    /// Open a new utterance (spoken after any earlier utterance still in flight).
    Speak(UtteranceId),
    /// More text of the utterance (any chunking: tokens, words, sentences).
    Text(UtteranceId, String),
    /// No more text for this utterance: synthesize the rest and finish.
    EndText(UtteranceId),
    /// Drop everything in flight (interruption).
    Cancel,
}

/// An event from a TTS session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtsEvent {
    /// Audio of an utterance: PCM s16le, 16 kHz, mono (any length; the call re-aligns it).
    Audio(UtteranceId, Bytes),
    /// All the audio of the utterance has been emitted.
    Done(UtteranceId),
    /// The provider gave up after its retries; `unspoken` is the text not yet spoken.
    Failed {
        /// The utterance.
        utterance: UtteranceId,
        /// The error.
        error: TtsError,
        /// Text not yet spoken, for a fallback provider to re-speak.
        unspoken: Vec<String>,
    },
}

/// The channels of one TTS session.
#[derive(Debug)]
pub struct TtsSessionIo {
    /// Commands from the call; closed when the call ends.
    pub commands: mpsc::Receiver<TtsCommand>,
    /// Events to the call.
    pub events: mpsc::Sender<TtsEvent>,
}

/// A text-to-speech provider (object-safe).
pub trait TextToSpeech: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// Runs one call's session until `io.commands` closes.
    fn run(&self, io: TtsSessionIo) -> BoxFuture<'static, ()>;
}

/// Capacity of a TTS session's command channel.
pub const TTS_COMMAND_CAPACITY: usize = 1024;
/// Capacity of a TTS session's event channel (audio chunks waiting for the call task).
pub const TTS_EVENT_CAPACITY: usize = 64;
