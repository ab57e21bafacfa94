//! The server of `micdrop bench --stack floor`: the call endpoint's HTTP serving and WebSocket
//! upgrade, the same as [`crate::start`]'s (the TCP stream in a `LeanIo`, tungstenite with the
//! call's socket config), with each connection served by [`io_floor`] instead of the call
//! engine: the I/O floor of a turn (docs/BENCHMARKS.md). No auth, guards, limits or metrics:
//! a benchmark's yardstick, not a server to deploy.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use micdrop_core::call::{FloorAnswer, io_floor};
use tokio_util::sync::CancellationToken;

use crate::config::{DEFAULT_MAX_FRAME_BYTES, DEFAULT_PATH};
use crate::upgrade::{CallUpgrade, socket_config};

/// A running floor server (see the module docs).
pub struct FloorServer {
    addr: SocketAddr,
    stop: CancellationToken,
    http: tokio::task::JoinHandle<()>,
}

impl FloorServer {
    /// `ws://ADDR/PATH` for clients.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Stops accepting (the connections in progress end with their clients).
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.http).await;
    }
}

/// Binds `addr` and serves the floor on the call endpoint's default path (`/call`): every
/// `StopSpeaking` is answered with `answer`, its audio paced with `lead` (`None`: unpaced).
pub async fn start_floor(
    addr: SocketAddr,
    lead: Option<Duration>,
    answer: FloorAnswer,
) -> std::io::Result<FloorServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route(
        DEFAULT_PATH,
        get(move |upgrade: CallUpgrade| async move {
            upgrade.on_upgrade(
                socket_config(DEFAULT_MAX_FRAME_BYTES),
                move |sink, stream| io_floor(sink, stream, lead, answer),
            )
        }),
    );
    let stop = CancellationToken::new();
    let http = tokio::spawn(crate::http::serve(listener, app, stop.clone(), None));
    Ok(FloorServer { addr, stop, http })
}
