//! A real micdrop-rs server for the client's tests: `run_call` on an axum route at
//! 127.0.0.1:0 with the testkit's scripted providers.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use axum::routing::get;
use micdrop_core::MicdropError;
use micdrop_core::call::{CallConfig, reject, run_call};
use micdrop_core::params::{PARAMS_TIMEOUT, wait_for_params_json};
use micdrop_core::socket::axum_socket;

type MakeConfig = Arc<dyn Fn() -> CallConfig + Send + Sync>;

#[derive(Clone)]
struct AppState {
    make: MakeConfig,
    token: Option<String>,
    connections: Arc<AtomicUsize>,
    /// Close codes for the first connections, in order (then calls run normally).
    closes: Arc<std::sync::Mutex<Vec<u16>>>,
}

pub struct TestServer {
    pub url: String,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(
    make: impl Fn() -> CallConfig + Send + Sync + 'static,
    token: Option<&str>,
    closes: Vec<u16>,
) -> TestServer {
    let connections = Arc::new(AtomicUsize::new(0));
    let state = AppState {
        make: Arc::new(make),
        token: token.map(str::to_owned),
        connections: connections.clone(),
        closes: Arc::new(std::sync::Mutex::new(closes)),
    };
    let app = Router::new().route("/call", get(handler)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    TestServer {
        url: format!("ws://{addr}/call"),
        connections,
        task,
    }
}

async fn handler(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    ws.on_upgrade(move |socket| async move {
        state.connections.fetch_add(1, Ordering::SeqCst);
        let (sink, mut stream) = axum_socket(socket);
        if let Some(token) = &state.token {
            let params = wait_for_params_json(&mut stream, PARAMS_TIMEOUT).await;
            let expected = format!("Bearer {token}");
            let result = params.and_then(|p| {
                if p.get("authorization").and_then(|a| a.as_str()) == Some(expected.as_str()) {
                    Ok(())
                } else {
                    Err(MicdropError::unauthorized())
                }
            });
            if let Err(e) = result {
                reject(sink, &e).await;
                return;
            }
        }
        let close = {
            let mut c = state.closes.lock().unwrap();
            if c.is_empty() {
                None
            } else {
                Some(c.remove(0))
            }
        };
        if let Some(code) = close {
            reject(sink, &MicdropError::new(code, "scripted close")).await;
            return;
        }
        run_call((state.make)(), sink, stream).await;
    })
}
