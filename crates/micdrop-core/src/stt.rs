//! The speech-to-text provider trait.
//!
//! A provider runs one **session task** per call (one persistent provider connection, as
//! Micdrop's providers keep). The call sends it [`SttCommand`]s and reads [`SttEvent`]s; the
//! session ends when the command channel closes. Commands never block the call: the session task
//! must drain its command channel promptly (keeping the pending audio of the current turn for
//! replay on reconnection) whatever the state of its provider connection.

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::error::SttError;

/// A command from the call to an STT session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttCommand {
    /// A user turn starts (`StartSpeaking`). A turn still open is ended first (finalized).
    StartTurn,
    /// A chunk of PCM s16le 16 kHz mono of the open turn.
    Audio(Bytes),
    /// The user turn ends (`StopSpeaking`): finalize and emit the transcript(s).
    EndTurn,
    /// Drop the open turn (`Mute`): its transcript may still arrive, which the call handles.
    DiscardTurn,
}

/// An event from an STT session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttEvent {
    /// A final transcript. Several per turn are normal; `""` means nothing was recognized.
    Transcript(String),
    /// An interim transcript (informational; the call does not act on it).
    Partial(String),
    /// The provider gave up after its retries. `pending` is the audio of the turn that was not
    /// transcribed, for a fallback provider to replay.
    Failed {
        /// The error.
        error: SttError,
        /// Audio not yet transcribed.
        pending: Vec<Bytes>,
    },
}

/// The channels of one STT session.
#[derive(Debug)]
pub struct SttSessionIo {
    /// Commands from the call; closed when the call ends.
    pub commands: mpsc::Receiver<SttCommand>,
    /// Events to the call.
    pub events: mpsc::Sender<SttEvent>,
}

/// A speech-to-text provider (object-safe; chosen at run time from config).
pub trait SpeechToText: Send + Sync + 'static {
    /// A short name for logs (`gladia`, `gradium`, ...).
    fn name(&self) -> &str;

    /// Runs one call's session until `io.commands` closes. Cancelling the call drops this future.
    fn run(&self, io: SttSessionIo) -> BoxFuture<'static, ()>;
}

/// Capacity of the command channel of an STT session: 512 commands ≈ 50 s of 100 ms frames, far
/// more than a session task that drains promptly ever holds.
pub const STT_COMMAND_CAPACITY: usize = 512;
