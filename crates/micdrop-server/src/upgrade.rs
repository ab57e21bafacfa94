//! The call endpoint's WebSocket upgrade, lean for idle calls.
//!
//! axum's `WebSocketUpgrade` checks the handshake (and answers its errors: 405, 400, 426);
//! this extractor runs it for that, then finishes the upgrade itself so that the socket below
//! tungstenite can be chosen: the TCP stream taken back from hyper (no boxed IO, hyper's
//! 8 KiB read buffer released at once) inside a [`LeanIo`], whose read buffer exists only
//! while it holds data. tungstenite then keeps a small buffer of its own
//! ([`SOCKET_READ_BUFFER`]): an idle call holds ~0.5 KiB of read buffers instead of 4 KiB,
//! and a 100 ms audio frame still takes one `recv`.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::future::Either;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use micdrop_core::lean_io::LeanIo;
use micdrop_core::socket::{SocketSink, SocketStream, tungstenite_server_socket};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::debug;

/// tungstenite's read buffer of each call's WebSocket (bytes); reads from the socket are
/// [`micdrop_core::lean_io::LEAN_IO_CHUNK`] at a time whatever this is.
pub const SOCKET_READ_BUFFER: usize = 512;

/// A checked WebSocket handshake of the call endpoint.
pub(crate) struct CallUpgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
}

impl<S: Send + Sync> FromRequestParts<S> for CallUpgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
        let key = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned();
        // axum's checks and rejections, unchanged (its upgrade itself is not used).
        let checked = WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        drop(checked);
        let (Some(on_upgrade), Some(key)) = (on_upgrade, key) else {
            // HTTP/2 extended CONNECT: this server speaks HTTP/1.1 only.
            return Err((StatusCode::BAD_REQUEST, "WebSocket over HTTP/1.1 only").into_response());
        };
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| StatusCode::BAD_REQUEST.into_response())?;
        Ok(Self { on_upgrade, accept })
    }
}

impl CallUpgrade {
    /// Answers 101 and runs `callback` on the call's socket once the upgrade is done (in a
    /// task of its own, like axum's `on_upgrade`).
    pub(crate) fn on_upgrade<F, Fut>(self, config: WebSocketConfig, callback: F) -> Response
    where
        F: FnOnce(SocketSink, SocketStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        // The socket first, then the call: chained with `then` (not one async block, which
        // would keep the spent config and callback in the task for the whole call).
        let socket = async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    debug!(error = %e, "WebSocket upgrade failed");
                    return None;
                }
            };
            let (sink, stream) = match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    let io = LeanIo::new(parts.io.into_inner(), &parts.read_buf);
                    drop(parts.read_buf);
                    tungstenite_server_socket(io, config).await
                }
                // Another transport (not the server's TCP listener): through hyper's IO.
                Err(upgraded) => {
                    tungstenite_server_socket(LeanIo::new(TokioIo::new(upgraded), &[]), config)
                        .await
                }
            };
            Some((sink, stream))
        };
        tokio::spawn(socket.then(move |socket| match socket {
            Some((sink, stream)) => Either::Left(callback(sink, stream)),
            None => Either::Right(std::future::ready(())),
        }));
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
            .header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .header(header::SEC_WEBSOCKET_ACCEPT, self.accept)
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// The tungstenite config of a call's socket: frame and message limits, small buffers.
pub(crate) fn socket_config(max_frame_bytes: usize) -> WebSocketConfig {
    // Writes go out frame by frame (audio frames are paced anyway): no write buffer.
    WebSocketConfig::default()
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
        .read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(0)
}
