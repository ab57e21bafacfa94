//! Server-side turn detection (Micdrop's `turnDetector`): decides whether the user finished
//! their turn, from the turn's audio. When it says "not complete", the call sends `SkipAnswer`
//! and holds the answer until the user speaks again or `turn_max_wait` passes.

use std::time::Duration;

use futures::future::BoxFuture;

/// Micdrop's default maximum time a turn judged incomplete is held: 4 s.
pub const DEFAULT_TURN_MAX_WAIT: Duration = Duration::from_secs(4);

/// A turn detector (object-safe). Runs once per user turn, after `StopSpeaking`.
pub trait TurnDetector: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// Whether the turn whose audio (PCM 16 kHz mono samples) is given looks complete. An error
    /// or a panic-free failure should answer `true` (never hold a turn because of a bug).
    fn predict(&self, samples: Vec<i16>) -> BoxFuture<'static, bool>;
}
