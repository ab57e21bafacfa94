//! The load generator of `micdrop bench`: N concurrent callers (ramped), each playing a
//! scenario in a loop against a server URL; reports latency percentiles, server overhead,
//! barge-in figures, calls held, errors, and the server's CPU and memory (read from `/proc`
//! when its pid is known).
//!
//! The `micdrop` command starts the server (in-process, in a child process, or none with
//! `--url`) and calls [`run`] with a [`BenchOptions`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::scenario::{self, BargeIn, RunOptions, Scenario, ScenarioReport};
use crate::{Event, ReconnectOptions};

pub mod light;

/// The default scenario of each caller: a turn, then a barge-in after 500 ms of the answer.
pub const DEFAULT_SCENARIO: &str = r#"
name = "bench"
pace = "real_time"
timeout_ms = 15000

# The in-process server has no greeting: the call starts with SkipAnswer.
[[step]]
wait = "answer"

[[step]]
speech_ms = 1000

[[step]]
wait = "audio"

[[step]]
speech_ms = 500
interrupt_after_ms = 500

[[step]]
wait = "answer"
"#;

/// The scenario of idle callers (a sleep until the end of the load phase is added per caller).
const IDLE_SCENARIO: &str = "name = \"idle\"\n[[step]]\nwait = \"connected\"\n";

/// What the callers do.
#[derive(Debug, Clone)]
pub enum Workload {
    /// Each caller plays this scenario in a loop until the end of the load phase.
    Scenario(Box<Scenario>),
    /// Idle calls: each caller connects and holds its call without speaking until the end of
    /// the load phase (memory per call).
    Idle,
    /// Light callers ([`light`]): one connection per caller for the whole load phase, turns of
    /// 10 × 100 ms pre-encoded frames in real time, 1 to 3 s of think time; no VAD, no event
    /// channel. The cheapest load that still talks in real time.
    Light,
}

/// Options of a bench run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The server's WebSocket URL.
    pub url: String,
    /// Concurrent callers.
    pub calls: usize,
    /// Time over which callers start (evenly spread).
    pub ramp: Duration,
    /// How long callers keep going after the ramp.
    pub duration: Duration,
    /// What the callers do.
    pub workload: Workload,
    /// Params sent as the first frame of every call (e.g. `authorization`).
    pub params: Option<serde_json::Value>,
    /// The server's pid, to read its CPU and memory from `/proc`.
    pub server_pid: Option<u32>,
    /// Which process `server_pid` is, for the report.
    pub server_measured: Option<String>,
    /// The delays the providers add between the user's last frame and the first audio, when
    /// known exactly: the report then has `server_overhead_ms` (latency minus these delays).
    pub known_provider_delay: Option<Duration>,
}

impl BenchOptions {
    /// Options with the defaults of `micdrop bench` (100 calls, 10 s ramp, 30 s, the default
    /// scenario).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            calls: 100,
            ramp: Duration::from_secs(10),
            duration: Duration::from_secs(30),
            workload: Workload::Scenario(Box::new(
                Scenario::from_toml(DEFAULT_SCENARIO).expect("the default scenario parses"),
            )),
            params: None,
            server_pid: None,
            server_measured: None,
            known_provider_delay: None,
        }
    }
}

/// Percentiles of a set of durations, in ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (sorted in place).
    pub fn of(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
            values[i]
        };
        Self {
            count: values.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// CPU and memory of the server process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerUsage {
    /// Which process was measured.
    pub measured: String,
    /// CPU used during the load phase, in % of one core.
    pub cpu_percent: f64,
    /// RSS before the callers started, in MB.
    pub rss_at_rest_mb: f64,
    /// Highest RSS sampled during the run (every 250 ms), in MB.
    pub peak_rss_mb: f64,
    /// RSS when the most calls were held, in MB.
    pub rss_at_peak_calls_mb: f64,
    /// (RSS at peak calls − RSS at rest) / peak calls, in KB.
    pub kb_per_call: f64,
    /// Server CPU time of the load phase / user turns answered, in ms (0 without turns). With
    /// the engine stack this is the server's own cost of a turn (the timed providers are
    /// nearly free); turns finished in the grace period after the load phase are counted, so
    /// use a load phase long against a turn.
    pub cpu_ms_per_turn: f64,
}

