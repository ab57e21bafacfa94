//! Faithful local simulators of the providers micdrop-rs talks to, for tests and demos:
//!
//! - **Gladia live v2** (real-time STT): `POST /v2/live`, then the session WebSocket at the
//!   returned `url` (`/v2/live?token=...`).
//! - **Gradium** TTS and STT WebSockets: `/api/speech/tts` and `/api/speech/asr`.
//! - **Mistral** chat completions: `POST /v1/chat/completions` (SSE or JSON).
//!
//! All three run on one loopback listener and mirror the real URL paths, so a client only swaps
//! its base URL. What the simulated user says and what the simulated model answers come from a
//! [`SimScript`]; timing knobs, concurrency limits and injected faults come from it too, and can
//! be changed while the simulators run ([`SimHandle::update_script`]). Counters
//! ([`SimHandle::counters`]) let a test prove that no session or connection leaks.
//!
//! Layout: [`script`] (the serde script), `gladia`, `gradium`, `mistral` (one module per
//! service), `vad` (energy speech detection), `audio` (codecs, resampling, speech synthesis),
//! The `micdrop sim` command is in micdrop-cli. The exact wire behaviour is documented in `docs/simulators.md`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use micdrop_sim::{SimScript, Simulators};
//! let script = SimScript::from_toml_str("[sim]\ntranscripts = [\"Bonjour\"]").unwrap().zero_delay();
//! let sim = Simulators::start("127.0.0.1:0".parse().unwrap(), script).await?;
//! let init_url = format!("{}/v2/live", sim.gladia_base_url());
//! let tts_url = format!("{}/speech/tts", sim.gradium_base_url());
//! let chat_url = format!("{}/chat/completions", sim.mistral_base_url());
//! # let _ = (init_url, tts_url, chat_url);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod audio;
mod gladia;
mod gradium;
mod mistral;
pub mod script;
mod state;
mod vad;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

pub use script::{
    Fault, FaultKind, GladiaScript, GradiumScript, MistralScript, ScriptedReply, ScriptedToolCall,
    SimScript, TranscriptScope, TtsEngine,
};
pub use state::{Service, ServiceCounters, SimCounters};

use state::SimState;

/// Checks a chat-completions request body against the message rules the Mistral simulator
/// enforces, as api.mistral.ai does (message order, tool calls and their results, tool-call ids,
/// text and tool calls in separate assistant messages, last role). On refusal, the 400 error body.
pub fn check_mistral_messages(body: &serde_json::Value) -> Result<(), serde_json::Value> {
    mistral::validate_semantics(body)
}

/// Errors of the simulator library.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The script is invalid.
    #[error("invalid simulator script: {0}")]
    Script(String),
    /// An I/O error (reading a script file, binding the listener).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Entry point: starts the simulators.
#[derive(Debug)]
pub struct Simulators;

impl Simulators {
    /// Starts all three services on one listener (path-routed), e.g. `127.0.0.1:0`.
    pub async fn start(listen: SocketAddr, script: SimScript) -> std::io::Result<SimHandle> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(script, addr));
        let app = router(state.clone());
        let shutdown = state.shutdown.clone();
        let server = tokio::spawn(async move {
            use axum::serve::ListenerExt;
            // Small frames (acks, tokens, 80 ms audio) must not wait for delayed ACKs (Nagle).
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("TCP_NODELAY: {e}");
                }
            });
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::warn!("simulator server stopped: {e}");
            }
        });
        Ok(SimHandle {
            state,
            server: Some(server),
        })
    }
}

fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/v2/live", post(gladia::init).get(gladia::websocket))
        .route("/v2/live/{id}", get(gladia::result))
        .route("/api/speech/tts", get(gradium::tts))
        .route("/api/speech/asr", get(gradium::stt))
        .route("/api/post/speech/tts", post(gradium::tts_post))
        .route("/v1/chat/completions", post(mistral::chat_completions))
        .with_state(state)
}

/// A running set of simulators. Dropping it stops the server (without waiting); prefer
/// [`SimHandle::shutdown`].
pub struct SimHandle {
    state: Arc<SimState>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.state.addr)
            .finish()
    }
}

impl SimHandle {
    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// Gladia base URL, `http://127.0.0.1:PORT`: a client POSTs `{base}/v2/live`, then opens
    /// the `url` of the answer.
    pub fn gladia_base_url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    /// Gradium base URL, `ws://127.0.0.1:PORT/api` (the real one is `wss://eu.api.gradium.ai/api`):
    /// TTS at `{base}/speech/tts`, STT at `{base}/speech/asr`.
    pub fn gradium_base_url(&self) -> String {
        format!("ws://{}/api", self.state.addr)
    }

    /// Mistral base URL, `http://127.0.0.1:PORT/v1`: chat at `{base}/chat/completions`.
    pub fn mistral_base_url(&self) -> String {
        format!("http://{}/v1", self.state.addr)
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> SimCounters {
        self.state.snapshot()
    }

    /// Waits until no session or connection is open (up to `timeout`); returns the counters.
    /// Servers notice closed sockets asynchronously, so tests proving "nothing leaks" use this.
    pub async fn wait_idle(&self, timeout: Duration) -> SimCounters {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let c = self.counters();
            if c.open() == 0 || tokio::time::Instant::now() >= deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A copy of the current script (faults show their remaining `times`).
    pub fn script(&self) -> SimScript {
        self.state.script()
    }

    /// Changes the script while running (faults, timings, replies...). Sessions already open
    /// keep the timings they started with.
    pub fn update_script(&self, f: impl FnOnce(&mut SimScript)) {
        if let Ok(mut s) = self.state.script.write() {
            f(&mut s);
        }
    }

    /// Adds a fault at the end of a service's fault queue.
    pub fn push_fault(&self, service: Service, fault: Fault) {
        self.update_script(|s| match service {
            Service::Gladia => s.gladia.faults.push(fault),
            Service::GradiumTts => s.gradium.tts_faults.push(fault),
            Service::GradiumStt => s.gradium.stt_faults.push(fault),
            Service::Mistral => s.mistral.faults.push(fault),
        });
    }

    /// Stops the server and waits for every connection task to finish.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        self.state.tracker.close();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.state.tracker.wait()).await;
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}
