//! The user's turn as a value: opened by `StartSpeaking`, dropped and replaced by the next one
//! (never reset field by field).

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::call_budget::{AudioBudget, AudioFlood};

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
    /// The turn is ahead of real time by more than the burst allowance: the call closes
    /// (1008), the chunk is not forwarded.
    Flood(AudioFlood),
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
    /// Audio received against the time since the turn opened (`None`: no check).
    budget: Option<AudioBudget>,
    /// Audio chunks of the turn the STT session did not take (its queue was full), and their
    /// bytes: reported in one warning per turn.
    pub stt_dropped: u32,
    /// Bytes of those chunks.
    pub stt_dropped_bytes: u64,
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
            budget: None,
            stt_dropped: 0,
            stt_dropped_bytes: 0,
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
    /// `audio_burst`: how far its audio may run ahead of real time (`None`: no limit).
    pub fn next(previous: &UserTurn, audio_burst: Option<Duration>) -> Self {
        let now = Instant::now();
        Self {
            seq: previous.seq + 1,
            open: true,
            opened_at: Some(now),
            budget: audio_burst.map(|burst| AudioBudget::new(burst, now)),
            prediction: previous.prediction,
            ..Self::default()
        }
    }

    /// Takes a chunk of user audio (rule 3). `keep_samples`: a turn detector wants them.
    pub fn accept_audio(&mut self, pcm: &Bytes, keep_samples: bool) -> AudioVerdict {
        if !self.open {
            return AudioVerdict::Ignored;
        }
        // Issue #11 finding 5: a person speaks in real time (plus a burst).
        if let Some(budget) = self.budget.as_mut() {
            if let Err(flood) = budget.accept(pcm.len(), Instant::now()) {
                return AudioVerdict::Flood(flood);
            }
        }
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
        let mut n = UserTurn::next(&t, None);
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

    #[tokio::test(start_paused = true)]
    async fn a_turn_takes_real_time_audio_plus_the_burst_and_refuses_a_flood() {
        use tokio::time::advance;
        let frame = Bytes::from(vec![0u8; 3200]); // 100 ms
        let mut t = UserTurn::next(&UserTurn::default(), Some(Duration::from_secs(1)));
        // 1 s at once (the burst), then 100 ms per 100 ms for a minute.
        for _ in 0..10 {
            assert_eq!(t.accept_audio(&frame, false), AudioVerdict::Accepted);
        }
        for _ in 0..600 {
            advance(Duration::from_millis(100)).await;
            assert_eq!(t.accept_audio(&frame, false), AudioVerdict::Accepted);
        }
        // One frame ahead of that is refused, and not counted as the turn's audio.
        let chunks = t.chunks;
        assert!(matches!(
            t.accept_audio(&frame, false),
            AudioVerdict::Flood(f) if f.burst == Duration::from_secs(1)
        ));
        assert_eq!(t.chunks, chunks);
        // Without a burst setting there is no limit.
        let mut t = UserTurn::next(&UserTurn::default(), None);
        for _ in 0..10_000 {
            assert_eq!(t.accept_audio(&frame, false), AudioVerdict::Accepted);
        }
    }
}
