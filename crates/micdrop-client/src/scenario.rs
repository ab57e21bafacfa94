//! Scenarios: a documented TOML list of steps (speak a WAV, a text or synthetic speech, wait,
//! interrupt the assistant after N ms of its audio, pause, resume, mute, unmute) with
//! expectations (a message appears, an answer is skipped, the call ends, ...). See
//! `docs/client.md` for the format; [`run`] plays one against a server and returns a
//! [`ScenarioReport`] with the failures and the measured timings.
//!
//! ```toml
//! name = "greeting then question"
//! pace = "real_time"
//! [[step]]
//! expect = "message"
//! role = "assistant"
//! [[step]]
//! wait = "answer"
//! [[step]]
//! speech_ms = 800
//! [[step]]
//! expect = "message"
//! role = "user"
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use micdrop_core::ClientCommand;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::audio::{self, AudioError, duration_of_bytes};
use crate::client::{
    Client, ClientOptions, ClientState, Event, Pace, ReconnectOptions, TimedEvent,
};

/// `wait = "answer"` ends once playback is over and no audio has come for this long.
pub const ANSWER_SETTLE: Duration = Duration::from_millis(150);
/// How long a speech step waits for its `StopSpeaking` to be logged.
const STOP_LOGGED_WAIT: Duration = Duration::from_secs(3);

/// Default timeout of waits and expectations.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// A scenario file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name shown in reports.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Server URL (the command line may override it).
    #[serde(default)]
    pub url: Option<String>,
    /// Params sent as the first frame (the command line's `--token` adds `authorization`).
    #[serde(default)]
    pub params: Option<Value>,
    /// espeak-ng voice for `say` steps (default `fr`).
    #[serde(default = "default_voice")]
    pub voice: String,
    /// Pace of user audio (default `real_time`).
    #[serde(default)]
    pub pace: Pace,
    /// Default timeout of waits and expectations, in ms.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// The steps, in order (`[[step]]` tables).
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
}

fn default_voice() -> String {
    "fr".to_owned()
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// One step. Exactly one action among the speech sources (`say`, `wav`, `speech_ms`),
/// `sleep_ms`, `wait`, `action` and `expect`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Speak this text (espeak-ng).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub say: Option<String>,
    /// Speak this WAV file, or raw PCM s16le 16 kHz mono if it ends in `.pcm`/`.raw`
    /// (relative paths are relative to the scenario file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wav: Option<PathBuf>,
    /// Speak this many ms of synthetic speech-like audio (for scripted or simulated STT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speech_ms: Option<u64>,
    /// Send the speech through the VAD (a continuous source followed by 1 s of silence)
    /// instead of one explicit turn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vad: bool,
    /// Barge-in: wait until this many ms of assistant audio of the current answer have
    /// arrived, then speak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupt_after_ms: Option<u64>,
    /// Overrides the scenario's pace for this speech.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pace: Option<Pace>,
    /// Do nothing for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_ms: Option<u64>,
    /// Wait for something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitFor>,
    /// A client action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// An expectation; failing it fails the scenario.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
    /// `expect = "message"`: the role (`user`, `assistant`, `tool_call`, `tool_result`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `expect = "message"`: a text the content (or tool name/parameters/output) contains,
    /// compared without case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// `expect = "tool_call"`: the tool's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// `expect = "closed"`: the close code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// `expect = "no_audio"`: the quiet period in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    /// Overrides the timeout of this wait or expectation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// What a `wait` step waits for.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WaitFor {
    /// The answer to the last user turn (or the greeting) has arrived (audio, `SkipAnswer` or
    /// `CancelLastUserMessage`) and has finished playing, with no new audio for 150 ms.
    Answer,
    /// The first assistant audio after the last user turn.
    Audio,
    /// The client is connected.
    Connected,
}

/// A client action.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `pause()`: sends `Mute`, stops playback.
    Pause,
    /// `resume()`.
    Resume,
    /// `mute()`: local only.
    Mute,
    /// `unmute()`.
    Unmute,
    /// Stop the call now (close 1000).
    Stop,
}

