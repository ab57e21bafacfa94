//! Per-turn latencies: measured inside the call task from the user's `StopSpeaking` to the
//! first assistant audio frame written to the socket.

use std::time::Duration;

use tokio::time::Instant;

use crate::tts::UtteranceId;

/// The latencies of one user turn's answer (`None`: not reached, e.g. a text-only answer has no
/// `tts_first_audio`). Sent as [`CallEvent::TurnLatencies`](super::CallEvent::TurnLatencies)
/// and logged at info level (durations only, never user content).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnLatencies {
    /// Speech-to-text: from `StopSpeaking` to the turn's final transcript (zero when the
    /// transcript arrived before `StopSpeaking`).
    pub stt: Option<Duration>,
    /// The model: from the answer's request to its first text token.
    pub llm_first_token: Option<Duration>,
    /// Text-to-speech: from the first text sent to the TTS to its first audio.
    pub tts_first_audio: Option<Duration>,
    /// Voice to voice: from `StopSpeaking` to the first assistant audio frame written to the
    /// socket.
    pub voice_to_voice: Option<Duration>,
}

/// The moments of one turn, filled in as the answer goes; turned into [`TurnLatencies`] once.
#[derive(Debug)]
pub(super) struct LatencyProbe {
    stopped: Instant,
    transcript: Option<Instant>,
    answer_started: Option<Instant>,
    first_token: Option<Instant>,
    first_tts_text: Option<Instant>,
    first_tts_audio: Option<Instant>,
    /// The utterance that speaks this turn's answer.
    pub utterance: Option<UtteranceId>,
}

impl LatencyProbe {
    /// A probe for a turn that just got its `StopSpeaking`.
    pub fn new(transcript_already: bool) -> Self {
        let now = Instant::now();
        Self {
            stopped: now,
            transcript: transcript_already.then_some(now),
            answer_started: None,
            first_token: None,
            first_tts_text: None,
            first_tts_audio: None,
            utterance: None,
        }
    }

    /// The turn's (first) final transcript arrived.
    pub fn transcript(&mut self) {
        self.transcript.get_or_insert_with(Instant::now);
    }

    /// The answer's model request starts.
    pub fn answer_started(&mut self) {
        self.answer_started.get_or_insert_with(Instant::now);
    }

    /// The answer's first text token arrived; `utterance` is the TTS utterance it opened.
    pub fn first_token(&mut self, utterance: Option<UtteranceId>) {
        if self.first_token.is_none() {
            let now = Instant::now();
            self.first_token = Some(now);
            if utterance.is_some() {
                self.first_tts_text = Some(now);
                self.utterance = utterance;
            }
        }
    }

    /// Audio of `utterance` came from the TTS.
    pub fn tts_audio(&mut self, utterance: UtteranceId) {
        if self.utterance == Some(utterance) {
            self.first_tts_audio.get_or_insert_with(Instant::now);
        }
    }

    /// The latencies, `first_audio_written` being when the answer's first frame went out.
    pub fn finish(self, first_audio_written: Option<Instant>) -> TurnLatencies {
        let since = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
        TurnLatencies {
            stt: since(Some(self.stopped), self.transcript),
            llm_first_token: since(self.answer_started, self.first_token),
            tts_first_audio: since(self.first_tts_text, self.first_tts_audio),
            voice_to_voice: since(Some(self.stopped), first_audio_written),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_latency_spans_its_own_stage() {
        let ms = Duration::from_millis;
        let mut p = LatencyProbe::new(false);
        tokio::time::advance(ms(100)).await;
        p.transcript();
        p.answer_started();
        tokio::time::advance(ms(200)).await;
        p.first_token(Some(3));
        tokio::time::advance(ms(50)).await;
        p.tts_audio(2); // another utterance: ignored
        tokio::time::advance(ms(50)).await;
        p.tts_audio(3);
        p.transcript(); // a second transcript does not move the first
        tokio::time::advance(ms(10)).await;
        let l = p.finish(Some(Instant::now()));
        assert_eq!(
            l,
            TurnLatencies {
                stt: Some(ms(100)),
                llm_first_token: Some(ms(200)),
                tts_first_audio: Some(ms(100)),
                voice_to_voice: Some(ms(410)),
            }
        );
        let text_only = LatencyProbe::new(true);
        let l = text_only.finish(None);
        assert_eq!(l.stt, Some(Duration::ZERO));
        assert_eq!((l.tts_first_audio, l.voice_to_voice), (None, None));
    }
}
