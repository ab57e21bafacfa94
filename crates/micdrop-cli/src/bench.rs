//! `micdrop bench`: the arguments, and the server under load (in-process, in a child process
//! with `--isolate`, or none with `--url`). The callers and the report are
//! [`micdrop_client::bench`]; the engine stack's timed providers are
//! [`micdrop_testkit::bench`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use micdrop_client::bench::{BenchOptions, Machine, Workload};
use micdrop_client::scenario::Scenario;
use micdrop_testkit::bench::{self as timed, SimDelays};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;

/// Options of `micdrop bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Server to load (default: an in-process server over simulated providers).
    #[arg(long)]
    pub url: Option<String>,
    /// Concurrent callers.
    #[arg(long, default_value_t = 100)]
    pub calls: usize,
    /// Time over which callers start, in seconds (evenly spread).
    #[arg(long, default_value_t = 10.0)]
    pub ramp: f64,
    /// How long callers keep looping after the ramp, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Scenario each caller plays in a loop (default: a turn and a barge-in).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Idle calls: callers connect and hold the call without speaking (memory per call).
    #[arg(long, conflicts_with = "scenario")]
    pub idle: bool,
    /// Light callers: one connection each for the whole run, turns of 10 × 100 ms pre-encoded
    /// frames in real time and 1-3 s think time, no VAD (the cheapest real-time load; see
    /// docs/BENCHMARKS.md). No barge-in figures.
    #[arg(long, conflicts_with_all = ["scenario", "idle"])]
    pub light: bool,
    /// With --isolate: pin the server process to these CPUs (`taskset -c LIST`, e.g. `1`);
    /// pin the callers with `taskset -c 0 micdrop bench ...`.
    #[arg(long, requires = "isolate")]
    pub server_cpus: Option<String>,
    /// Simulator delays of the in-process server.
    #[arg(long, value_enum, default_value_t = SimMode::Zero)]
    pub sim: SimMode,
    /// Engine stack: wall-clock seconds the timed TTS spends per second of audio (0: all at
    /// once, the default with `--sim zero`; 0.25: four times faster than real time, the default
    /// with `--sim realistic`; 1: real time, one frame at a time).
    #[arg(long, value_parser = parse_realtime_factor)]
    pub tts_realtime_factor: Option<f64>,
    /// The in-process server's audio lead in ms (`[call] audio_lead_ms`: assistant audio paced
    /// at real time plus this lead, topped up when half of it is left; 0: unpaced). Default:
    /// the server's, 500.
    #[arg(long, conflicts_with = "url")]
    pub audio_lead_ms: Option<u64>,
    /// In-process server stack: `engine` (the call engine over trait-level simulated providers
    /// with exact delays) or `providers` (`micdrop serve --sim`: the real Gladia, Gradium and
    /// Mistral clients against micdrop-sim's network simulators, TTS as a tone) or `floor` (the
    /// same socket stack and pacing without the call engine: each `StopSpeaking` gets the engine
    /// stack's frames at once; the I/O floor of a turn, for the light callers).
    #[arg(long, value_enum, default_value_t = Stack::Engine)]
    pub stack: Stack,
    /// Run the in-process server in a child process (server-only CPU and memory figures).
    #[arg(long, conflicts_with = "url")]
    pub isolate: bool,
    /// Pid of the server given by --url, to read its CPU and memory from /proc.
    #[arg(long, requires = "url")]
    pub server_pid: Option<u32>,
    /// Auth token for --url.
    #[arg(long, env = "MICDROP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Internal: serve only (the child of --isolate).
    #[arg(long, hide = true)]
    pub serve_only: bool,
}

/// What the in-process server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stack {
    /// The call engine over trait-level simulated providers (exact delays).
    Engine,
    /// The real provider clients against micdrop-sim (like `micdrop serve --sim`).
    Providers,
    /// The socket stack and the pacing alone ([`micdrop_server::floor`]).
    Floor,
}

/// Delays of the simulated providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SimMode {
    /// No provider delay.
    Zero,
    /// STT 200 ms, LLM first token 350 ms, TTS first audio 150 ms.
    Realistic,
}

