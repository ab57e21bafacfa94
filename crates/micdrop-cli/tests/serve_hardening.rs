//! `micdrop serve` hardening, on the real binary: no secret in the logs even at
//! `MICDROP_LOG=trace` (API keys, the bearer token, Gladia's session token), warnings keep
//! their `call_id` at `MICDROP_LOG=warn`, and the soft open-files limit is raised at start.

use std::process::{Child, Command};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use micdrop_client::audio;
use micdrop_testkit::{Frame, WsClient};

mod common;

const BEARER: &str = "bearer-S3CRET-7d1f";
/// The keys `serve --sim` gives its provider clients (see `point_to_simulators`).
const SIM_KEYS: [&str; 3] = ["sim-gladia-key", "sim-gradium-key", "sim-mistral-key"];

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("micdrop-hardening-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

struct Server {
    child: Child,
    lines: Receiver<String>,
    addr: std::net::SocketAddr,
    seen: Vec<String>,
}

impl Server {
    fn start(name: &str, config: &str, log: &str, shell_prefix: Option<&str>) -> Self {
        let path = temp(name);
        std::fs::write(&path, config).unwrap();
        let bin = env!("CARGO_BIN_EXE_micdrop");
        let mut cmd = match shell_prefix {
            // e.g. `ulimit -Sn 256;` before exec: the server starts with a low soft limit.
            Some(prefix) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!(
                    "{prefix} exec \"$0\" serve --sim --listen 127.0.0.1:0 --config \"$1\""
                ));
                c.arg(bin).arg(&path);
                c
            }
            None => {
                let mut c = Command::new(bin);
                c.args(["serve", "--sim", "--listen", "127.0.0.1:0", "--config"])
                    .arg(&path);
                c
            }
        };
        let started = common::spawn_serve(
            cmd.env("MICDROP_LOG", log).env_remove("RUST_LOG"),
            Duration::from_secs(30),
        );
        Self {
            child: started.child,
            lines: started.lines,
            addr: started.addr,
            seen: started.seen,
        }
    }

    /// Stops the server (SIGTERM) and returns everything it logged.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        // Until the pipe's end of file: a quiet half second is not the end on a loaded machine.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(30)) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }
}

/// Reads frames until a text frame containing `needle` (audio and other frames skipped).
async fn until(c: &mut WsClient, needle: &str) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        match c.next_within(Duration::from_secs(20)).await {
            Some(Frame::Text(t)) => {
                let found = t.contains(needle);
                texts.push(t);
                if found {
                    return texts;
                }
            }
            Some(Frame::Binary(_)) => {}
            other => panic!("waiting for {needle:?}: {other:?} after {texts:?}"),
        }
    }
}

/// One spoken turn on the simulated stack: params with the token, greeting, speech, transcript,
/// answer.
async fn spoken_turn(addr: std::net::SocketAddr) {
    let mut c = WsClient::connect(&format!("ws://{addr}/call")).await;
    c.text(&format!(r#"{{"authorization":"Bearer {BEARER}"}}"#))
        .await;
    until(&mut c, "Bonjour, je vous écoute").await;
    c.text("StartSpeaking").await;
    let mut pcm = audio::speech_like(1200);
    pcm.extend(audio::silence(300));
    for chunk in pcm.chunks(1600) {
        c.binary(audio::to_bytes(chunk)).await;
    }
    c.text("StopSpeaking").await;
    until(&mut c, r#""role":"user""#).await;
    until(&mut c, r#""role":"assistant""#).await;
    c.close().await;
}

const CONFIG: &str = r#"
[call]
first_message = "Bonjour, je vous écoute"
[auth]
bearer_tokens = ["bearer-S3CRET-7d1f"]
[sim]
zero_delay = true
transcripts = ["Quelle heure est-il ?"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_logs_at_trace_level() {
    let server = Server::start("trace.toml", CONFIG, "trace", None);
    spoken_turn(server.addr).await;
    // A wrong token too: its rejection is logged, never the token.
    let mut c = WsClient::connect(&format!("ws://{}/call", server.addr)).await;
    c.text(r#"{"authorization":"Bearer wrong-T0KEN-guess"}"#)
        .await;
    assert_eq!(c.next().await, Frame::Close(4401, "Unauthorized".into()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = server.stop();
    // The logs are really at trace level, and the call went through every provider.
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "{logs}");
    assert!(logs.contains("client command"), "{logs}");
    assert!(logs.contains("gladia connected"), "{logs}");
    for secret in SIM_KEYS.iter().chain([&BEARER, &"wrong-T0KEN-guess"]) {
        assert!(
            !logs.contains(secret),
            "{secret} is in the logs:\n{}",
            lines_with(&logs, secret)
        );
    }
    // Gladia's session URL carries its token: no URL query with a token, no auth headers.
    for needle in ["token=", "x-api-key", "authorization", "Bearer "] {
        assert!(
            !logs.to_lowercase().contains(&needle.to_lowercase()),
            "{needle:?} is in the logs:\n{}",
            lines_with(&logs.to_lowercase(), &needle.to_lowercase())
        );
    }
}

fn lines_with(logs: &str, needle: &str) -> String {
    logs.lines()
        .filter(|l| l.contains(needle))
        .take(5)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_keep_their_call_id_at_warn_level() {
    // A greeting the simulated TTS refuses: the call logs a warning ("TTS failed").
    let config = r#"
[call]
first_message = "Bonjour"
[sim]
zero_delay = true
[sim.gradium]
api_key = "another-key"
"#;
    let server = Server::start("warn.toml", config, "warn", None);
    let mut c = WsClient::connect(&format!("ws://{}/call", server.addr)).await;
    until(&mut c, "SkipAnswer").await;
    c.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = server.stop();
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    assert!(!warnings.is_empty(), "no warning: {logs}");
    for w in &warnings {
        assert!(w.contains("call_id="), "a warning without its call_id: {w}");
        // The client's span is the call span's parent: its address is on the line too.
        assert!(
            w.contains("addr=127.0.0.1"),
            "a warning without the address: {w}"
        );
    }
}

#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_limit() {
    let hard: u64 = {
        let out = Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match text.parse() {
            Ok(n) => n,
            // "unlimited": nothing to check.
            Err(_) => return,
        }
    };
    if hard <= 256 {
        return;
    }
    let server = Server::start(
        "nofile.toml",
        "[sim]\nzero_delay = true\n",
        "info",
        Some("ulimit -Sn 256;"),
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id()))
        .expect("/proc limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let logs = server.stop();
    let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(soft, hard, "{line}");
    assert!(logs.contains("open-files limit"), "{logs}");
    assert!(logs.contains("was=256"), "{logs}");
}