/// An expectation, matched against the events received since the previous matched
/// expectation, speech step or action (or the start), waiting up to the timeout.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// A `Message` (filtered by `role` and `contains`).
    Message,
    /// A `SkipAnswer`.
    Skip,
    /// An `EndCall`.
    EndCall,
    /// A `ToolCall` (filtered by `tool` and `contains`).
    ToolCall,
    /// A `CancelLastUserMessage`.
    CancelLastUserMessage,
    /// Assistant audio (accepted for playback).
    Audio,
    /// No assistant audio at all (accepted or dropped) during `for_ms` from now.
    NoAudio,
    /// The server closed the socket (with `code` if given).
    Closed,
    /// An error event.
    Error,
}

/// A scenario that cannot be loaded or is malformed.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("scenario {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML for a scenario.
    #[error("scenario {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A step is malformed.
    #[error("scenario step {index}: {message}")]
    Step {
        /// 1-based step number.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// Audio for a step cannot be made.
    #[error("scenario step {index}: {source}")]
    Audio {
        /// 1-based step number.
        index: usize,
        /// The cause.
        source: AudioError,
    },
}

impl Scenario {
    /// Parses and validates a scenario from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Loads a scenario file; relative WAV paths are resolved against its folder.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut s: Scenario = toml::from_str(&text).map_err(|e| ScenarioError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for step in &mut s.steps {
            if let Some(wav) = &step.wav {
                if wav.is_relative() {
                    step.wav = Some(base.join(wav));
                }
            }
        }
        if s.name.is_empty() {
            s.name = path
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        s.validate()?;
        Ok(s)
    }

    /// Checks that every step has exactly one action and only the fields it uses.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        for (i, step) in self.steps.iter().enumerate() {
            let err = |message: &str| ScenarioError::Step {
                index: i + 1,
                message: message.to_owned(),
            };
            let speech = [
                step.say.is_some(),
                step.wav.is_some(),
                step.speech_ms.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if speech > 1 {
                return Err(err("use only one of say, wav, speech_ms"));
            }
            let actions = [
                speech == 1,
                step.sleep_ms.is_some(),
                step.wait.is_some(),
                step.action.is_some(),
                step.expect.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if actions != 1 {
                return Err(err(
                    "a step needs exactly one of say/wav/speech_ms, sleep_ms, wait, action, expect",
                ));
            }
            if speech == 0 && (step.interrupt_after_ms.is_some() || step.vad || step.pace.is_some())
            {
                return Err(err(
                    "interrupt_after_ms, vad and pace go with a speech step",
                ));
            }
            let filters = step.role.is_some()
                || step.contains.is_some()
                || step.tool.is_some()
                || step.code.is_some()
                || step.for_ms.is_some();
            if step.expect.is_none() && filters {
                return Err(err("role, contains, tool, code and for_ms go with expect"));
            }
            if step.expect == Some(Expect::NoAudio) && step.for_ms.is_none() {
                return Err(err("expect = \"no_audio\" needs for_ms"));
            }
            if step.timeout_ms.is_some() && step.expect.is_none() && step.wait.is_none() {
                return Err(err("timeout_ms goes with wait or expect"));
            }
        }
        Ok(())
    }
}

/// A callback given every event as it arrives.
pub type EventHook = Box<dyn FnMut(&TimedEvent) + Send>;

/// How to run a scenario.
pub struct RunOptions {
    /// Server URL (required unless the scenario has one).
    pub url: Option<String>,
    /// Params merged over the scenario's (for `--token`).
    pub params: Option<Value>,
    /// Keep the assistant audio in the report (for `--output`).
    pub record: bool,
    /// Stop at the first failed expectation (default) or run every step.
    pub stop_on_failure: bool,
    /// Reconnection rules.
    pub reconnect: ReconnectOptions,
    /// Overrides the pace of every speech step (`Fast` for quick tests).
    pub pace: Option<Pace>,
    /// Called with every event as it arrives (to print the conversation).
    pub on_event: Option<EventHook>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("url", &self.url)
            .field("record", &self.record)
            .finish()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            url: None,
            params: None,
            record: false,
            stop_on_failure: true,
            reconnect: ReconnectOptions::default(),
            pace: None,
            on_event: None,
        }
    }
}

