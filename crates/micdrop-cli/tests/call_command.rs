//! `micdrop call` end to end: the binary against a real server (micdrop-server with scripted
//! providers) on 127.0.0.1:0.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use micdrop_client::audio;
use micdrop_core::agent::Agent;
use micdrop_core::call::CallConfig;
use micdrop_server::{ServerOptions, start};
use micdrop_testkit::{ScriptedModel, ScriptedStt, ScriptedTts};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_micdrop"))
}

async fn server(token: Option<&str>) -> micdrop_server::RunningServer {
    let agent = Agent::new(Arc::new(ScriptedModel::default()), "Assistant.");
    let config = CallConfig::new(Arc::new(ScriptedStt::transcripts(&[
        "Quelle heure est-il ?",
    ])))
    .agent(agent)
    .tts(Arc::new(
        ScriptedTts::new()
            .with_chunk_delay(Duration::ZERO)
            .with_bytes_per_char(64),
    ))
    .first_message("Bonjour")
    // `micdrop call --fast` sends the recording faster than real time.
    .audio_burst(None);
    let mut options = ServerOptions::with_template(config);
    options.serve_assets = false;
    if let Some(t) = token {
        options.bearer_tokens = vec![t.to_owned()];
    }
    start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("micdrop-call-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_with_wav_prints_conversation_and_writes_audio() {
    let server = server(Some("s3cret")).await;
    let url = server.ws_url("/call");
    // A WAV at 22.05 kHz stereo: silence, speech, silence (cut into one turn by the VAD).
    let input = temp("user.wav");
    let mut pcm = audio::silence(300);
    pcm.extend(audio::speech_like(800));
    pcm.extend(audio::silence(300));
    let up = audio::resample_linear(&pcm, 16_000, 22_050);
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 22_050,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&input, spec).unwrap();
    for s in up {
        w.write_sample(s).unwrap();
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    let output = temp("assistant.wav");

    let out = tokio::task::spawn_blocking({
        let (input, output) = (input.clone(), output.clone());
        move || {
            bin()
                .args(["call", &url, "--fast", "--token", "s3cret", "--input"])
                .arg(&input)
                .arg("--output")
                .arg(&output)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout
        .lines()
        .map(|l| l.split("] ").nth(1).unwrap_or(l))
        .collect();
    let pos = |l: &str| {
        lines
            .iter()
            .position(|x| *x == l)
            .unwrap_or_else(|| panic!("no {l:?} in {lines:?}"))
    };
    assert!(pos("connected") < pos("assistant: Bonjour"));
    assert!(pos("assistant: Bonjour") < pos("> user speaking"));
    assert!(pos("> user stopped") < pos("user: Quelle heure est-il ?"));
    assert!(pos("user: Quelle heure est-il ?") < pos("assistant: You said: Quelle heure est-il ?"));
    assert!(stderr.contains("turns sent 1, answered 1"), "{stderr}");
    // The recording holds the greeting and the answer: 64 bytes per character.
    let recorded = audio::read_wav(&output).unwrap();
    let chars = "Bonjour".len() + "You said: Quelle heure est-il ?".len();
    assert_eq!(recorded.len() * 2, chars * 64);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_scenario_and_bad_token_exit_non_zero() {
    let server = server(Some("s3cret")).await;
    let url = server.ws_url("/call");
    let scenario = temp("fail.toml");
    std::fs::write(
        &scenario,
        "[[step]]\nexpect = \"message\"\ncontains = \"au revoir\"\ntimeout_ms = 300\n",
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            bin()
                .args(["call", &url, "--token", "s3cret", "--scenario"])
                .arg(&scenario)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("step 1 (expect message)"), "{stderr}");

    let out = tokio::task::spawn_blocking(move || {
        bin()
            .args(["call", &url, "--token", "wrong", "--scenario"])
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/smoke.toml"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("closed: 4401"), "{stdout}");
    assert!(stdout.contains("error: Unauthorized"), "{stdout}");
    assert!(
        !stdout.contains("reconnected"),
        "no retry after 4401: {stdout}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}
