//! The simulator script: what the simulated user says, what the simulated model answers, the
//! timing knobs and the faults to inject. Deserialized from the `[sim]` table of a TOML file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::SimError;

/// The whole simulator script (the `[sim]` table). Every field is optional.
///
/// ```
/// let script = micdrop_sim::SimScript::from_toml_str(r#"
/// [sim]
/// transcripts = ["Bonjour", "Quelle heure est-il ?"]
/// "#).unwrap();
/// assert_eq!(script.transcripts.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimScript {
    /// What the user says, one entry per user turn (utterance), in order. When the list runs out
    /// the transcript describes what was heard (`"(1.2 seconds of speech)"`).
    pub transcripts: Vec<String>,
    /// Whether each STT session reads `transcripts` from the start (`session`, the default) or
    /// all sessions share one cursor (`global`, useful when a client reconnects with a new
    /// session and the conversation must go on).
    pub transcript_scope: TranscriptScope,
    /// Silence (audio time) after which the next speech is a new user turn. Speech that resumes
    /// sooner continues the same turn: same transcript entry, same Gladia utterance (its final
    /// waits), same Gradium segment. 0: every endpointed utterance is a turn of its own.
    pub turn_gap_ms: u64,
    /// A held turn also ends when no audio arrives for this long (wall clock; at least three
    /// times the usual interval between the client's audio messages): the client stopped
    /// streaming at the end of its turn.
    pub turn_idle_ms: u64,
    /// Language of the simulated speech and of the default chat answers (`fr`, `en`, ...).
    pub language: String,
    /// RMS energy (on the signed 16-bit scale, 0..32767) above which a 20 ms frame is speech.
    pub speech_threshold: f64,
    /// Set every artificial delay to zero (limits such as idle timeouts stay).
    pub zero_delay: bool,
    /// How TTS audio is produced.
    pub tts_engine: TtsEngine,
    /// Gladia live v2 simulator.
    pub gladia: GladiaScript,
    /// Gradium TTS and STT simulator.
    pub gradium: GradiumScript,
    /// Mistral chat completions simulator.
    pub mistral: MistralScript,
}

impl Default for SimScript {
    fn default() -> Self {
        Self {
            transcripts: Vec::new(),
            transcript_scope: TranscriptScope::Session,
            turn_gap_ms: 800,
            turn_idle_ms: 100,
            language: "fr".into(),
            speech_threshold: 300.0,
            zero_delay: false,
            tts_engine: TtsEngine::Auto,
            gladia: GladiaScript::default(),
            gradium: GradiumScript::default(),
            mistral: MistralScript::default(),
        }
    }
}

/// The API key a simulated service accepts. Its `Debug` output never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SimKey(String);

impl SimKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// Whether `candidate` is this key.
    pub fn matches(&self, candidate: &str) -> bool {
        self.0 == candidate
    }
}

impl From<&str> for SimKey {
    fn from(key: &str) -> Self {
        Self::new(key)
    }
}

impl From<String> for SimKey {
    fn from(key: String) -> Self {
        Self(key)
    }
}

impl std::fmt::Debug for SimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimKey(***)")
    }
}

/// Scope of the transcript cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TranscriptScope {
    /// Each STT session starts at the first transcript.
    #[default]
    Session,
    /// One cursor shared by every session of every STT service.
    Global,
}

/// How the TTS simulator produces audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtsEngine {
    /// `espeak-ng` when it is installed, the tone otherwise.
    #[default]
    Auto,
    /// Always `espeak-ng` (a request fails with error 1011 when it is missing).
    Espeak,
    /// A deterministic tone whose duration follows the text.
    Tone,
}

