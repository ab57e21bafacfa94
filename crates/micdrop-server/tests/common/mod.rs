//! A call server with trait-level providers, for the tests that drive it over real WebSockets.
//! Each test binary uses part of it.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use micdrop_core::call::{CallConfig, CallEnd};
use micdrop_server::{RunningServer, ServerOptions, start};
use micdrop_testkit::WsClient;

/// A running server on a free loopback port, with the ends of its calls.
pub struct Harness {
    pub server: RunningServer,
    pub ends: Arc<Mutex<Vec<CallEnd>>>,
}

impl Harness {
    /// Every call runs with `config`.
    pub async fn start(config: CallConfig) -> Self {
        Self::with_options(ServerOptions::with_template(config), |_| {}).await
    }

    /// `options`, changed by `tweak` once the end hook is in.
    pub async fn with_options(
        mut options: ServerOptions,
        tweak: impl FnOnce(&mut ServerOptions),
    ) -> Self {
        let ends = Arc::new(Mutex::new(Vec::new()));
        let e = ends.clone();
        options.on_end = Some(Arc::new(move |end| e.lock().unwrap().push(end)));
        tweak(&mut options);
        let server = start("127.0.0.1:0".parse().unwrap(), options)
            .await
            .unwrap();
        Self { server, ends }
    }

    /// A new call.
    pub async fn client(&self) -> WsClient {
        WsClient::connect(&self.server.ws_url("/call")).await
    }

    /// The next call end (at most 5 s).
    pub async fn wait_end(&self) -> CallEnd {
        for _ in 0..500 {
            if let Some(e) = self.ends.lock().unwrap().pop() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the call did not end");
    }
}

/// One user turn: `StartSpeaking`, `chunks` audio frames, `StopSpeaking`.
pub async fn turn(c: &mut WsClient, chunks: usize) {
    c.text("StartSpeaking").await;
    c.audio(chunks).await;
    c.text("StopSpeaking").await;
}

/// Log lines written by the server, captured in memory (see [`capture_logs`]).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Captures the log lines up to `level` (plain text) while the guard lives. The test runtime
/// must be single-threaded, so that the server's tasks log through this thread's subscriber.
pub fn capture_logs(level: tracing::Level) -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(level)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}