/// The bench report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchReport {
    /// Target concurrent callers.
    pub calls: usize,
    /// Most calls connected at the same time.
    pub calls_held_peak: usize,
    /// Scenario runs (one call each) completed, and how many failed an expectation.
    pub runs: usize,
    /// Failed runs.
    pub runs_failed: usize,
    /// User turns sent.
    pub turns_sent: usize,
    /// User turns answered.
    pub turns_completed: usize,
    /// Last user audio frame → first assistant audio byte.
    pub latency_ms: Percentiles,
    /// Latency minus the delays the simulators were configured to add (in-process only).
    pub server_overhead_ms: Option<Percentiles>,
    /// `StartSpeaking` written → last assistant audio frame received.
    pub barge_in_ms: Percentiles,
    /// Assistant frames received after `StartSpeaking` was written (all barge-ins).
    pub late_frames: usize,
    /// Barge-ins with at least one late frame.
    pub barge_ins_with_late_frames: usize,
    /// Error events and failed expectations.
    pub errors: usize,
    /// A few distinct error messages.
    pub error_samples: Vec<String>,
    /// Server CPU and memory (when measurable).
    pub server: Option<ServerUsage>,
    /// CPU of this process (the callers; and the server too when in-process), in % of a core.
    pub bench_process_cpu_percent: f64,
    /// How late a 10 ms timer fires in this process during the load phase: when high, the
    /// callers themselves (not the server) add latency to the figures above.
    pub bench_runtime_lag_ms: Percentiles,
    /// The simulator delays of the in-process server, when the command set them.
    pub sim: Option<serde_json::Value>,
    /// The in-process server's audio lead in ms (0: unpaced), when the command started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_lead_ms: Option<u64>,
    /// What the machine was doing.
    pub machine: Machine,
    /// Wall time of the load phase, in s.
    pub wall_secs: f64,
}

/// Facts about the machine during the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    /// CPU cores.
    pub cores: usize,
    /// /proc/loadavg before the run.
    pub loadavg_before: String,
    /// /proc/loadavg after the run.
    pub loadavg_after: String,
    /// Soft limit of open files.
    pub open_files_limit: Option<u64>,
}

#[derive(Default)]
struct Agg {
    latencies: Vec<f64>,
    barge_ins: Vec<BargeIn>,
    runs: usize,
    runs_failed: usize,
    turns_sent: usize,
    turns_completed: usize,
    errors: usize,
    error_samples: Vec<String>,
}

impl Agg {
    fn add(&mut self, r: &ScenarioReport) {
        self.runs += 1;
        if !r.passed {
            self.runs_failed += 1;
        }
        self.latencies
            .extend(r.turn_latencies.iter().map(|d| d.as_secs_f64() * 1000.0));
        self.barge_ins.extend(r.barge_ins.iter().copied());
        self.turns_sent += r.turns_sent;
        self.turns_completed += r.turns_answered;
        for e in r.errors.iter().chain(r.failures.iter()) {
            self.errors += 1;
            if self.error_samples.len() < 5 && !self.error_samples.contains(e) {
                self.error_samples.push(e.clone());
            }
        }
    }
}