impl SimMode {
    fn delays(self) -> SimDelays {
        match self {
            SimMode::Zero => SimDelays::zero(),
            SimMode::Realistic => SimDelays::realistic(),
        }
    }
}

impl BenchArgs {
    /// The engine stack's delays: `--sim`, then `--tts-realtime-factor`.
    fn delays(&self) -> SimDelays {
        let mut d = self.sim.delays();
        if let Some(f) = self.tts_realtime_factor {
            d.tts_realtime_factor = f;
        }
        d
    }
}

fn parse_realtime_factor(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 => Ok(f),
        _ => Err(format!("{s:?} is not a number >= 0")),
    }
}

/// Runs `micdrop bench`.
pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let delays = args.delays();
    if args.serve_only {
        return serve_only(args.stack, args.sim, delays, args.audio_lead_ms).await;
    }
    if let Some(limit) = Machine::now().open_files_limit {
        // In-process, every call holds two sockets (client and server ends).
        let per_call = if args.url.is_some() || args.isolate {
            1
        } else {
            2
        };
        let need = (args.calls * per_call + 64) as u64;
        if need > limit {
            eprintln!(
                "warning: {} calls need about {need} file descriptors; the limit is {limit} (raise it with `ulimit -n`)",
                args.calls
            );
        }
    }

    // The server.
    let mut child: Option<tokio::process::Child> = None;
    let mut in_process: Option<InProcess> = None;
    let (url, pid, measured) = if let Some(url) = &args.url {
        let m = args.server_pid.map(|p| format!("server pid {p}"));
        (url.clone(), args.server_pid, m)
    } else if args.isolate {
        let exe = std::env::current_exe()?;
        let mut command = match &args.server_cpus {
            Some(cpus) => {
                let mut c = tokio::process::Command::new("taskset");
                c.args(["-c", cpus]).arg(exe);
                c
            }
            None => tokio::process::Command::new(exe),
        };
        command
            .args(["bench", "--serve-only", "--sim"])
            .arg(format!("{:?}", args.sim).to_lowercase())
            .arg("--stack")
            .arg(format!("{:?}", args.stack).to_lowercase())
            .arg("--tts-realtime-factor")
            .arg(delays.tts_realtime_factor.to_string());
        if let Some(ms) = args.audio_lead_ms {
            command.arg("--audio-lead-ms").arg(ms.to_string());
        }
        let mut c = command
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = c.stdout.take().context("child stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("the server process did not start")??
            .context("the server process ended")?;
        let pid = c.id();
        child = Some(c);
        (
            url,
            pid,
            pid.map(|p| format!("server child process pid {p}")),
        )
    } else {
        let server =
            start_server(args.stack, args.sim, delays, args.audio_lead_ms, args.calls).await?;
        let url = server.url();
        in_process = Some(server);
        (
            url,
            Some(std::process::id()),
            Some("this process (server and callers together)".to_owned()),
        )
    };

    let workload = if args.idle {
        Workload::Idle
    } else if args.light {
        Workload::Light
    } else if let Some(path) = &args.scenario {
        Workload::Scenario(Box::new(Scenario::load(path)?))
    } else {
        Workload::Scenario(Box::new(Scenario::from_toml(
            micdrop_client::bench::DEFAULT_SCENARIO,
        )?))
    };
    let in_proc = args.url.is_none();
    // The provider simulators' own delays are known only in zero-delay mode (the floor has
    // none).
    let known_delays = args.stack != Stack::Providers || args.sim == SimMode::Zero;
    let options = BenchOptions {
        url,
        calls: args.calls,
        ramp: Duration::from_secs_f64(args.ramp.max(0.0)),
        duration: Duration::from_secs_f64(args.duration.max(0.0)),
        workload,
        params: args
            .token
            .as_ref()
            .map(|t| serde_json::json!({ "authorization": format!("Bearer {t}") })),
        server_pid: pid,
        server_measured: measured,
        known_provider_delay: (in_proc && known_delays).then(|| delays.first_audio_delay()),
    };
    let mut report = micdrop_client::bench::run(options).await;
    if in_proc && args.stack == Stack::Engine {
        report.sim = Some(serde_json::to_value(delays)?);
    }
    if in_proc {
        report.audio_lead_ms = Some(
            args.audio_lead_ms
                .unwrap_or(micdrop_core::call::DEFAULT_AUDIO_LEAD.as_millis() as u64),
        );
    }

    if let Some(server) = in_process {
        server.shutdown(Duration::from_secs(5)).await;
    }
    if let Some(mut c) = child {
        let _ = c.kill().await;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// The bench's own server.
enum InProcess {
    Engine(micdrop_server::RunningServer),
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    Providers(micdrop_server::App),
    Floor(micdrop_server::floor::FloorServer),
}

impl InProcess {
    fn url(&self) -> String {
        match self {
            InProcess::Engine(s) => s.ws_url("/call"),
            InProcess::Providers(app) => app.server.ws_url(&app.path),
            InProcess::Floor(s) => s.ws_url("/call"),
        }
    }

    async fn shutdown(self, grace: Duration) {
        match self {
            InProcess::Engine(s) => s.shutdown(grace).await,
            InProcess::Providers(app) => app.shutdown(grace).await,
            InProcess::Floor(s) => s.shutdown().await,
        }
    }
}

async fn start_server(
    stack: Stack,
    sim: SimMode,
    delays: SimDelays,
    audio_lead_ms: Option<u64>,
    calls: usize,
) -> anyhow::Result<InProcess> {
    let max_calls = calls.max(1) + 100;
    let lead = audio_lead_ms.map(|ms| (ms > 0).then(|| Duration::from_millis(ms)));
    match stack {
        Stack::Engine => {
            // A load generator may send faster than real time (`pace = "fast"`): no audio budget.
            let mut template = timed::call_config(delays).audio_burst(None);
            if let Some(lead) = lead {
                template = template.audio_lead(lead);
            }
            let mut options = micdrop_server::ServerOptions::with_template(template);
            options.max_calls = max_calls;
            options.serve_assets = false;
            Ok(InProcess::Engine(
                micdrop_server::start("127.0.0.1:0".parse()?, options).await?,
            ))
        }
        Stack::Floor => {
            let lead = lead.unwrap_or(Some(micdrop_core::call::DEFAULT_AUDIO_LEAD));
            Ok(InProcess::Floor(
                micdrop_server::floor::start_floor(
                    "127.0.0.1:0".parse()?,
                    lead,
                    timed::floor_answer(delays),
                )
                .await?,
            ))
        }
        #[cfg(not(feature = "sim"))]
        Stack::Providers => anyhow::bail!(
            "--stack providers needs the simulators: this micdrop was built without the `sim` feature"
        ),
        #[cfg(feature = "sim")]
        Stack::Providers => {
            let mut config = micdrop_server::config::Config::default();
            config.server.listen = "127.0.0.1:0".into();
            config.server.max_calls = max_calls;
            config.server.audio_burst_secs = 0;
            if let Some(ms) = audio_lead_ms {
                config.call.audio_lead_ms = ms;
            }
            let mut script = micdrop_sim::SimScript {
                zero_delay: sim == SimMode::Zero,
                tts_engine: micdrop_sim::TtsEngine::Tone,
                ..Default::default()
            };
            // The simulators enforce the providers' concurrency and rate limits: lift them.
            script.gladia.max_sessions = max_calls;
            script.gradium.max_sessions = max_calls;
            script.mistral.requests_per_minute = None;
            // Every bench turn is one utterance: the simulated STT must not hold its final for
            // a possible continuation of the turn (`turn_gap_ms`, ~300 ms of wall-clock wait
            // that the real services do not add; see docs/BENCHMARKS.md).
            script.turn_gap_ms = 0;
            Ok(InProcess::Providers(
                micdrop_server::App::start(config, Some(script)).await?,
            ))
        }
    }
}

/// The child of `--isolate`: serves until its stdin closes.
async fn serve_only(
    stack: Stack,
    sim: SimMode,
    delays: SimDelays,
    audio_lead_ms: Option<u64>,
) -> anyhow::Result<()> {
    let server = start_server(stack, sim, delays, audio_lead_ms, 20_000).await?;
    println!("{}", server.url());
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = stdin.next_line().await {}
    server.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
