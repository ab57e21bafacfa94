//! The call's trace spans (see [`crate::trace`]): the turn in progress and its STT stage, the
//! TTS utterances being spoken. The call task calls these at the moments it already handles;
//! every span is parented explicitly (the call's span, or the turn's), whatever task it is
//! opened from.

use tokio::time::Instant;
use tracing::Span;
use tracing::field::Empty;

use super::{EndReason, TurnLatencies};
use crate::trace::{Stage, int, millis};
use crate::tts::UtteranceId;

/// The spans of one call.
pub(super) struct CallTrace {
    call: Span,
    call_id: String,
    stt: String,
    tts: Option<String>,
    turn: Option<TurnTrace>,
    /// TTS utterances opened and not done yet, oldest first.
    utterances: Vec<Utterance>,
}

struct TurnTrace {
    span: Span,
    stt: Option<Stage>,
    /// The answer produced text.
    answered: bool,
    /// The answer is over (spoken, text-only, skipped, failed): the span closes once its
    /// latencies are recorded.
    outcome: Option<&'static str>,
    /// Latencies will be reported for this turn (its `StopSpeaking` opened a probe).
    latencies_pending: bool,
    /// The utterance that speaks the answer.
    utterance: Option<UtteranceId>,
}

struct Utterance {
    id: UtteranceId,
    stage: Stage,
    opened: Instant,
    heard: bool,
}

impl CallTrace {
    /// The spans of a call whose span is `call`.
    pub fn new(call: Span, call_id: &str, stt: &str, tts: Option<&str>) -> Self {
        Self {
            call,
            call_id: call_id.to_owned(),
            stt: stt.to_owned(),
            tts: tts.map(str::to_owned),
            turn: None,
            utterances: Vec::new(),
        }
    }

    /// The call's span.
    pub fn call_span(&self) -> &Span {
        &self.call
    }

    /// The span that an answer starting now belongs to: the open turn's, else the call's.
    pub fn answer_span(&self) -> &Span {
        match &self.turn {
            Some(t) if t.outcome.is_none() => &t.span,
            _ => &self.call,
        }
    }

    /// `StartSpeaking`: the previous turn ends (interrupted if its answer was not over), a new
    /// one starts with its STT stage.
    pub fn start_turn(&mut self, seq: u64) {
        self.end_turn("interrupted");
        let span = tracing::info_span!(
            parent: &self.call,
            "turn",
            call_id = %self.call_id,
            turn = int(seq),
            outcome = Empty,
            stt_ms = Empty,
            llm_first_token_ms = Empty,
            tts_first_audio_ms = Empty,
            voice_to_voice_ms = Empty,
        );
        let stt = Stage::new(tracing::info_span!(
            parent: &span,
            "stt.utterance",
            provider = %self.stt,
            outcome = Empty,
        ));
        self.turn = Some(TurnTrace {
            span,
            stt: Some(stt),
            answered: false,
            outcome: None,
            latencies_pending: false,
            utterance: None,
        });
    }

    /// `Mute`: the turn ends, its audio discarded.
    pub fn mute(&mut self) {
        self.end_turn("muted");
    }