/// Runs the callers against `options.url` and returns the report.
pub async fn run(options: BenchOptions) -> BenchReport {
    let machine_before = Machine::now();
    let pid = options.server_pid;
    let ramp = options.ramp;
    let idle = matches!(options.workload, Workload::Idle);
    let light = matches!(options.workload, Workload::Light);
    let frame = light::speech_frame();
    let scenario = match options.workload {
        // Each idle caller holds its call until the end of the load phase (see below).
        Workload::Idle | Workload::Light => {
            Scenario::from_toml(IDLE_SCENARIO).expect("the idle scenario parses")
        }
        Workload::Scenario(s) => *s,
    };
    let scenario = Arc::new(scenario);
    let params = options.params.clone();
    let url = options.url.clone();

    // Let the server settle, then take the figures at rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rest = pid.and_then(proc_usage);

    let held = Arc::new(AtomicUsize::new(0));
    let agg = Arc::new(Mutex::new(Agg::default()));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let sampler = {
        let held = held.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak_held = 0usize;
            let mut peak_rss = 0u64;
            let mut rss_at_peak = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !stop.is_cancelled() {
                tick.tick().await;
                let h = held.load(Ordering::Relaxed);
                let rss = pid.and_then(proc_usage).map_or(0, |u| u.rss_kb);
                peak_rss = peak_rss.max(rss);
                if h >= peak_held {
                    peak_held = h;
                    rss_at_peak = rss;
                }
            }
            (peak_held, peak_rss, rss_at_peak)
        })
    };
    let cpu_start = pid.and_then(proc_usage);
    let self_start = proc_usage(std::process::id());
    let lag_probe = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut lags = Vec::new();
            while !stop.is_cancelled() {
                let t = tokio::time::Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                let late = t.elapsed().saturating_sub(Duration::from_millis(10));
                lags.push(late.as_secs_f64() * 1000.0);
            }
            lags
        })
    };

    let calls = options.calls;
    let mut tasks = Vec::with_capacity(calls);
    for i in 0..calls {
        let at = if calls > 1 {
            ramp.mul_f64(i as f64 / calls as f64)
        } else {
            Duration::ZERO
        };
        if light {
            let (url, params, frame, held, agg, stop) = (
                url.clone(),
                params.clone(),
                frame.clone(),
                held.clone(),
                agg.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(at).await;
                light::caller(i, url, params, frame, held, agg, stop).await;
            }));
            continue;
        }
        let scenario = if idle {
            // Hold from this caller's start to the end of the load phase.
            let hold = (ramp + options.duration).saturating_sub(at);
            let mut s = (*scenario).clone();
            s.steps.push(scenario::Step {
                sleep_ms: Some(hold.as_millis() as u64),
                ..Default::default()
            });
            Arc::new(s)
        } else {
            scenario.clone()
        };
        let (scenario, url, params, held, agg, stop) = (
            scenario,
            url.clone(),
            params.clone(),
            held.clone(),
            agg.clone(),
            stop.clone(),
        );
        let once = idle;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(at).await;
            while !stop.is_cancelled() {
                let h = held.clone();
                let connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let c2 = connected.clone();
                let options = RunOptions {
                    url: Some(url.clone()),
                    params: params.clone(),
                    reconnect: ReconnectOptions {
                        max_attempts: Some(0),
                        ..Default::default()
                    },
                    on_event: Some(Box::new(move |ev| match ev.event {
                        Event::Connected { .. } => {
                            c2.store(true, Ordering::Relaxed);
                            h.fetch_add(1, Ordering::Relaxed);
                        }
                        Event::Closed { .. } | Event::Stopped
                            if c2.swap(false, Ordering::Relaxed) =>
                        {
                            h.fetch_sub(1, Ordering::Relaxed);
                        }
                        _ => {}
                    })),
                    ..Default::default()
                };
                match scenario::run(&scenario, options).await {
                    Ok(report) => agg.lock().unwrap_or_else(|e| e.into_inner()).add(&report),
                    Err(e) => {
                        let mut a = agg.lock().unwrap_or_else(|e| e.into_inner());
                        a.errors += 1;
                        if a.error_samples.len() < 5 {
                            a.error_samples.push(e.to_string());
                        }
                        break;
                    }
                }
                if connected.swap(false, Ordering::Relaxed) {
                    held.fetch_sub(1, Ordering::Relaxed);
                }
                if once {
                    break;
                }
            }
        }));
    }

    // Load phase: ramp + duration; then let running scenarios finish (bounded).
    tokio::time::sleep(ramp + options.duration).await;
    let wall = started.elapsed();
    let cpu_end = pid.and_then(proc_usage);
    let self_end = proc_usage(std::process::id());
    stop.cancel();
    let grace = Duration::from_millis(scenario.timeout_ms.saturating_mul(2).max(5_000));
    let deadline = tokio::time::Instant::now() + grace;
    for t in &mut tasks {
        if tokio::time::timeout_at(deadline, &mut *t).await.is_err() {
            t.abort();
        }
    }
    let (peak_held, peak_rss_kb, rss_at_peak_kb) = sampler.await.unwrap_or((0, 0, 0));
    let mut lags = lag_probe.await.unwrap_or_default();

    let agg = std::mem::take(&mut *agg.lock().unwrap_or_else(|e| e.into_inner()));
    let mut latencies = agg.latencies.clone();
    let overhead = options.known_provider_delay.map(|d| {
        let d = d.as_secs_f64() * 1000.0;
        let mut v: Vec<f64> = agg.latencies.iter().map(|l| l - d).collect();
        Percentiles::of(&mut v)
    });
    let mut barge: Vec<f64> = agg
        .barge_ins
        .iter()
        .map(|b| b.audio_after.as_secs_f64() * 1000.0)
        .collect();
    let server = match (options.server_measured.clone(), rest, cpu_start, cpu_end) {
        (Some(measured), Some(rest), Some(a), Some(b)) => {
            let ticks = b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64;
            let secs = ticks / clock_ticks_per_sec();
            let mb = |kb: u64| kb as f64 / 1024.0;
            Some(ServerUsage {
                measured,
                cpu_percent: 100.0 * secs / wall.as_secs_f64().max(1e-9),
                rss_at_rest_mb: mb(rest.rss_kb),
                peak_rss_mb: mb(peak_rss_kb),
                rss_at_peak_calls_mb: mb(rss_at_peak_kb),
                kb_per_call: if peak_held > 0 {
                    rss_at_peak_kb.saturating_sub(rest.rss_kb) as f64 / peak_held as f64
                } else {
                    0.0
                },
                cpu_ms_per_turn: if agg.turns_completed > 0 {
                    secs * 1000.0 / agg.turns_completed as f64
                } else {
                    0.0
                },
            })
        }
        _ => None,
    };
    let bench_process_cpu_percent = match (self_start, self_end) {
        (Some(a), Some(b)) => {
            100.0 * b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64
                / clock_ticks_per_sec()
                / wall.as_secs_f64().max(1e-9)
        }
        _ => 0.0,
    };
    BenchReport {
        bench_process_cpu_percent,
        bench_runtime_lag_ms: Percentiles::of(&mut lags),
        calls,
        calls_held_peak: peak_held,
        runs: agg.runs,
        runs_failed: agg.runs_failed,
        turns_sent: agg.turns_sent,
        turns_completed: agg.turns_completed,
        latency_ms: Percentiles::of(&mut latencies),
        server_overhead_ms: overhead,
        barge_in_ms: Percentiles::of(&mut barge),
        late_frames: agg.barge_ins.iter().map(|b| b.late_frames).sum(),
        barge_ins_with_late_frames: agg.barge_ins.iter().filter(|b| b.late_frames > 0).count(),
        errors: agg.errors,
        error_samples: agg.error_samples,
        server,
        sim: None,
        audio_lead_ms: None,
        machine: Machine {
            loadavg_after: loadavg(),
            ..machine_before
        },
        wall_secs: wall.as_secs_f64(),
    }
}

