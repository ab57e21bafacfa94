//! Socket adapters: the call runs over any `Sink`/`Stream` of [`WsMessage`], so tests can drive
//! it with channels and any WebSocket library can carry it.

use std::pin::Pin;

use futures::{Sink, Stream};

use crate::protocol::WsMessage;

/// Error of a socket (transport failure, oversized frame, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("socket error: {0}")]
pub struct SocketError(pub String);

/// The sending half of a call's socket.
pub type SocketSink = Pin<Box<dyn Sink<WsMessage, Error = SocketError> + Send>>;
/// The receiving half of a call's socket.
pub type SocketStream = Pin<Box<dyn Stream<Item = Result<WsMessage, SocketError>> + Send>>;

#[cfg(feature = "axum")]
mod axum_adapter {
    use super::*;
    use axum::extract::ws::{CloseFrame, Message, WebSocket};
    use futures::{SinkExt, StreamExt};

    fn to_axum(msg: WsMessage) -> Message {
        match msg {
            WsMessage::Text(t) => Message::Text(t.into()),
            WsMessage::Binary(b) => Message::Binary(b),
            WsMessage::Ping(b) => Message::Ping(b),
            WsMessage::Pong(b) => Message::Pong(b),
            WsMessage::Close(c) => Message::Close(c.map(|(code, reason)| CloseFrame {
                code,
                reason: reason.into(),
            })),
        }
    }

    fn from_axum(msg: Message) -> WsMessage {
        match msg {
            Message::Text(t) => WsMessage::Text(t.as_str().to_owned()),
            Message::Binary(b) => WsMessage::Binary(b),
            Message::Ping(b) => WsMessage::Ping(b),
            Message::Pong(b) => WsMessage::Pong(b),
            Message::Close(c) => {
                WsMessage::Close(c.map(|f| (f.code, f.reason.as_str().to_owned())))
            }
        }
    }

    /// Splits an axum WebSocket into the call's sink and stream.
    pub fn axum_socket(ws: WebSocket) -> (SocketSink, SocketStream) {
        let (sink, stream) = ws.split();
        let sink = sink
            .sink_map_err(|e| SocketError(e.to_string()))
            .with(|m: WsMessage| futures::future::ready(Ok::<_, SocketError>(to_axum(m))));
        let stream = stream.map(|r| r.map(from_axum).map_err(|e| SocketError(e.to_string())));
        (Box::pin(sink), Box::pin(stream))
    }
}

#[cfg(feature = "axum")]
pub use axum_adapter::axum_socket;

/// A socket made of two channels, for tests and in-process use: returns the call's halves and
/// the peer's halves (what the peer sends, what the call sent).
pub fn channel_socket(
    capacity: usize,
) -> (
    SocketSink,
    SocketStream,
    futures::channel::mpsc::Sender<Result<WsMessage, SocketError>>,
    futures::channel::mpsc::Receiver<WsMessage>,
) {
    use futures::SinkExt;
    let (to_call, call_rx) = futures::channel::mpsc::channel(capacity);
    let (call_tx, from_call) = futures::channel::mpsc::channel(capacity);
    let sink = call_tx.sink_map_err(|e| SocketError(e.to_string()));
    (Box::pin(sink), Box::pin(call_rx), to_call, from_call)
}