/// Gladia live v2 knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GladiaScript {
    /// The only accepted `x-gladia-key` (any non-empty key when unset).
    pub api_key: Option<SimKey>,
    /// Concurrency limit on live sessions (init answers 429 above it).
    pub max_sessions: usize,
    /// Wall-clock delay between the end of an utterance and its final transcript.
    pub final_delay_ms: u64,
    /// Audio time between two partial transcripts of one utterance.
    pub partial_interval_ms: u64,
    /// Continuous speech needed before an utterance starts (`speech_start`).
    pub min_speech_ms: u64,
    /// The session closes after this long without audio (an empty chunk counts as audio).
    pub idle_timeout_ms: u64,
    /// Close code of the inactivity close.
    pub idle_close_code: u16,
    /// Maximum session duration (audio time).
    pub max_session_ms: u64,
    /// Never send `audio_chunk` acknowledgments, even when asked for.
    pub drop_acks: bool,
    /// Strict end of utterance (0: off, the default): an utterance is final only once this much
    /// silence (audio time) follows its last speech; the client stopping its stream
    /// (`turn_idle_ms`) does not close it, nor does `turn_gap_ms`. Models a Gladia that needs
    /// trailing silence to close an utterance (missed or late finals when a client sends too
    /// little, Pipecat issue 3405). Off, an utterance closes after `endpointing` and its final
    /// comes when the turn gap is reached or the client stops streaming.
    pub strict_end_silence_ms: u64,
    /// Faults to inject, consumed in order (see [`Fault`]).
    pub faults: Vec<Fault>,
}

impl Default for GladiaScript {
    fn default() -> Self {
        Self {
            api_key: None,
            max_sessions: 30,
            final_delay_ms: 300,
            partial_interval_ms: 250,
            min_speech_ms: 60,
            idle_timeout_ms: 30_000,
            idle_close_code: 1000,
            max_session_ms: 3 * 3600 * 1000,
            drop_acks: false,
            strict_end_silence_ms: 0,
            faults: Vec::new(),
        }
    }
}

/// Gradium TTS and STT knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GradiumScript {
    /// The only accepted `x-api-key` (any non-empty key when unset).
    pub api_key: Option<SimKey>,
    /// Concurrency limit per product (TTS sockets, STT sockets): error 1008 above it.
    pub max_sessions: usize,
    /// Maximum duration of one socket (wall clock), then error 1008 and close.
    pub max_session_ms: u64,
    /// Delay between `setup` and `ready`.
    pub ready_delay_ms: u64,
    /// TTS: delay between the first releasable words and the first audio.
    pub tts_first_audio_ms: u64,
    /// TTS: wall-clock seconds spent per second of audio after the first (0.25 = 4× real time).
    pub tts_realtime_factor: f64,
    /// TTS: how many complete words the model waits for before speaking (until `<flush>` or
    /// `end_of_stream`).
    pub tts_lookahead_words: usize,
    /// TTS: send an undocumented `need_more_text` message after the first audio of a request.
    pub need_more_text: bool,
    /// TTS: espeak-ng voice per Gradium `voice_id` (otherwise `json_config.rewrite_rules`, then
    /// the script language).
    pub voices: BTreeMap<String, String>,
    /// STT: silence after speech that ends it (the `step` inactivity probability of the 2 s
    /// horizon passes 0.5 there); the segment (`end_text`) ends after `turn_gap_ms`.
    pub stt_endpointing_ms: u64,
    /// STT: continuous speech needed before a segment starts.
    pub stt_min_speech_ms: u64,
    /// STT: speech time per word revealed while the user speaks.
    pub stt_word_interval_ms: u64,
    /// STT: wall-clock delay before answering a `flush`.
    pub stt_final_delay_ms: u64,
    /// STT: the last this many words of a flush (and the `end_text` after them) come after
    /// `flushed` instead of before it, as the real service may send them (0: none, the
    /// default). A client that emits the transcript on `flushed` loses them.
    pub stt_words_after_flushed: usize,
    /// STT: wall-clock delay between `flushed` and those late words.
    pub stt_words_after_flushed_ms: u64,
    /// Faults of the TTS socket, consumed in order.
    pub tts_faults: Vec<Fault>,
    /// Faults of the STT socket, consumed in order.
    pub stt_faults: Vec<Fault>,
}

impl Default for GradiumScript {
    fn default() -> Self {
        Self {
            api_key: None,
            max_sessions: 30,
            max_session_ms: 300_000,
            ready_delay_ms: 30,
            tts_first_audio_ms: 180,
            tts_realtime_factor: 0.25,
            tts_lookahead_words: 2,
            need_more_text: false,
            voices: BTreeMap::new(),
            stt_endpointing_ms: 400,
            stt_min_speech_ms: 60,
            stt_word_interval_ms: 300,
            stt_final_delay_ms: 100,
            stt_words_after_flushed: 0,
            stt_words_after_flushed_ms: 50,
            tts_faults: Vec::new(),
            stt_faults: Vec::new(),
        }
    }
}

