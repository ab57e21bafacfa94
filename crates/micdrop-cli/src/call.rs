//! `micdrop call`: a call from the terminal, with a WAV, a text (espeak-ng), a scenario or
//! (feature `mic`) the live microphone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use micdrop_client::scenario::{self, RunOptions, Scenario, Step, WaitFor};
use micdrop_client::{Event, Pace, ReconnectOptions, TimedEvent, audio};
use micdrop_core::{ClientCommand, ConversationItem};

/// Options of `micdrop call`.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// Server WebSocket URL (for example ws://127.0.0.1:8080/call); optional with a scenario
    /// that has one.
    pub url: Option<String>,
    /// Speak this WAV file (any rate, mono or stereo) or raw PCM (`.pcm`/`.raw`: s16le 16 kHz
    /// mono), cut into turns by the VAD.
    #[arg(long, conflicts_with_all = ["say", "scenario"])]
    pub input: Option<PathBuf>,
    /// Speak this text (needs espeak-ng).
    #[arg(long, conflicts_with = "scenario")]
    pub say: Option<String>,
    /// espeak-ng voice for --say.
    #[arg(long, default_value = "fr")]
    pub voice: String,
    /// Run a scenario file (TOML, see docs/client.md); exits non-zero if an expectation fails.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Write the assistant audio received (16 kHz mono WAV).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Auth token, sent as params {"authorization":"Bearer TOKEN"}.
    #[arg(long, env = "MICDROP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Extra params (a JSON object) sent in the first frame.
    #[arg(long)]
    pub params: Option<String>,
    /// Send audio as fast as possible instead of real time.
    #[arg(long)]
    pub fast: bool,
    /// Reconnection attempts after a recoverable close (Micdrop retries forever).
    #[arg(long, default_value_t = 3)]
    pub reconnect_attempts: u32,
    /// Timeout of each wait, in ms.
    #[arg(long, default_value_t = 20_000)]
    pub timeout_ms: u64,
    /// Print the report as JSON at the end.
    #[arg(long)]
    pub json: bool,
    /// Use the live microphone and speaker (build with `--features mic`).
    #[arg(long, conflicts_with_all = ["input", "say", "scenario"])]
    pub mic: bool,
}