/// A barge-in measured by an interrupt step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BargeIn {
    /// From `StartSpeaking` written to the last assistant audio frame received before the
    /// interrupting turn ended (zero if none arrived; JSON: ms).
    #[serde(serialize_with = "ms")]
    pub audio_after: Duration,
    /// Assistant audio frames received after `StartSpeaking` was written, until the
    /// interrupting turn ended. Frames already in flight count: an upper bound on the frames
    /// the server sent after it read `StartSpeaking`.
    pub late_frames: usize,
}

/// The result of a scenario run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub name: String,
    /// Whether every expectation held.
    pub passed: bool,
    /// What failed ("step 3 (expect message): ...").
    pub failures: Vec<String>,
    /// Per user turn: from the last audio frame (the `StopSpeaking` write that follows it) to
    /// the first assistant audio frame received, for turns answered with audio (JSON: ms).
    #[serde(serialize_with = "ms_list")]
    pub turn_latencies: Vec<Duration>,
    /// User turns sent.
    pub turns_sent: usize,
    /// User turns answered (audio, or `SkipAnswer`/message without audio).
    pub turns_answered: usize,
    /// Barge-ins measured by interrupt steps.
    pub barge_ins: Vec<BargeIn>,
    /// Error events.
    pub errors: Vec<String>,
    /// The final state.
    pub final_state: ClientState,
    /// Assistant audio accepted for playback (PCM s16le 16 kHz), when recording.
    #[serde(skip)]
    pub assistant_audio: Vec<u8>,
    /// Assistant audio bytes accepted, and dropped (user speaking or paused).
    pub audio_bytes: (usize, usize),
    /// Wall time of the run (JSON: ms).
    #[serde(serialize_with = "ms")]
    pub duration: Duration,
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

fn ms_list<S: serde::Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|d| d.as_secs_f64() * 1000.0))
}

/// A compact copy of an event (audio payloads are not kept).
#[derive(Debug, Clone, PartialEq)]
enum Logged {
    Message(micdrop_core::ConversationItem),
    Skip,
    EndCall,
    CancelLastUser,
    ToolCall(String, String),
    Audio(usize),
    Dropped(usize),
    Sent(ClientCommand),
    Closed(u16),
    Error(String),
    Connected,
    Stopped,
    Other,
}

#[derive(Default)]
struct Log {
    events: Vec<(Instant, Logged)>,
    audio: Vec<u8>,
}

type SharedLog = Arc<Mutex<Log>>;

fn compact(ev: &Event) -> Logged {
    match ev {
        Event::Message(m) => Logged::Message(m.clone()),
        Event::SkipAnswer => Logged::Skip,
        Event::EndCall => Logged::EndCall,
        Event::CancelLastUserMessage => Logged::CancelLastUser,
        Event::ToolCall(t) => {
            Logged::ToolCall(t.name.clone(), format!("{} {}", t.parameters, t.output))
        }
        Event::AssistantAudio(a) => Logged::Audio(a.len()),
        Event::AssistantAudioDropped(a) => Logged::Dropped(a.len()),
        Event::Sent(c) => Logged::Sent(*c),
        Event::Closed { code, .. } => Logged::Closed(*code),
        Event::Error(e) => Logged::Error(e.to_string()),
        Event::Connected { .. } => Logged::Connected,
        Event::Stopped => Logged::Stopped,
        _ => Logged::Other,
    }
}

struct Runner {
    client: Option<Client>,
    log: SharedLog,
    len: watch::Receiver<usize>,
    cursor: usize,
    state: watch::Receiver<ClientState>,
    scenario_timeout: Duration,
    barge_ins: Vec<BargeIn>,
}

