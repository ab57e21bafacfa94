//! `micdrop bench` end to end: a short run against its in-process server.

use std::process::Command;

/// Runs `micdrop bench ARGS EXTRA --json` (ARGS split at spaces, logs at warn) and returns its
/// report; panics with its output when it fails.
fn bench_json(args: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_micdrop"))
        .env("MICDROP_LOG", "warn")
        .arg("bench")
        .args(args.split_whitespace())
        .args(extra)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn short_bench_reports_latency_barge_in_and_server_usage() {
    let dir = std::env::temp_dir().join(format!("micdrop-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("quick.toml");
    std::fs::write(
        &scenario,
        r#"
        pace = "fast"
        timeout_ms = 5000
        [[step]]
        wait = "answer"
        [[step]]
        speech_ms = 300
        [[step]]
        wait = "audio"
        [[step]]
        speech_ms = 300
        interrupt_after_ms = 200
        [[step]]
        wait = "audio"
        "#,
    )
    .unwrap();
    let r = bench_json(
        "--calls 4 --ramp 0.2 --duration 1 --scenario",
        &[scenario.to_str().unwrap()],
    );
    assert_eq!(r["calls"], 4);
    assert_eq!(r["errors"], 0, "{r:#}");
    assert!(r["runs"].as_u64().unwrap() >= 4, "{r:#}");
    assert_eq!(r["runs_failed"], 0, "{r:#}");
    let turns = r["turns_completed"].as_u64().unwrap();
    assert!(turns >= 8, "{r:#}");
    assert_eq!(r["latency_ms"]["count"].as_u64().unwrap(), turns);
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() >= 0.0);
    assert!(r["server_overhead_ms"]["p99"].as_f64().is_some());
    assert_eq!(
        r["barge_in_ms"]["count"].as_u64().unwrap(),
        r["runs"].as_u64().unwrap()
    );
    assert!(r["calls_held_peak"].as_u64().unwrap() >= 1);
    let server = &r["server"];
    assert!(server["rss_at_rest_mb"].as_f64().unwrap() > 1.0, "{r:#}");
    assert!(server["cpu_percent"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        r["machine"]["cores"].as_u64().unwrap() as usize,
        std::thread::available_parallelism().unwrap().get()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn light_callers_hold_their_calls_and_get_answers() {
    let r = bench_json("--light --calls 3 --ramp 0.1 --duration 2", &[]);
    assert_eq!(r["errors"], 0, "{r:#}");
    // One connection per caller for the whole run.
    assert_eq!(r["runs"], 3, "{r:#}");
    assert_eq!(r["calls_held_peak"], 3, "{r:#}");
    // Every caller spoke once within 1.5 s + 1 s and its turn is finished after the stop.
    let turns = r["turns_completed"].as_u64().unwrap();
    assert!(turns >= 3, "{r:#}");
    assert_eq!(r["turns_sent"].as_u64().unwrap(), turns, "{r:#}");
    assert_eq!(r["latency_ms"]["count"].as_u64().unwrap(), turns, "{r:#}");
    assert!(r["server_overhead_ms"]["p99"].as_f64().is_some());
}

#[test]
fn the_isolated_server_takes_the_audio_lead() {
    let r = bench_json(
        "--light --isolate --audio-lead-ms 0 --calls 6 --ramp 0.1 --duration 5",
        &[],
    );
    assert_eq!(r["errors"], 0, "{r:#}");
    assert_eq!(r["audio_lead_ms"], 0, "{r:#}");
    // Unpaced, each ~3.8 s answer arrives at once, but a light caller thinks only once it has
    // played: every caller's first turn (started 0.5 to 1.5 s in) ends after the 5.1 s of the
    // load phase, so each speaks exactly once. (Callers that thought after 400 ms of silence
    // started second turns at 3.9, 4.2 and 4.4 s.)
    assert_eq!(r["turns_sent"], 6, "{r:#}");
    assert_eq!(r["turns_completed"], 6, "{r:#}");
    assert!(
        r["server"]["measured"]
            .as_str()
            .unwrap()
            .contains("child process"),
        "{r:#}"
    );

    // A lead for a server the bench does not start is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_micdrop"))
        .args("bench --url ws://127.0.0.1:9/ --audio-lead-ms 100".split(' '))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--audio-lead-ms"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_floor_stack_answers_light_callers() {
    let r = bench_json(
        "--light --isolate --stack floor --calls 4 --ramp 0.1 --duration 2",
        &[],
    );
    assert_eq!(r["errors"], 0, "{r:#}");
    assert_eq!(r["calls_held_peak"], 4, "{r:#}");
    let turns = r["turns_completed"].as_u64().unwrap();
    assert!(turns >= 4, "{r:#}");
    // Every turn got audio (its latency is the first audio frame's).
    assert_eq!(r["latency_ms"]["count"].as_u64().unwrap(), turns, "{r:#}");
    assert_eq!(r["audio_lead_ms"], 500, "{r:#}");
}