#[derive(Debug, Clone, Copy)]
struct ProcUsage {
    cpu_ticks: u64,
    rss_kb: u64,
}

/// utime + stime (clock ticks) from /proc/PID/stat and VmRSS from /proc/PID/status.
fn proc_usage(pid: u32) -> Option<ProcUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(ProcUsage {
        cpu_ticks: utime + stime,
        rss_kb,
    })
}

/// USER_HZ: 100 on Linux for every architecture this runs on (`getconf CLK_TCK`).
fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Machine {
    /// The machine now (`loadavg_after` empty).
    pub fn now() -> Machine {
        let open_files_limit = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse().ok())
            });
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            loadavg_before: loadavg(),
            loadavg_after: String::new(),
            open_files_limit,
        }
    }
}

/// The report as a table (what `micdrop bench` prints without `--json`).
impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self;
        let p = |f: &mut std::fmt::Formatter<'_>, name: &str, x: &Percentiles| {
            writeln!(
                f,
                "{name:<34} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                x.count, x.p50, x.p95, x.p99, x.max
            )
        };
        writeln!(
            f,
            "calls {} (peak held {}), runs {} ({} failed), turns {} sent / {} completed, {:.1} s",
            r.calls,
            r.calls_held_peak,
            r.runs,
            r.runs_failed,
            r.turns_sent,
            r.turns_completed,
            r.wall_secs
        )?;
        writeln!(
            f,
            "{:<34} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "ms", "count", "p50", "p95", "p99", "max"
        )?;
        p(f, "latency (last frame -> 1st audio)", &r.latency_ms)?;
        if let Some(o) = &r.server_overhead_ms {
            p(f, "server overhead (minus sim delays)", o)?;
        }
        p(f, "barge-in (StartSpeaking -> last)", &r.barge_in_ms)?;
        p(
            f,
            "bench runtime lag (10 ms timer)",
            &r.bench_runtime_lag_ms,
        )?;
        writeln!(
            f,
            "late frames after StartSpeaking: {} (in {} of {} barge-ins)",
            r.late_frames, r.barge_ins_with_late_frames, r.barge_in_ms.count
        )?;
        writeln!(f, "errors: {}", r.errors)?;
        for e in &r.error_samples {
            writeln!(f, "  {e}")?;
        }
        if let Some(s) = &r.server {
            writeln!(
                f,
                "server ({}): CPU {:.0}% of a core ({:.2} ms per turn), RSS at rest {:.1} MB, peak {:.1} MB, {:.1} MB at peak calls ({:.1} KB/call)",
                s.measured,
                s.cpu_percent,
                s.cpu_ms_per_turn,
                s.rss_at_rest_mb,
                s.peak_rss_mb,
                s.rss_at_peak_calls_mb,
                s.kb_per_call
            )?;
        }
        writeln!(
            f,
            "bench process (callers{}): CPU {:.0}% of a core",
            if r.server
                .as_ref()
                .is_some_and(|s| s.measured.starts_with("this process"))
            {
                " and server"
            } else {
                ""
            },
            r.bench_process_cpu_percent
        )?;
        writeln!(
            f,
            "machine: {} cores, load {} -> {}, open files limit {:?}",
            r.machine.cores,
            r.machine.loadavg_before,
            r.machine.loadavg_after,
            r.machine.open_files_limit
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!(
            (p.count, p.p50, p.p95, p.p99, p.max),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        let mut one = vec![7.0];
        let p = Percentiles::of(&mut one);
        assert_eq!((p.p50, p.p99, p.max), (7.0, 7.0, 7.0));
        assert_eq!(Percentiles::of(&mut []).count, 0);
    }

    #[test]
    fn proc_usage_reads_this_process() {
        let u = proc_usage(std::process::id()).expect("/proc is readable");
        assert!(u.rss_kb > 100);
        assert!(Scenario::from_toml(DEFAULT_SCENARIO).is_ok());
        assert!(Scenario::from_toml(IDLE_SCENARIO).is_ok());
    }
}