/// Plays a scenario against a server. Never panics on what the server sends; a server that
/// cannot be reached makes the expectations fail.
pub async fn run(
    scenario: &Scenario,
    options: RunOptions,
) -> Result<ScenarioReport, ScenarioError> {
    scenario.validate()?;
    let started = Instant::now();
    // Prepare the audio of every speech step first, so that timings do not include synthesis.
    let mut speech: Vec<Option<Vec<i16>>> = Vec::with_capacity(scenario.steps.len());
    for (i, step) in scenario.steps.iter().enumerate() {
        let audio = if let Some(text) = &step.say {
            Some(audio::espeak(text, &scenario.voice))
        } else if let Some(wav) = &step.wav {
            Some(audio::read_audio_file(wav))
        } else {
            step.speech_ms.map(|ms| Ok(audio::speech_like(ms)))
        };
        speech.push(audio.transpose().map_err(|source| ScenarioError::Audio {
            index: i + 1,
            source,
        })?);
    }

    let url = options
        .url
        .clone()
        .or_else(|| scenario.url.clone())
        .unwrap_or_default();
    let params = merge_params(scenario.params.clone(), options.params.clone());
    let options_pace = options.pace;
    let mut client_options = ClientOptions::new(url).reconnect(options.reconnect);
    client_options.params = params;
    let (client, mut events) = Client::start(client_options);

    let log: SharedLog = Arc::default();
    let (len_tx, len_rx) = watch::channel(0usize);
    let collector = {
        let log = log.clone();
        let record = options.record;
        let mut on_event = options.on_event;
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let Some(f) = on_event.as_mut() {
                    f(&ev);
                }
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                if record {
                    if let Event::AssistantAudio(a) = &ev.event {
                        l.audio.extend_from_slice(a);
                    }
                }
                l.events.push((ev.at, compact(&ev.event)));
                let n = l.events.len();
                drop(l);
                len_tx.send_replace(n);
            }
        })
    };

    let mut runner = Runner {
        state: client.watch_state(),
        client: Some(client),
        log: log.clone(),
        len: len_rx,
        cursor: 0,
        scenario_timeout: Duration::from_millis(scenario.timeout_ms),
        barge_ins: Vec::new(),
    };
    let mut failures = Vec::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        let pace = options_pace.unwrap_or(step.pace.unwrap_or(scenario.pace));
        if let Err(message) = runner.step(step, speech[i].as_deref(), pace).await {
            failures.push(format!("step {} ({}): {message}", i + 1, describe(step)));
            if options.stop_on_failure {
                break;
            }
        }
    }
    let final_state = runner
        .client
        .as_ref()
        .map(|c| c.state())
        .unwrap_or_else(|| runner.state.borrow().clone());
    if let Some(client) = runner.client.take() {
        client.stop().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), collector).await;

    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
    let mut report = analyse(&log.events);
    report.name = scenario.name.clone();
    report.passed = failures.is_empty();
    report.failures = failures;
    report.barge_ins = runner.barge_ins;
    report.final_state = final_state;
    report.assistant_audio = log.audio;
    report.duration = started.elapsed();
    Ok(report)
}

fn merge_params(base: Option<Value>, over: Option<Value>) -> Option<Value> {
    match (base, over) {
        (Some(Value::Object(mut a)), Some(Value::Object(b))) => {
            a.extend(b);
            Some(Value::Object(a))
        }
        (a, None) => a,
        (_, b) => b,
    }
}

fn describe(step: &Step) -> String {
    if let Some(e) = step.expect {
        format!(
            "expect {}",
            serde_json::to_value(e)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
        )
    } else if let Some(w) = step.wait {
        format!(
            "wait {}",
            serde_json::to_value(w)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
        )
    } else if let Some(a) = step.action {
        format!(
            "action {}",
            serde_json::to_value(a)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
        )
    } else if let Some(ms) = step.sleep_ms {
        format!("sleep {ms} ms")
    } else if step.interrupt_after_ms.is_some() {
        "interrupt".into()
    } else {
        "speak".into()
    }
}

