//! The names of micdrop's metrics and the one-line helpers that record them.
//!
//! Everything goes through the [`metrics`] facade: without an installed recorder (a library
//! embedder that did not ask for metrics) each helper is a no-op costing a few nanoseconds.
//! `micdrop serve` installs a Prometheus recorder and serves it at `GET /metrics` (see
//! `docs/deploy.md` for the list with labels and buckets).
//!
//! The call engine and the provider clients call these helpers (one line each) so that the
//! metric names and labels live in one place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Gauge: calls in progress on this instance.
pub const CALLS_ACTIVE: &str = "micdrop_calls_active";
/// Counter: calls ended (or refused), label `outcome`.
pub const CALLS_TOTAL: &str = "micdrop_calls_total";
/// Histogram: duration of calls, seconds.
pub const CALL_DURATION_SECONDS: &str = "micdrop_call_duration_seconds";
/// Histogram: per-turn latency, seconds, label `stage` (see [`Stage`]).
pub const TURN_LATENCY_SECONDS: &str = "micdrop_turn_latency_seconds";
/// Counter: barge-ins (the user started speaking while an answer was in progress).
pub const BARGE_INS_TOTAL: &str = "micdrop_barge_ins_total";
/// Counter: requests to providers, labels `provider`, `kind`.
pub const PROVIDER_REQUESTS_TOTAL: &str = "micdrop_provider_requests_total";
/// Counter: failed provider requests, labels `provider`, `kind`.
pub const PROVIDER_ERRORS_TOTAL: &str = "micdrop_provider_errors_total";
/// Counter: provider retries (a new attempt or a reconnection), labels `provider`, `kind`.
pub const PROVIDER_RETRIES_TOTAL: &str = "micdrop_provider_retries_total";
/// Counter: switches to a fallback provider, labels `kind`, `from`, `to`.
pub const FALLBACKS_TOTAL: &str = "micdrop_fallbacks_total";
/// Counter: user audio received, whole seconds (16 kHz s16 mono PCM).
pub const AUDIO_IN_SECONDS_TOTAL: &str = "micdrop_audio_in_seconds_total";
/// Counter: assistant audio sent, whole seconds (16 kHz s16 mono PCM).
pub const AUDIO_OUT_SECONDS_TOTAL: &str = "micdrop_audio_out_seconds_total";
/// Gauge (always 1): the build, label `version`.
pub const BUILD_INFO: &str = "micdrop_build_info";

/// Bytes per second of the protocol's PCM (s16le, 16 kHz, mono), both ways.
const PCM_BYTES_PER_SECOND: u64 = 32_000;

/// A stage of a turn's latency (the `stage` label of [`TURN_LATENCY_SECONDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `StopSpeaking` → final transcript.
    Stt,
    /// Request to the model → its first token.
    LlmFirstToken,
    /// First text sent to the TTS → its first audio.
    TtsFirstAudio,
    /// `StopSpeaking` → first assistant audio frame written to the socket.
    VoiceToVoice,
}

impl Stage {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Stt => "stt",
            Stage::LlmFirstToken => "llm_first_token",
            Stage::TtsFirstAudio => "tts_first_audio",
            Stage::VoiceToVoice => "voice_to_voice",
        }
    }
}

/// Records one stage of a turn's latency.
pub fn turn_latency(stage: Stage, latency: Duration) {
    metrics::histogram!(TURN_LATENCY_SECONDS, "stage" => stage.as_str())
        .record(latency.as_secs_f64());
}

/// Counts a barge-in.
pub fn barge_in() {
    metrics::counter!(BARGE_INS_TOTAL).increment(1);
}

/// Counts user audio received (PCM bytes).
pub fn user_audio(bytes: usize) {
    static CARRY: AtomicU64 = AtomicU64::new(0);
    add_seconds(&CARRY, AUDIO_IN_SECONDS_TOTAL, bytes);
}

/// Counts assistant audio sent (PCM bytes).
pub fn assistant_audio(bytes: usize) {
    static CARRY: AtomicU64 = AtomicU64::new(0);
    add_seconds(&CARRY, AUDIO_OUT_SECONDS_TOTAL, bytes);
}

/// Counters are integers: the bytes are summed process-wide and the counter moves by the whole
/// seconds crossed, so nothing is lost to rounding (the counter lags by less than a second).
fn add_seconds(total: &AtomicU64, name: &'static str, bytes: usize) {
    let bytes = bytes as u64;
    let before = total.fetch_add(bytes, Ordering::Relaxed);
    let crossed = (before + bytes) / PCM_BYTES_PER_SECOND - before / PCM_BYTES_PER_SECOND;
    if crossed > 0 {
        metrics::counter!(name).increment(crossed);
    }
}

/// Counts a request to a provider (`kind`: `stt`, `tts`, `llm`): a model request, or a
/// streaming session (WebSocket) opened.
pub fn provider_request(provider: &str, kind: &'static str) {
    metrics::counter!(PROVIDER_REQUESTS_TOTAL, "provider" => provider.to_owned(), "kind" => kind)
        .increment(1);
}

/// Counts a failed provider request (a failed attempt, or a session lost).
pub fn provider_error(provider: &str, kind: &'static str) {
    metrics::counter!(PROVIDER_ERRORS_TOTAL, "provider" => provider.to_owned(), "kind" => kind)
        .increment(1);
}

/// Counts a provider retry or reconnection.
pub fn provider_retry(provider: &str, kind: &'static str) {
    metrics::counter!(PROVIDER_RETRIES_TOTAL, "provider" => provider.to_owned(), "kind" => kind)
        .increment(1);
}

/// Counts a switch from one provider to its fallback.
pub fn fallback(kind: &'static str, from: &str, to: &str) {
    metrics::counter!(FALLBACKS_TOTAL, "kind" => kind, "from" => from.to_owned(), "to" => to.to_owned())
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn audio_seconds_carry_the_remainder_and_latencies_get_their_stage() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let total = AtomicU64::new(0);
        metrics::with_local_recorder(&recorder, || {
            // 0.9 s, then 0.1 s: one whole second; then 1.5 s: 2.5 s so far, counted 2.
            add_seconds(&total, AUDIO_IN_SECONDS_TOTAL, 3_200 * 9);
            add_seconds(&total, AUDIO_IN_SECONDS_TOTAL, 3_200);
            add_seconds(&total, AUDIO_IN_SECONDS_TOTAL, 48_000);
            turn_latency(Stage::VoiceToVoice, Duration::from_millis(250));
            provider_request("gladia", "stt");
        });
        let text = handle.render();
        assert!(
            text.contains("micdrop_audio_in_seconds_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("micdrop_turn_latency_seconds_count{stage=\"voice_to_voice\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("micdrop_provider_requests_total{provider=\"gladia\",kind=\"stt\"} 1"),
            "{text}"
        );
    }
}