/// Mistral chat completions knobs and scripted answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MistralScript {
    /// The only accepted bearer token (any non-empty token when unset).
    pub api_key: Option<SimKey>,
    /// Time to first token (after the role chunk).
    pub ttft_ms: u64,
    /// Delay between two content chunks.
    pub inter_token_ms: u64,
    /// Scripted answers (see [`ScriptedReply`]); the default answer echoes the user.
    pub replies: Vec<ScriptedReply>,
    /// Accepted model names; empty: any name of a Mistral model family
    /// (`mistral-*`, `ministral-*`, `open-mistral-*`, `codestral-*`, `magistral-*`, ...).
    pub models: Vec<String>,
    /// Requests per minute before 429 `rate_limited` (unset: no limit).
    pub requests_per_minute: Option<u32>,
    /// Faults, consumed in order.
    pub faults: Vec<Fault>,
}

impl Default for MistralScript {
    fn default() -> Self {
        Self {
            api_key: None,
            ttft_ms: 300,
            inter_token_ms: 30,
            replies: Vec::new(),
            models: Vec::new(),
            requests_per_minute: None,
            faults: Vec::new(),
        }
    }
}

/// One scripted model answer.
///
/// Replies with `when` answer any request whose last user message contains that text
/// (case-insensitive) and are never used up. The others are used in order, one per request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptedReply {
    /// Answer only when the last user message contains this (case-insensitive).
    pub when: Option<String>,
    /// The text of the answer (streamed token by token).
    pub text: Option<String>,
    /// Tool calls of the answer (sent whole, after the text if any).
    pub tool_calls: Vec<ScriptedToolCall>,
    /// Override of `finish_reason` (`stop`, `length`, `tool_calls`, `error`, ...).
    pub finish_reason: Option<String>,
}

/// A scripted tool call.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptedToolCall {
    /// Tool name.
    pub name: String,
    /// Arguments (a table, serialized to a JSON string on the wire; a string is sent as is).
    pub arguments: Value,
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer the HTTP request (Gladia init, Gradium upgrade, Mistral request) with `status`.
    Status,
    /// Accept the request (or connection) and never answer.
    Hang,
    /// Cut the connection (TCP, no close frame) after `after_messages` server messages.
    Drop,
    /// Cut the connection in the middle of the first utterance (STT: after some speech was
    /// received; TTS: after the first audio; Mistral: after the first content chunk).
    DropMidUtterance,
    /// Replace server message number `after_messages + 1` with malformed JSON.
    Malformed,
    /// Close the WebSocket with `code` after `after_messages` server messages.
    Close,
}

/// A fault to inject. Faults are consumed in order: each new request or connection takes the
/// first fault that applies to it and still has `times` left.
///
/// ```toml
/// [sim.mistral]
/// faults = [{ kind = "status", status = 503, times = 2 }, { kind = "drop", after_messages = 3 }]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// HTTP status for `status` (429, 500, 503, ...).
    #[serde(default)]
    pub status: Option<u16>,
    /// Server messages sent before `drop`, `malformed` or `close` strikes.
    #[serde(default)]
    pub after_messages: u32,
    /// Close code for `close`.
    #[serde(default)]
    pub code: Option<u16>,
    /// How many requests or connections it affects.
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

impl Fault {
    /// A fault of the given kind, once.
    pub fn new(kind: FaultKind) -> Self {
        Self {
            kind,
            status: None,
            after_messages: 0,
            code: None,
            times: 1,
        }
    }

    /// `status` fault: answer with this HTTP status.
    pub fn status(status: u16) -> Self {
        Self {
            status: Some(status),
            ..Self::new(FaultKind::Status)
        }
    }

    /// `close` fault: close with `code` after `after` messages.
    pub fn close(after: u32, code: u16) -> Self {
        Self {
            after_messages: after,
            code: Some(code),
            ..Self::new(FaultKind::Close)
        }
    }

    /// `drop` fault after `after` messages.
    pub fn drop_after(after: u32) -> Self {
        Self {
            after_messages: after,
            ..Self::new(FaultKind::Drop)
        }
    }

    /// `malformed` fault: message `after + 1` is malformed.
    pub fn malformed(after: u32) -> Self {
        Self {
            after_messages: after,
            ..Self::new(FaultKind::Malformed)
        }
    }