/// Turn latencies and counts from the event log.
fn analyse(events: &[(Instant, Logged)]) -> ScenarioReport {
    let mut r = ScenarioReport::default();
    // The turn waiting for its answer: when its StopSpeaking was written.
    let mut waiting: Option<Instant> = None;
    for (at, ev) in events {
        match ev {
            Logged::Sent(ClientCommand::StopSpeaking) => {
                r.turns_sent += 1;
                waiting = Some(*at);
            }
            Logged::Sent(ClientCommand::StartSpeaking) | Logged::Sent(ClientCommand::Mute) => {
                waiting = None;
            }
            Logged::Audio(n) => {
                r.audio_bytes.0 += n;
                if let Some(t0) = waiting.take() {
                    r.turn_latencies.push(at.saturating_duration_since(t0));
                    r.turns_answered += 1;
                }
            }
            Logged::Dropped(n) => r.audio_bytes.1 += n,
            Logged::Skip | Logged::CancelLastUser if waiting.is_some() => {
                waiting = None;
                r.turns_answered += 1;
            }
            Logged::Error(e) => r.errors.push(e.clone()),
            _ => {}
        }
    }
    r
}

impl Runner {
    fn client(&self) -> Result<&Client, String> {
        self.client
            .as_ref()
            .ok_or_else(|| "the call was stopped".to_owned())
    }