    /// `StopSpeaking` of the open turn: with no audio it is skipped; else its latencies will
    /// be reported. `transcribed`: the final transcript came before the `StopSpeaking`.
    pub fn stop_speaking(&mut self, had_audio: bool, transcribed: bool) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if !had_audio {
            if let Some(stt) = turn.stt.take() {
                stt.finish("no_audio");
            }
            return;
        }
        turn.latencies_pending = true;
        if transcribed {
            self.stt_done("transcript");
        }
    }

    /// The STT's work on the turn is over: `transcript`, `empty`, `failed`, `timeout`.
    pub fn stt_done(&mut self, outcome: &'static str) {
        if let Some(stt) = self.turn.as_mut().and_then(|t| t.stt.take()) {
            stt.finish(outcome);
        }
    }

    /// A `SkipAnswer` was sent: the turn's answer is over (or there is none).
    pub fn skip_answer(&mut self) {
        let outcome = match &self.turn {
            Some(t) if t.answered => "answered",
            _ => "skipped",
        };
        self.turn_over(outcome);
    }

    /// The answer's first text (`utterance`: the TTS utterance it opened).
    pub fn answer_text(&mut self, utterance: Option<UtteranceId>) {
        if let Some(t) = self.turn.as_mut().filter(|t| t.outcome.is_none()) {
            t.answered = true;
            t.utterance = utterance;
        }
    }

    /// The turn's latencies (reported once per answered turn).
    pub fn latencies(&mut self, l: &TurnLatencies) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if !std::mem::take(&mut turn.latencies_pending) {
            return;
        }
        for (field, d) in [
            ("stt_ms", l.stt),
            ("llm_first_token_ms", l.llm_first_token),
            ("tts_first_audio_ms", l.tts_first_audio),
            ("voice_to_voice_ms", l.voice_to_voice),
        ] {
            if let Some(d) = d {
                turn.span.record(field, millis(d));
            }
        }
        if turn.outcome.is_some() {
            self.turn = None;
        }
    }

    /// A TTS utterance opens (parented to the open turn, else to the call).
    pub fn open_utterance(&mut self, id: UtteranceId) {
        let Some(provider) = &self.tts else {
            return;
        };
        let parent = self.answer_span();
        let stage = Stage::new(tracing::info_span!(
            parent: parent,
            "tts.utterance",
            provider = %provider,
            utterance = int(id),
            outcome = Empty,
            first_audio_ms = Empty,
        ));
        self.utterances.push(Utterance {
            id,
            stage,
            opened: Instant::now(),
            heard: false,
        });
    }

    /// Audio of utterance `id` came from the TTS.
    pub fn utterance_audio(&mut self, id: UtteranceId) {
        if let Some(u) = self.utterances.iter_mut().find(|u| u.id == id && !u.heard) {
            u.heard = true;
            u.stage
                .span()
                .record("first_audio_ms", millis(u.opened.elapsed()));
        }
    }

    /// Utterance `id` is over: `done` or `failed`. The turn whose answer it speaks is over too.
    pub fn utterance_over(&mut self, id: UtteranceId, outcome: &'static str) {
        if let Some(pos) = self.utterances.iter().position(|u| u.id == id) {
            self.utterances.remove(pos).stage.finish(outcome);
        }
        if self.turn.as_ref().is_some_and(|t| t.utterance == Some(id)) {
            self.turn_over(if outcome == "done" {
                "answered"
            } else {
                outcome
            });
        }
    }

    /// Every utterance below `watermark` was cancelled.
    pub fn cancel_utterances(&mut self, watermark: UtteranceId) {
        self.utterances.retain(|u| u.id >= watermark);
    }

    /// The call ends: the open turn and utterances end with it, the call span gets its outcome.
    pub fn end_call(&mut self, reason: &EndReason, close_code: Option<u16>) {
        self.end_turn("ended");
        self.utterances.clear();
        self.call.record("outcome", reason.outcome());
        if let Some(code) = close_code {
            self.call.record("close_code", i64::from(code));
        }
    }

    /// The turn's answer is over: the span closes now, or when its latencies come.
    fn turn_over(&mut self, outcome: &'static str) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if turn.outcome.is_some() {
            return;
        }
        turn.outcome = Some(outcome);
        turn.span.record("outcome", outcome);
        if !turn.latencies_pending {
            self.turn = None;
        }
    }

    /// Closes the turn now; `unfinished` is its outcome if its answer was not over.
    fn end_turn(&mut self, unfinished: &'static str) {
        if let Some(turn) = self.turn.take() {
            if turn.outcome.is_none() {
                turn.span.record("outcome", unfinished);
            }
        }
    }
}