    /// Sets how many requests or connections the fault affects.
    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }

    fn check(&self) -> Result<(), String> {
        match self.kind {
            FaultKind::Status => match self.status {
                Some(s) if (400..=599).contains(&s) => Ok(()),
                _ => Err("a `status` fault needs `status` between 400 and 599".into()),
            },
            FaultKind::Close => match self.code {
                Some(c) if (1000..=4999).contains(&c) && c != 1005 && c != 1006 => Ok(()),
                _ => Err("a `close` fault needs a sendable `code` (1000..=4999)".into()),
            },
            _ => Ok(()),
        }
    }
}

impl SimScript {
    /// The script with every artificial delay set to zero (for tests).
    pub fn zero_delay(mut self) -> Self {
        self.zero_delay = true;
        self
    }

    /// Parses a TOML document: its `[sim]` table if it has one (other tables, such as the rest
    /// of a `serve` configuration file, are ignored), otherwise the whole document.
    pub fn from_toml_str(s: &str) -> Result<Self, SimError> {
        let doc: toml::Table = toml::from_str(s).map_err(|e| SimError::Script(e.to_string()))?;
        let script: SimScript = match doc.get("sim").cloned() {
            Some(v) => v.try_into(),
            None => toml::Value::Table(doc).try_into(),
        }
        .map_err(|e: toml::de::Error| SimError::Script(e.to_string()))?;
        script.validate()?;
        Ok(script)
    }

    /// Checks values serde cannot check (fault parameters, ranges).
    pub fn validate(&self) -> Result<(), SimError> {
        let all = self
            .gladia
            .faults
            .iter()
            .chain(&self.gradium.tts_faults)
            .chain(&self.gradium.stt_faults)
            .chain(&self.mistral.faults);
        for f in all {
            f.check().map_err(SimError::Script)?;
        }
        if self.speech_threshold.is_nan() || self.speech_threshold < 0.0 {
            return Err(SimError::Script("speech_threshold must be >= 0".into()));
        }
        if self.gradium.tts_realtime_factor.is_nan() || self.gradium.tts_realtime_factor < 0.0 {
            return Err(SimError::Script("tts_realtime_factor must be >= 0".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sim_table_of_a_serve_config() {
        let s = SimScript::from_toml_str(
            r#"
listen = "127.0.0.1:8080"
[providers]
stt = "gladia"
[sim]
transcripts = ["Bonjour", "Quelle heure est-il ?"]
[sim.mistral]
ttft_ms = 10
faults = [{ kind = "status", status = 429, times = 2 }]
"#,
        )
        .unwrap();
        assert_eq!(s.transcripts, ["Bonjour", "Quelle heure est-il ?"]);
        assert_eq!(s.mistral.ttft_ms, 10);
        assert_eq!(s.mistral.inter_token_ms, 30, "defaults kept");
        assert_eq!(s.mistral.faults, [Fault::status(429).times(2)]);
        assert_eq!(s.gladia, GladiaScript::default());
    }

    #[test]
    fn reads_a_bare_table_and_embeds_as_an_option() {
        let s = SimScript::from_toml_str("transcripts = [\"Salut\"]\nzero_delay = true").unwrap();
        assert!(s.zero_delay);
        #[derive(Deserialize)]
        struct Config {
            sim: Option<SimScript>,
        }
        let c: Config = toml::from_str("[sim]\nlanguage = \"en\"").unwrap();
        assert_eq!(c.sim.unwrap().language, "en");
        let c: Config = toml::from_str("").unwrap();
        assert!(c.sim.is_none());
    }

    #[test]
    fn keys_never_show_in_debug_output() {
        let s = SimScript::from_toml_str("[sim.mistral]\napi_key = \"secret-123\"").unwrap();
        assert!(s.mistral.api_key.as_ref().unwrap().matches("secret-123"));
        assert!(!format!("{s:?}").contains("secret-123"));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_faults() {
        assert!(SimScript::from_toml_str("[sim]\ntranscript = [\"x\"]").is_err());
        assert!(
            SimScript::from_toml_str("[sim.gladia]\nfaults = [{ kind = \"status\" }]").is_err()
        );
        assert!(
            SimScript::from_toml_str("[sim.gladia]\nfaults = [{ kind = \"close\", code = 1006 }]")
                .is_err()
        );
        assert!(
            SimScript::from_toml_str("[sim.gladia]\nfaults = [{ kind = \"explode\" }]").is_err()
        );
        let e = SimScript::from_toml_str("[sim]\nspeech_threshold = -1.0").unwrap_err();
        assert!(e.to_string().contains("speech_threshold"));
    }
}