    fn timeout(&self, step: &Step) -> Duration {
        step.timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.scenario_timeout)
    }

    /// Waits until `f` finds something in the log from `from`; returns its index.
    async fn wait_log<F>(&mut self, from: usize, timeout: Duration, mut f: F) -> Option<usize>
    where
        F: FnMut(&(Instant, Logged)) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut checked = from;
        loop {
            {
                let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(i) = log.events[checked.min(log.events.len())..]
                    .iter()
                    .position(&mut f)
                {
                    return Some(checked + i);
                }
                checked = log.events.len().max(checked);
            }
            match tokio::time::timeout_at(deadline, self.len.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the client is gone and nothing more will come.
                _ => return None,
            }
        }
    }

    fn log_len(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .len()
    }

    /// Index just after the last `StopSpeaking` written (0 if none): where the current answer
    /// starts in the log.
    fn answer_start(&self) -> usize {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.events
            .iter()
            .rposition(|(_, e)| matches!(e, Logged::Sent(ClientCommand::StopSpeaking)))
            .map_or(0, |i| i + 1)
    }

    async fn step(
        &mut self,
        step: &Step,
        speech: Option<&[i16]>,
        pace: Pace,
    ) -> Result<(), String> {
        if speech.is_some() || step.action.is_some() {
            // Expectations after a speech step or an action look at what follows it.
            self.cursor = self.cursor.max(self.log_len());
        }
        if let Some(samples) = speech {
            if let Some(after) = step.interrupt_after_ms {
                return self
                    .interrupt(samples, after, pace, self.timeout(step))
                    .await;
            }
            return self.speak(samples, step.vad, pace).await;
        }
        if let Some(ms) = step.sleep_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return Ok(());
        }
        if let Some(w) = step.wait {
            return self.wait(w, self.timeout(step)).await;
        }
        if let Some(a) = step.action {
            let client = self.client()?;
            let ok = match a {
                Action::Pause => client.pause().await,
                Action::Resume => client.resume().await,
                Action::Mute => client.mute().await,
                Action::Unmute => client.unmute().await,
                Action::Stop => {
                    if let Some(c) = self.client.take() {
                        c.stop().await;
                    }
                    true
                }
            };
            return if ok {
                Ok(())
            } else {
                Err("the client has stopped".into())
            };
        }
        if let Some(e) = step.expect {
            return self.expect(e, step).await;
        }
        Ok(())
    }

    async fn speak(&mut self, samples: &[i16], vad: bool, pace: Pace) -> Result<(), String> {
        let client = self.client()?;
        let mark = self.log_len();
        let ok = if vad {
            let mut pcm = samples.to_vec();
            pcm.extend(audio::silence(1000));
            client.feed_paced(&pcm, pace).await
        } else {
            client.say(samples, pace).await
        };
        if !ok {
            return Err("the client has stopped".into());
        }
        // The client task logs what it wrote asynchronously: wait until this turn's
        // StopSpeaking is logged, so that a following wait looks at what comes after it (and not
        // at the answer to the previous turn).
        self.wait_log(mark, STOP_LOGGED_WAIT, |(_, e)| {
            matches!(
                e,
                Logged::Sent(ClientCommand::StopSpeaking) | Logged::Stopped
            )
        })
        .await;
        Ok(())
    }

    async fn interrupt(
        &mut self,
        samples: &[i16],
        after_ms: u64,
        pace: Pace,
        timeout: Duration,
    ) -> Result<(), String> {
        let from = self.answer_start();
        let need = Duration::from_millis(after_ms);
        let mut heard = Duration::ZERO;
        self.wait_log(from, timeout, |(_, e)| {
            if let Logged::Audio(n) = e {
                heard += duration_of_bytes(*n);
            }
            heard >= need
        })
        .await
        .ok_or_else(|| format!("the assistant did not speak {after_ms} ms within {timeout:?}"))?;
        let mark = self.log_len();
        self.speak(samples, false, pace).await?;
        // The client task logs what it wrote asynchronously: wait for the StopSpeaking.
        self.wait_log(mark, timeout, |(_, e)| {
            matches!(
                e,
                Logged::Sent(ClientCommand::StopSpeaking) | Logged::Stopped
            )
        })
        .await;
        // Measure: frames received between StartSpeaking and StopSpeaking of this turn.
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let events = &log.events[mark.min(log.events.len())..];
        let start = events
            .iter()
            .position(|(_, e)| matches!(e, Logged::Sent(ClientCommand::StartSpeaking)));
        if let Some(s) = start {
            let t0 = events[s].0;
            let mut late = 0;
            let mut last = t0;
            for (at, e) in &events[s + 1..] {
                match e {
                    Logged::Sent(ClientCommand::StopSpeaking) => break,
                    Logged::Audio(_) | Logged::Dropped(_) => {
                        late += 1;
                        last = *at;
                    }
                    _ => {}
                }
            }
            self.barge_ins.push(BargeIn {
                audio_after: last.saturating_duration_since(t0),
                late_frames: late,
            });
        }
        Ok(())
    }

    async fn wait(&mut self, w: WaitFor, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        match w {
            WaitFor::Connected => {
                let from = 0;
                self.wait_log(from, timeout, |(_, e)| matches!(e, Logged::Connected))
                    .await
                    .map(|_| ())
                    .ok_or_else(|| "not connected".into())
            }
            WaitFor::Audio => {
                let from = self.answer_start();
                self.wait_log(from, timeout, |(_, e)| matches!(e, Logged::Audio(_)))
                    .await
                    .map(|_| ())
                    .ok_or_else(|| "no assistant audio".into())
            }
            WaitFor::Answer => {
                let from = self.answer_start();
                self.wait_log(from, timeout, |(_, e)| {
                    matches!(
                        e,
                        Logged::Audio(_) | Logged::Skip | Logged::CancelLastUser | Logged::Stopped
                    )
                })
                .await
                .ok_or_else(|| "no answer".to_owned())?;
                // Then until it has finished playing and no more audio comes for a moment (a
                // TTS slower than real time leaves gaps in playback).
                loop {
                    let mut state = self.state.clone();
                    let idle = |s: &ClientState| !s.is_assistant_speaking && !s.is_processing;
                    match tokio::time::timeout_at(deadline, state.wait_for(idle)).await {
                        Err(_) => return Err("the answer did not finish playing in time".into()),
                        // The client stopped: nothing more will play.
                        Ok(Err(_)) => return Ok(()),
                        Ok(Ok(_)) => {}
                    }
                    let mark = self.log_len();
                    let more = self
                        .wait_log(mark, ANSWER_SETTLE, |(_, e)| matches!(e, Logged::Audio(_)))
                        .await;
                    if more.is_none() {
                        return Ok(());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err("the answer did not finish playing in time".into());
                    }
                }
            }
        }
    }

    async fn expect(&mut self, e: Expect, step: &Step) -> Result<(), String> {
        let timeout = self.timeout(step);
        if e == Expect::NoAudio {
            let quiet = Duration::from_millis(step.for_ms.unwrap_or(0));
            let from = self.log_len();
            return match self
                .wait_log(from, quiet, |(_, e)| {
                    matches!(e, Logged::Audio(_) | Logged::Dropped(_))
                })
                .await
            {
                Some(_) => Err(format!("assistant audio arrived within {quiet:?}")),
                None => Ok(()),
            };
        }
        let contains = step.contains.as_ref().map(|c| c.to_lowercase());
        let has = |text: &str| {
            contains
                .as_ref()
                .is_none_or(|c| text.to_lowercase().contains(c))
        };
        let role = step.role.clone();
        let tool = step.tool.clone();
        let code = step.code;
        let matcher = |(_, ev): &(Instant, Logged)| match (e, ev) {
            (Expect::Message, Logged::Message(item)) => {
                let json = serde_json::to_value(item).unwrap_or_default();
                let item_role = json.get("role").and_then(Value::as_str).unwrap_or("");
                let text = match item.content() {
                    Some(c) => c.to_owned(),
                    None => json.to_string(),
                };
                role.as_deref().is_none_or(|r| r == item_role) && has(&text)
            }
            (Expect::Skip, Logged::Skip)
            | (Expect::EndCall, Logged::EndCall)
            | (Expect::CancelLastUserMessage, Logged::CancelLastUser)
            | (Expect::Audio, Logged::Audio(_))
            | (Expect::Error, Logged::Error(_)) => true,
            (Expect::ToolCall, Logged::ToolCall(name, rest)) => {
                tool.as_deref().is_none_or(|t| t == name) && has(&format!("{name} {rest}"))
            }
            (Expect::Closed, Logged::Closed(c)) => code.is_none_or(|want| want == *c),
            _ => false,
        };
        let from = self.cursor;
        match self.wait_log(from, timeout, matcher).await {
            Some(i) => {
                self.cursor = i + 1;
                Ok(())
            }
            None => {
                let mut what = serde_json::to_value(e)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                for (k, v) in [
                    ("role", step.role.clone()),
                    ("contains", step.contains.clone()),
                    ("tool", step.tool.clone()),
                    ("code", step.code.map(|c| c.to_string())),
                ] {
                    if let Some(v) = v {
                        what.push_str(&format!(" {k}={v:?}"));
                    }
                }
                Err(format!("no {what} within {timeout:?}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let s = Scenario::from_toml(
            r#"
            name = "t"
            pace = "fast"
            [[step]]
            expect = "message"
            role = "assistant"
            contains = "bonjour"
            [[step]]
            wait = "answer"
            [[step]]
            speech_ms = 600
            interrupt_after_ms = 200
            [[step]]
            action = "pause"
            [[step]]
            expect = "no_audio"
            for_ms = 300
            "#,
        )
        .unwrap();
        assert_eq!(s.steps.len(), 5);
        assert_eq!(s.pace, Pace::Fast);
        assert_eq!(s.voice, "fr");
        assert_eq!(s.steps[2].interrupt_after_ms, Some(200));

        for bad in [
            "[[step]]\nsay = \"a\"\nspeech_ms = 3",
            "[[step]]\nsleep_ms = 3\nwait = \"answer\"",
            "[[step]]\nwait = \"answer\"\nrole = \"user\"",
            "[[step]]\nexpect = \"no_audio\"",
            "[[step]]\nsleep_ms = 1\ninterrupt_after_ms = 3",
            "[[step]]\nfrobnicate = 1",
            "[[step]]\nexpect = \"nothing\"",
            "[[step]]",
        ] {
            assert!(Scenario::from_toml(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn latencies_from_the_log() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let log = vec![
            (ms(0), Logged::Sent(ClientCommand::StartSpeaking)),
            (ms(100), Logged::Sent(ClientCommand::StopSpeaking)),
            (ms(130), Logged::Audio(320)),
            (ms(140), Logged::Audio(320)),
            (ms(200), Logged::Sent(ClientCommand::StartSpeaking)),
            (ms(210), Logged::Dropped(320)),
            (ms(300), Logged::Sent(ClientCommand::StopSpeaking)),
            (ms(305), Logged::Skip),
        ];
        let r = analyse(&log);
        assert_eq!(r.turn_latencies, vec![Duration::from_millis(30)]);
        assert_eq!((r.turns_sent, r.turns_answered), (2, 2));
        assert_eq!(r.audio_bytes, (640, 320));
    }
}