/// Runs `micdrop call`.
pub async fn call(args: CallArgs) -> anyhow::Result<()> {
    let params = build_params(&args)?;
    if args.mic {
        return crate::live::run(&args, params).await;
    }
    let scenario = match &args.scenario {
        Some(path) => Scenario::load(path)?,
        None => implicit_scenario(&args)?,
    };
    if args.url.is_none() && scenario.url.is_none() {
        anyhow::bail!("no server URL: give one on the command line or in the scenario");
    }
    let started = Instant::now();
    // With --json, stdout holds only the report.
    let to_stderr = args.json;
    let options = RunOptions {
        url: args.url.clone(),
        params,
        record: args.output.is_some(),
        stop_on_failure: true,
        reconnect: ReconnectOptions {
            max_attempts: Some(args.reconnect_attempts),
            ..Default::default()
        },
        pace: args.fast.then_some(Pace::Fast),
        on_event: Some(Box::new(move |ev| print_event(started, ev, to_stderr))),
    };
    let report = scenario::run(&scenario, options).await?;
    if let Some(path) = &args.output {
        audio::write_wav(path, &report.assistant_audio)?;
        eprintln!(
            "assistant audio: {:.1} s written to {}",
            audio::duration_of_bytes(report.assistant_audio.len()).as_secs_f64(),
            path.display()
        );
    }
    print_summary(&report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if !report.passed {
        anyhow::bail!(
            "scenario {:?} failed: {}",
            report.name,
            report.failures.join("; ")
        );
    }
    Ok(())
}

fn build_params(args: &CallArgs) -> anyhow::Result<Option<serde_json::Value>> {
    let mut params = match &args.params {
        Some(text) => {
            let v: serde_json::Value =
                serde_json::from_str(text).context("--params must be a JSON object")?;
            anyhow::ensure!(v.is_object(), "--params must be a JSON object");
            Some(v)
        }
        None => None,
    };
    if let Some(token) = &args.token {
        let obj = params.get_or_insert_with(|| serde_json::json!({}));
        obj["authorization"] = serde_json::Value::String(format!("Bearer {token}"));
    }
    Ok(params)
}

/// `--input`/`--say`/nothing as a scenario: wait for the greeting, speak, wait for the answer.
fn implicit_scenario(args: &CallArgs) -> anyhow::Result<Scenario> {
    let mut text = format!("name = \"call\"\nvoice = {:?}\n", args.voice);
    text.push_str(&format!("timeout_ms = {}\n", args.timeout_ms));
    let mut s = Scenario::from_toml(&text)?;
    let wait = Step {
        wait: Some(WaitFor::Answer),
        ..Default::default()
    };
    s.steps.push(wait.clone());
    if let Some(path) = &args.input {
        anyhow::ensure!(path.exists(), "{} does not exist", path.display());
        s.steps.push(Step {
            wav: Some(path.clone()),
            vad: true,
            ..Default::default()
        });
        s.steps.push(wait);
    } else if let Some(say) = &args.say {
        s.steps.push(Step {
            say: Some(say.clone()),
            ..Default::default()
        });
        s.steps.push(wait);
    }
    Ok(s)
}

pub(crate) fn print_event(started: Instant, ev: &TimedEvent, to_stderr: bool) {
    let t = ev.at.saturating_duration_since(started).as_secs_f64();
    let line = match &ev.event {
        Event::Connected { reconnection: 0 } => "connected".to_owned(),
        Event::Connected { reconnection } => format!("reconnected (attempt {reconnection})"),
        Event::Message(item) => describe_item(item),
        Event::ToolCall(call) => format!(
            "tool output: {}({}) -> {}",
            call.name, call.parameters, call.output
        ),
        Event::SkipAnswer => "(answer skipped)".to_owned(),
        Event::CancelLastUserMessage => "(last user message cancelled as noise)".to_owned(),
        Event::EndCall => "(the agent ends the call)".to_owned(),
        Event::Error(e) => format!("error: {e}"),
        Event::Closed { code, reason } => format!("closed: {code} {reason}"),
        Event::Sent(ClientCommand::StartSpeaking) => "> user speaking".to_owned(),
        Event::Sent(ClientCommand::StopSpeaking) => "> user stopped".to_owned(),
        Event::Sent(ClientCommand::Mute) => "> paused (Mute)".to_owned(),
        Event::Classification(v) => format!("classification: {v}"),
        _ => return,
    };
    if to_stderr {
        eprintln!("[{t:7.3}s] {line}");
    } else {
        println!("[{t:7.3}s] {line}");
    }
}

fn describe_item(item: &ConversationItem) -> String {
    match item {
        ConversationItem::User { content, .. } => format!("user: {content}"),
        ConversationItem::Assistant { content, .. } => format!("assistant: {content}"),
        ConversationItem::System { content, .. } => format!("system: {content}"),
        ConversationItem::ToolCall {
            tool_name,
            parameters,
            ..
        } => format!("tool call: {tool_name}({parameters})"),
        ConversationItem::ToolResult {
            tool_name, output, ..
        } => format!("tool result: {tool_name} -> {output}"),
    }
}

fn print_summary(report: &scenario::ScenarioReport) {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let lat: Vec<String> = report
        .turn_latencies
        .iter()
        .map(|d| format!("{:.0} ms", ms(d)))
        .collect();
    eprintln!(
        "{}: {} in {:.1} s; turns sent {}, answered {}; first-audio latency [{}]; assistant audio {:.1} s played, {:.1} s dropped",
        report.name,
        if report.passed { "passed" } else { "FAILED" },
        report.duration.as_secs_f64(),
        report.turns_sent,
        report.turns_answered,
        lat.join(", "),
        audio::duration_of_bytes(report.audio_bytes.0).as_secs_f64(),
        audio::duration_of_bytes(report.audio_bytes.1).as_secs_f64(),
    );
    for b in &report.barge_ins {
        eprintln!(
            "barge-in: {} frame(s) after StartSpeaking, last one {:.1} ms after it",
            b.late_frames,
            ms(&b.audio_after)
        );
    }
    for f in &report.failures {
        eprintln!("FAILED {f}");
    }
}
