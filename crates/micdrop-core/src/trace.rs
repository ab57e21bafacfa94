//! The trace spans of a call, as `tracing` spans: what an OpenTelemetry layer exports (`micdrop
//! serve` does when `[telemetry] otlp_endpoint` is set; see `docs/deploy.md`).
//!
//! ```text
//! call            call_id, outcome, close_code
//! ├─ turn         call_id, turn, outcome, stt_ms, llm_first_token_ms, tts_first_audio_ms, voice_to_voice_ms
//! │  ├─ stt.utterance   provider, outcome
//! │  ├─ llm.request     provider, step, outcome, tool_calls        (one per model request)
//! │  └─ tts.utterance   provider, utterance, outcome, first_audio_ms
//! └─ tts.utterance      (a first message or a `speak` outside any turn)
//! ```
//!
//! The spans carry ids, counts, provider names, outcomes and durations: never user content
//! (transcripts, answers, tool arguments) nor secrets. The call engine opens them at the
//! moments it already measures for the metrics ([`crate::telemetry`]); the agent opens one
//! `llm.request` per model request, inside the turn's span.

use tracing::Span;

/// The call (its whole life, from the upgrade's call start to the close).
pub const CALL: &str = "call";
/// A user turn: from `StartSpeaking` until its answer is spoken, skipped, or interrupted.
pub const TURN: &str = "turn";
/// The STT's work on a turn: from `StartSpeaking` to the final transcript used for the answer.
pub const STT_UTTERANCE: &str = "stt.utterance";
/// One model request (one agent step).
pub const LLM_REQUEST: &str = "llm.request";
/// One TTS utterance: from its first text to its last audio.
pub const TTS_UTTERANCE: &str = "tts.utterance";
/// Every span name above: the spans an exporter should keep (and nothing else).
pub const SPANS: &[&str] = &[CALL, TURN, STT_UTTERANCE, LLM_REQUEST, TTS_UTTERANCE];

/// The `outcome` recorded when a stage is dropped before it finished (an interruption, the end
/// of the call).
pub const CANCELLED: &str = "cancelled";

/// A span with an `outcome` field that is always recorded: the one given to
/// [`Stage::finish`], or [`CANCELLED`] when the stage is dropped unfinished (the span ends
/// when the last handle on it is dropped).
#[derive(Debug)]
pub struct Stage {
    span: Span,
    outcome: &'static str,
}

impl Stage {
    /// Wraps a span that declares an `outcome` field (`outcome = tracing::field::Empty`).
    pub fn new(span: Span) -> Self {
        Self {
            span,
            outcome: CANCELLED,
        }
    }

    /// The span (to record more fields, or to parent other spans).
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Ends the stage with `outcome`.
    pub fn finish(mut self, outcome: &'static str) {
        self.outcome = outcome;
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.span.record("outcome", self.outcome);
    }
}

/// Milliseconds of a duration, for span fields.
pub fn millis(d: std::time::Duration) -> i64 {
    int(d.as_millis())
}

/// A count or an id as a span field: OpenTelemetry's integers are `i64` (an unsigned `tracing`
/// value would be exported as a string).
pub fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
