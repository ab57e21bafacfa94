//! The user's turn as a value: opened by `StartSpeaking`, dropped and replaced by the next one
//! (never reset field by field).

use bytes::Bytes;
use tokio::time::Instant;

/// The turn detector's verdict on a user turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Prediction {
    /// The detector is still thinking.
    Pending,
    /// The turn looks complete (also: no detector).
    Complete,
    /// The user probably goes on: the answer is held.
    Incomplete,
}

/// What became of a chunk of user audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AudioVerdict {
    /// Part of the open turn: forward it to the STT.
    Accepted,
    /// No turn is open (rule 3): dropped.
    Ignored,
}

/// One user turn: its audio count, the samples for the turn detector, the prediction, and the
/// deadlines that follow its `StopSpeaking`.
#[derive(Debug)]
pub(super) struct UserTurn {
    /// Increases with every `StartSpeaking` (verdicts of older turns are ignored).
    pub seq: u64,
    /// Between `StartSpeaking` and `StopSpeaking`/`Mute`.
    pub open: bool,
    /// When the turn opened (`StartSpeaking`).
    pub opened_at: Option<Instant>,
    /// Audio chunks received while open.
    pub chunks: u32,
    /// Audio bytes received while open.
    pub audio_bytes: u64,
    /// Samples of the turn, kept only when a turn detector is configured.
    pub samples: Vec<i16>,
    /// Turn detection state.
    pub prediction: Prediction,
    /// An answer waits for the pending prediction.
    pub answer_waits_prediction: bool,
    /// When set, the STT owes a transcript (StopSpeaking with audio, no unanswered message).
    pub transcript_deadline: Option<Instant>,
    /// A turn judged incomplete is answered anyway at this time.
    pub held_deadline: Option<Instant>,
}

impl Default for UserTurn {
    /// The state before any `StartSpeaking`: closed, nothing pending.
    fn default() -> Self {
        Self {
            seq: 0,
            open: false,
            opened_at: None,
            chunks: 0,
            audio_bytes: 0,
            samples: Vec::new(),
            prediction: Prediction::Complete,
            answer_waits_prediction: false,
            transcript_deadline: None,
            held_deadline: None,
        }
    }
}

impl UserTurn {
    /// The turn that follows `previous` at `StartSpeaking` (rule 2): a fresh value. The
    /// prediction of the previous turn is carried over: it still governs an answer that waits.
    pub fn next(previous: &UserTurn) -> Self {
        Self {
            seq: previous.seq + 1,
            open: true,
            opened_at: Some(Instant::now()),
            prediction: previous.prediction,
            ..Self::default()
        }
    }

    /// Takes a chunk of user audio (rule 3). `keep_samples`: a turn detector wants them.
    pub fn accept_audio(&mut self, pcm: &Bytes, keep_samples: bool) -> AudioVerdict {
        if !self.open {
            return AudioVerdict::Ignored;
        }
        // Issue #11 finding 5 (audio-flood budget) belongs here: compare `audio_bytes` with the
        // time since `opened_at` and answer a verdict that closes the call (1008) beyond it.
        self.chunks += 1;
        self.audio_bytes += pcm.len() as u64;
        if keep_samples {
            self.samples.extend(
                pcm.chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]])),
            );
        }
        AudioVerdict::Accepted
    }

    /// `StopSpeaking` (rule 4): closes the turn; returns whether it was open.
    pub fn stop(&mut self) -> bool {
        std::mem::replace(&mut self.open, false)
    }

    /// `Mute` (rule 11): the turn is dropped; returns whether it was open.
    pub fn mute(&mut self) -> bool {
        self.chunks = 0;
        self.transcript_deadline = None;
        std::mem::replace(&mut self.open, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_turn_starts_empty_and_counts_only_while_open() {
        let mut t = UserTurn::default();
        assert_eq!(
            t.accept_audio(&Bytes::from_static(&[1, 0]), true),
            AudioVerdict::Ignored
        );
        t.samples.push(5);
        t.held_deadline = Some(Instant::now());
        t.prediction = Prediction::Incomplete;
        let mut n = UserTurn::next(&t);
        assert_eq!((n.seq, n.open, n.chunks), (1, true, 0));
        assert!(n.samples.is_empty() && n.held_deadline.is_none());
        assert_eq!(n.prediction, Prediction::Incomplete);
        assert_eq!(
            n.accept_audio(&Bytes::from_static(&[1, 0, 2, 0]), true),
            AudioVerdict::Accepted
        );
        assert_eq!(
            (n.chunks, n.audio_bytes, n.samples.clone()),
            (1, 4, vec![1, 2])
        );
        assert!(n.stop());
        assert!(!n.stop());
    }
}
