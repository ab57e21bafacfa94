//! WebSocket plumbing shared by the Gladia and Gradium sessions: connecting with headers and a
//! timeout, close frames and errors.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use micdrop_core::ProviderErrorKind;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

/// A client WebSocket.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `url` with extra `headers`, within `timeout`. A refused upgrade becomes
/// [`ProviderErrorKind::Status`] (body kept), anything else a network error or a timeout. The URL
/// (which may hold a session token) is never put in the error. The socket has `TCP_NODELAY`.
pub async fn connect(
    url: &Url,
    headers: &[(&'static str, String)],
    timeout: Duration,
) -> Result<WsStream, ProviderErrorKind> {
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| ProviderErrorKind::Config(format!("invalid WebSocket URL: {e}")))?;
    for (k, v) in headers {
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| ProviderErrorKind::Config(format!("invalid value for header {k}")))?;
        req.headers_mut().insert(*k, value);
    }
    // `disable_nagle`: small frames (Gradium's text, Gladia's 100 ms chunks right after a
    // burst) must not wait up to 40 ms for the provider's delayed ACK.
    let handshake = tokio_tungstenite::connect_async_with_config(req, None, true);
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(ProviderErrorKind::Timeout(format!(
            "WebSocket handshake not done within {} ms",
            timeout.as_millis()
        ))),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default();
            Err(crate::http::status_error(status, &body))
        }
        Ok(Err(e)) => Err(ws_error(&e)),
    }
}

/// Maps a tungstenite error to an error kind.
pub fn ws_error(e: &tungstenite::Error) -> ProviderErrorKind {
    match e {
        tungstenite::Error::Protocol(p) => ProviderErrorKind::Network(format!("WebSocket: {p}")),
        other => ProviderErrorKind::Network(other.to_string()),
    }
}

/// The error kind of a close frame (`None`: closed without a frame, i.e. abnormally).
pub fn close_error(frame: Option<&CloseFrame>) -> ProviderErrorKind {
    match frame {
        Some(f) => ProviderErrorKind::Closed {
            code: u16::from(f.code),
            reason: f.reason.to_string(),
        },
        None => ProviderErrorKind::Closed {
            code: 1006,
            reason: "closed without a close frame".into(),
        },
    }
}

/// Closes `ws` politely (code 1000), giving up after a second.
pub async fn close(mut ws: WsStream) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = ws.send(Message::Close(Some(frame))).await;
        // Drain until the server's close arrives.
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider socket without `TCP_NODELAY` holds a small frame sent after a burst until the
    /// provider's delayed ACK (40 ms on Linux): every turn on the provider stack paid it.
    #[tokio::test]
    async fn provider_sockets_have_tcp_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        });
        let url = Url::parse(&format!("ws://{addr}/")).unwrap();
        let ws = connect(&url, &[], Duration::from_secs(5)).await.unwrap();
        match ws.get_ref() {
            MaybeTlsStream::Plain(tcp) => assert!(tcp.nodelay().unwrap(), "Nagle is on"),
            _ => panic!("expected a plain TCP stream"),
        }
        close(ws).await;
        server.await.unwrap();
    }
}
