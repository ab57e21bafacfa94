//! The HTTP/1.1 accept loop: hyper with a header-read timeout (slowloris), `TCP_NODELAY`, the
//! peer's address for the handlers (`ConnectInfo<SocketAddr>`), accept errors (such as running
//! out of file descriptors) survived without spinning, and graceful connection shutdown.
//!
//! `axum::serve` sets no timer on hyper, so its header-read timeout never fires: a client that
//! trickles its headers (or sends nothing) holds a connection and a file descriptor forever.

use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Default time a client gets to send a request's headers (from the connection's start, or from
/// the end of the previous response on a kept-alive connection).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` is cancelled; then stops accepting and lets each
/// connection finish its request in progress (upgraded WebSockets are not affected: calls
/// have their own shutdown). `header_read_timeout: None` disables the timeout.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    header_read_timeout: Option<Duration>,
) {
    let mut accept_errors: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE/ENFILE and friends: the listener stays usable, wait a little instead
                // of spinning; log the first error and then every 100th.
                if accept_errors % 100 == 0 {
                    warn!(error = %e, errors = accept_errors + 1, "accept failed");
                }
                accept_errors += 1;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                continue;
            }
        };
        // No Nagle: a text frame followed by an audio frame would otherwise wait for the
        // client's delayed ACK (~40 ms added to a turn, measured with `micdrop bench`).
        let _ = tcp.set_nodelay(true);
        let service = app.clone().map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let service = TowerToHyperService::new(service);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

/// Raises the soft limit of open files to the hard limit (each call holds a socket, and each
/// provider session another: a default soft limit of 1,024 runs out long before the machine
/// does), and logs both. Returns the (old, new) soft limits; `None` where there is no such limit.
pub fn raise_nofile_limit() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let (before, hard) = match rlimit::Resource::NOFILE.get() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot read the open-files limit");
                return None;
            }
        };
        match rlimit::increase_nofile_limit(hard) {
            Ok(after) => {
                tracing::info!(
                    soft = after,
                    was = before,
                    hard,
                    "open-files limit (RLIMIT_NOFILE)"
                );
                Some((before, after))
            }
            Err(e) => {
                warn!(error = %e, soft = before, hard, "cannot raise the open-files limit");
                Some((before, before))
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}
