//! Real-time factor and turn latency of Whisper on this machine (docs/BENCHMARKS.md, "Local
//! speech").
//!
//! ```sh
//! cargo run --release -p micdrop-local --example whisper_rtf -- base fr clip.wav [runs] [threads] [full]
//! ```
//!
//! Transcribes the WAV `runs` times (after one warm-up) and prints the transcript, the clip's
//! duration, the median and worst transcription time (the turn latency: from the end of the
//! turn to its transcript), the real-time factor (time / duration), and the CPU time of the
//! process per run (all threads, from `/proc/self/stat`: less sensitive than wall time to other
//! load on a shared machine) with the load average before and after. `full` disables the fitted
//! audio context (Whisper's full 30 s window).

use std::time::Instant;

use micdrop_local::audio;
use micdrop_local::{ModelsDir, WhisperEngine, WhisperOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, language, wav, rest @ ..] = &args[..] else {
        return Err("usage: whisper_rtf MODEL LANGUAGE FILE.wav [runs] [threads] [full]".into());
    };
    let runs: usize = rest.first().map_or(Ok(5), |r| r.parse())?;
    let path = ModelsDir::from_env().whisper_model(model)?;
    let mut opts = WhisperOptions::new(path);
    opts.language = Some(language.clone()).filter(|l| l != "auto");
    if let Some(t) = rest.get(1) {
        opts.threads = t.parse()?;
    }
    opts.fit_context = rest.get(2).map(String::as_str) != Some("full");
    let threads = opts.threads;
    let fit = opts.fit_context;
    let engine = WhisperEngine::load(opts)?;
    let (samples, rate) = audio::decode_wav(&std::fs::read(wav)?)?;
    let pcm = audio::resample(&audio::to_f32(&samples), rate, audio::RATE)?;
    let secs = pcm.len() as f64 / f64::from(audio::RATE);
    let text = engine.transcribe_blocking(&pcm)?;
    let load_before = loadavg();
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..runs.max(1) {
        let c = cpu_secs();
        let t = Instant::now();
        engine.transcribe_blocking(&pcm)?;
        times.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_secs() - c);
    }
    cpu.sort_by(f64::total_cmp);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let worst = times[times.len() - 1];
    println!("transcript: {text}");
    println!(
        "model={model} threads={threads} fitted_context={fit} clip={secs:.2}s runs={} median={:.0}ms worst={:.0}ms rtf={:.3}",
        times.len(),
        median * 1000.0,
        worst * 1000.0,
        median / secs
    );
    println!(
        "cpu_median={:.0}ms cpu_rtf={:.3} loadavg_before={load_before} loadavg_after={}",
        cpu[cpu.len() / 2] * 1000.0,
        cpu[cpu.len() / 2] / secs,
        loadavg()
    );
    Ok(())
}

/// CPU time (user + system) of this process, all threads, from `/proc/self/stat` (Linux; 0
/// elsewhere). Clock ticks are 1/100 s on Linux.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (in parentheses): utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The 1-minute load average (Linux).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}
