//! The `micdrop serve` binary: starts from a config file, serves `/healthz` and calls, refuses a
//! bad config with its line, and on SIGTERM closes every call with 1001 and exits cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use micdrop_testkit::{Frame, WsClient};

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

#[tokio::test]
async fn sigterm_closes_calls_with_1001_and_exits_zero() {
    let dir = std::env::temp_dir().join(format!("micdrop-sig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ok.toml");
    std::fs::write(
        &path,
        "[call]\nfirst_message = \"Salut\"\n[sim]\nzero_delay = true\ntranscripts = [\"Bonjour\"]\n",
    )
    .unwrap();
    let mut child = micdrop()
        .args(["serve", "--sim", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The banner gives the address.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server banner");
        if let Some(rest) = line.split("web page http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    let mut c = WsClient::connect(&format!("ws://{addr}/call")).await;
    let (f, _) = c.next_text().await;
    assert_eq!(
        f,
        Frame::Text(r#"Message {"role":"assistant","content":"Salut"}"#.into())
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The call is closed with 1001 (audio of the greeting may come first).
    let mut closed = None;
    for _ in 0..1000 {
        match c.next().await {
            Frame::Binary(_) => continue,
            other => {
                closed = Some(other);
                break;
            }
        }
    }
    assert_eq!(
        closed,
        Some(Frame::Close(1001, "Server shutting down".into()))
    );
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(code.success(), "{code:?}");
    // Its end was logged.
    let mut ended = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        ended |= line.contains("call end");
    }
    assert!(ended);
}
