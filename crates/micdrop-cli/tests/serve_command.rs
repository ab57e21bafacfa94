//! The `micdrop serve` binary: starts from a config file, serves `/healthz` and calls, refuses a
//! bad config with its line, and on SIGTERM/SIGINT drains: `/readyz` 503, new calls refused,
//! calls in progress go on; exit when the last one ends, or 1001 after the drain timeout or a
//! second signal.

use std::process::Command;
use std::time::Duration;

use micdrop_testkit::{Frame, WsClient, http_get};

mod common;

fn micdrop() -> Command {
    Command::new(env!("CARGO_BIN_EXE_micdrop"))
}

#[test]
fn bad_config_is_refused_with_file_and_line() {
    let dir = std::env::temp_dir().join(format!("micdrop-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[call]\nsystem_prompt = \"ok\"\nfirst_mesage = \"typo\"\n",
    )
    .unwrap();
    let out = micdrop()
        .args(["serve", "--sim", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("first_mesage"), "{err}");
}

/// A running `micdrop serve --sim` process with its stderr lines.
struct Serve {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Serve {
    fn start(name: &str, config: &str) -> Serve {
        let dir = std::env::temp_dir().join(format!("micdrop-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ok.toml");
        std::fs::write(&path, config).unwrap();
        let started = common::spawn_serve(
            micdrop()
                .args(["serve", "--sim", "--listen", "127.0.0.1:0", "--config"])
                .arg(&path),
            Duration::from_secs(30),
        );
        Serve {
            child: started.child,
            addr: started.addr,
            lines: started.lines,
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn call(&self) -> WsClient {
        let mut c = WsClient::connect(&format!("ws://{}/call", self.addr)).await;
        let (f, _) = c.next_text().await;
        assert_eq!(
            f,
            Frame::Text(r#"Message {"role":"assistant","content":"Salut"}"#.into())
        );
        c
    }

    async fn wait_not_ready(&self) {
        for _ in 0..500 {
            if http_get(self.addr, "/readyz", "").await.0 == 503 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("/readyz never turned 503");
    }

    /// Waits for the exit (at most 60 s) and returns whether it succeeded and the rest of the log.
    async fn exit(mut self) -> (bool, String) {
        let status = tokio::task::spawn_blocking(move || {
            for _ in 0..600 {
                if let Some(s) = self.child.try_wait().unwrap() {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            panic!("the server did not exit");
        })
        .await
        .unwrap();
        // The whole log: the reader thread ends at the pipe's end of file, after the exit. (A
        // short quiet period is not the end: on a loaded machine the last lines come late.)
        let mut log = String::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(30)) {
            log.push_str(&line);
            log.push('\n');
        }
        (status.success(), log)
    }
}

const CONFIG: &str =
    "[call]\nfirst_message = \"Salut\"\n[sim]\nzero_delay = true\ntranscripts = [\"Bonjour\"]\n";

/// Reads until the close frame (audio of the greeting may come first).
async fn close_frame(c: &mut WsClient) -> Frame {
    loop {
        match c.next().await {
            Frame::Binary(_) => continue,
            other => return other,
        }
    }
}

#[tokio::test]
async fn sigterm_drains_and_exits_when_the_last_call_ends() {
    let serve = Serve::start("drain", CONFIG);
    let mut c = serve.call().await;
    assert_eq!(http_get(serve.addr, "/readyz", "").await.0, 200);
    serve.signal("-TERM");
    serve.wait_not_ready().await;
    // New calls are refused before the upgrade; liveness and metrics still answer.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/call", serve.addr))
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("503"), "{err}");
    assert_eq!(http_get(serve.addr, "/healthz", "").await.0, 200);
    assert_eq!(http_get(serve.addr, "/metrics", "").await.0, 200);
    // The call in progress is not closed: nothing but its greeting's audio comes.
    while let Some(f) = c.next_within(Duration::from_millis(500)).await {
        assert!(matches!(f, Frame::Binary(_)), "{f:?}");
    }
    // The caller hangs up: the process exits at once, cleanly.
    c.close().await;
    let (ok, log) = serve.exit().await;
    assert!(ok, "{log}");
    assert!(log.contains("call end"), "{log}");
    assert!(log.contains("drained"), "{log}");
}

#[tokio::test]
async fn a_second_sigterm_closes_calls_with_1001_and_exits_zero() {
    let serve = Serve::start("sig2", CONFIG);
    let mut c = serve.call().await;
    serve.signal("-TERM");
    serve.wait_not_ready().await;
    serve.signal("-INT");
    assert_eq!(
        close_frame(&mut c).await,
        Frame::Close(1001, "Server shutting down".into())
    );
    let (ok, log) = serve.exit().await;
    assert!(ok, "{log}");
    assert!(log.contains("call end"), "{log}");
}

#[tokio::test]
async fn the_drain_timeout_closes_calls_with_1001() {
    let serve = Serve::start(
        "drain-timeout",
        &format!("[server]\ndrain_timeout_secs = 1\n{CONFIG}"),
    );
    let mut c = serve.call().await;
    serve.signal("-TERM");
    assert_eq!(
        close_frame(&mut c).await,
        Frame::Close(1001, "Server shutting down".into())
    );
    let (ok, log) = serve.exit().await;
    assert!(ok, "{log}");
    assert!(log.contains("drain timeout"), "{log}");
}
