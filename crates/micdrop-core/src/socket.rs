//! Socket adapters: the call runs over any `Sink`/`Stream` of [`WsMessage`], so tests can drive
//! it with channels and any WebSocket library can carry it.
//!
//! Socket errors are typed ([`SocketError`]) and carry the close code the server answers with
//! (RFC 6455): 1002 for a protocol error, 1007 for invalid UTF-8, 1009 for an oversized frame,
//! none for a lost connection (nobody is left to read it). The adapters never poll a socket again
//! after it failed: every later call answers [`SocketError::Disconnected`] at once.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Sink, Stream};

use crate::protocol::WsMessage;
use crate::protocol::{CLOSE_INTERNAL, CLOSE_INVALID_DATA, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG};

/// Error of a socket, with the close code it calls for ([`SocketError::close_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// The peer broke the WebSocket protocol (non-zero RSV bits, an unmasked client frame, an
    /// unknown opcode, a fragmented or oversized (> 125 bytes) control frame, ...): 1002.
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),
    /// A text frame whose payload is not valid UTF-8: 1007.
    #[error("invalid UTF-8 in a text frame")]
    InvalidUtf8,
    /// A frame or message larger than the configured limit: 1009.
    #[error("frame too big: {0}")]
    TooBig(String),
    /// The connection is gone (reset, closed without a closing handshake, already closed):
    /// no close frame can be sent.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// Any other failure of the transport: 1011.
    #[error("socket error: {0}")]
    Other(String),
}

impl SocketError {
    /// The close code to answer this error with; `None` when the connection is gone.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            SocketError::Protocol(_) => Some(CLOSE_PROTOCOL_ERROR),
            SocketError::InvalidUtf8 => Some(CLOSE_INVALID_DATA),
            SocketError::TooBig(_) => Some(CLOSE_TOO_BIG),
            SocketError::Disconnected(_) => None,
            SocketError::Other(_) => Some(CLOSE_INTERNAL),
        }
    }

    /// The close reason sent with [`close_code`](Self::close_code) (short, no peer data).
    pub fn close_reason(&self) -> &'static str {
        match self {
            SocketError::Protocol(_) => "Protocol error",
            SocketError::InvalidUtf8 => "Invalid UTF-8",
            SocketError::TooBig(_) => "Frame too big",
            SocketError::Disconnected(_) => "Connection lost",
            SocketError::Other(_) => "Socket error",
        }
    }

    /// Whether the connection is gone (nothing more can be sent on it).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, SocketError::Disconnected(_))
    }
}

/// The sending half of a call's socket.
pub type SocketSink = Pin<Box<dyn Sink<WsMessage, Error = SocketError> + Send>>;
/// The receiving half of a call's socket.
pub type SocketStream = Pin<Box<dyn Stream<Item = Result<WsMessage, SocketError>> + Send>>;

/// A sink adapter that converts items and errors, and never polls its inner sink again once it
/// failed (`futures`' `SinkMapErr` panics with "polled MapErr after completion" when it is).
struct FailFastSink<S, T, E> {
    inner: S,
    failed: bool,
    convert: fn(WsMessage) -> T,
    error: fn(E) -> SocketError,
    /// A server socket's binary frames go here instead of through the library (no copy).
    raw: Option<crate::lean_io::RawWriter>,
}

impl<S, T, E> FailFastSink<S, T, E> {
    fn check<R>(&mut self, r: Result<R, E>) -> Result<R, SocketError> {
        r.map_err(|e| {
            self.failed = true;
            (self.error)(e)
        })
    }

    fn gone() -> SocketError {
        SocketError::Disconnected("the socket already failed".into())
    }
}

impl<S, T, E> Sink<WsMessage> for FailFastSink<S, T, E>
where
    S: Sink<T, Error = E> + Unpin,
{
    type Error = SocketError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        if self.failed {
            return Poll::Ready(Err(Self::gone()));
        }
        let r = futures::ready!(Pin::new(&mut self.inner).poll_ready(cx));
        Poll::Ready(self.check(r))
    }

    fn start_send(mut self: Pin<&mut Self>, item: WsMessage) -> Result<(), SocketError> {
        if self.failed {
            return Err(Self::gone());
        }
        // `poll_ready` came first (the `Sink` contract): what was sent before is in the
        // socket's queue already, so the raw frame goes after it.
        let item = match (&mut self.raw, item) {
            (Some(raw), WsMessage::Binary(payload)) => {
                return raw.push_binary(payload).map_err(|e| {
                    self.failed = true;
                    SocketError::Disconnected(e.to_string())
                });
            }
            (_, item) => item,
        };
        let item = (self.convert)(item);
        let r = Pin::new(&mut self.inner).start_send(item);
        self.check(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        if self.failed {
            return Poll::Ready(Err(Self::gone()));
        }
        let r = futures::ready!(Pin::new(&mut self.inner).poll_flush(cx));
        Poll::Ready(self.check(r))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        if self.failed {
            return Poll::Ready(Err(Self::gone()));
        }
        let r = futures::ready!(Pin::new(&mut self.inner).poll_close(cx));
        Poll::Ready(self.check(r))
    }
}

/// A stream adapter that converts items and errors and ends after the first error or end (a
/// failed socket is never polled again).
struct FailFastStream<S, T, E> {
    inner: S,
    done: bool,
    /// `None`: an item that is not a message (skipped).
    convert: fn(T) -> Option<WsMessage>,
    error: fn(E) -> SocketError,
}

impl<S, T, E> Stream for FailFastStream<S, T, E>
where
    S: Stream<Item = Result<T, E>> + Unpin,
{
    type Item = Result<WsMessage, SocketError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let item = futures::ready!(Pin::new(&mut self.inner).poll_next(cx));
            return Poll::Ready(match item {
                Some(Ok(m)) => match (self.convert)(m) {
                    Some(m) => Some(Ok(m)),
                    None => continue,
                },
                Some(Err(e)) => {
                    self.done = true;
                    Some(Err((self.error)(e)))
                }
                None => {
                    self.done = true;
                    None
                }
            });
        }
    }
}

#[cfg(feature = "axum")]
mod axum_adapter {
    use super::*;
    use axum::extract::ws::{CloseFrame, Message, WebSocket};
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite;

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

    /// The typed error behind an axum WebSocket error (axum boxes tungstenite's).
    pub(super) fn from_axum_error(e: axum::Error) -> SocketError {
        match e.into_inner().downcast::<tungstenite::Error>() {
            Ok(e) => from_tungstenite(*e),
            Err(other) => SocketError::Other(other.to_string()),
        }
    }

    /// Classifies a tungstenite error by its variant (never by its text).
    pub fn from_tungstenite(e: tungstenite::Error) -> SocketError {
        use tungstenite::error::ProtocolError as P;
        match e {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                SocketError::Disconnected(e.to_string())
            }
            tungstenite::Error::Io(io) => SocketError::Disconnected(io.to_string()),
            tungstenite::Error::Protocol(P::ResetWithoutClosingHandshake | P::SendAfterClosing) => {
                SocketError::Disconnected(e.to_string())
            }
            tungstenite::Error::Protocol(p) => SocketError::Protocol(p.to_string()),
            tungstenite::Error::Utf8(_) => SocketError::InvalidUtf8,
            tungstenite::Error::Capacity(c) => SocketError::TooBig(c.to_string()),
            other => SocketError::Other(other.to_string()),
        }
    }

    /// Splits an axum WebSocket into the call's sink and stream.
    pub fn axum_socket(ws: WebSocket) -> (SocketSink, SocketStream) {
        let (sink, stream) = ws.split();
        let sink = FailFastSink {
            inner: sink,
            failed: false,
            convert: to_axum,
            error: from_axum_error,
            raw: None,
        };
        let stream = FailFastStream {
            inner: stream,
            done: false,
            convert: |m| Some(from_axum(m)),
            error: from_axum_error,
        };
        (Box::pin(sink), Box::pin(stream))
    }

    fn to_tungstenite(msg: WsMessage) -> tungstenite::Message {
        use tungstenite::protocol::CloseFrame;
        match msg {
            WsMessage::Text(t) => tungstenite::Message::Text(t.into()),
            WsMessage::Binary(b) => tungstenite::Message::Binary(b),
            WsMessage::Ping(b) => tungstenite::Message::Ping(b),
            WsMessage::Pong(b) => tungstenite::Message::Pong(b),
            WsMessage::Close(c) => {
                tungstenite::Message::Close(c.map(|(code, reason)| CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                }))
            }
        }
    }

    fn from_tungstenite_message(msg: tungstenite::Message) -> Option<WsMessage> {
        Some(match msg {
            tungstenite::Message::Text(t) => WsMessage::Text(t.as_str().to_owned()),
            tungstenite::Message::Binary(b) => WsMessage::Binary(b),
            tungstenite::Message::Ping(b) => WsMessage::Ping(b),
            tungstenite::Message::Pong(b) => WsMessage::Pong(b),
            tungstenite::Message::Close(c) => {
                WsMessage::Close(c.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())))
            }
            // Raw frames are never read (only written by applications that want to).
            tungstenite::Message::Frame(_) => return None,
        })
    }

    /// Splits a tokio-tungstenite WebSocket (e.g. over a [`crate::lean_io::LeanIo`]) into the
    /// call's sink and stream; the same messages and error classification as
    /// [`axum_socket`].
    pub fn tungstenite_socket<S>(
        ws: tokio_tungstenite::WebSocketStream<S>,
    ) -> (SocketSink, SocketStream)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        split_tungstenite(ws, None)
    }

    /// The server's end of a WebSocket (handshake done) over `io`, as [`tungstenite_socket`]
    /// with `config`, except that binary frames go straight to `io`'s write queue (its
    /// [`crate::lean_io::LeanIo::raw_writer`]), without being copied; text and control
    /// frames, and the flushes, go through tungstenite.
    pub async fn tungstenite_server_socket<S>(
        io: crate::lean_io::LeanIo<S>,
        config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    ) -> (SocketSink, SocketStream)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let raw = io.raw_writer();
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            io,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(config),
        )
        .await;
        split_tungstenite(ws, Some(raw))
    }

    fn split_tungstenite<S>(
        ws: tokio_tungstenite::WebSocketStream<S>,
        raw: Option<crate::lean_io::RawWriter>,
    ) -> (SocketSink, SocketStream)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, stream) = ws.split();
        let sink = FailFastSink {
            inner: sink,
            failed: false,
            convert: to_tungstenite,
            error: from_tungstenite,
            raw,
        };
        let stream = FailFastStream {
            inner: stream,
            done: false,
            convert: from_tungstenite_message,
            error: from_tungstenite,
        };
        (Box::pin(sink), Box::pin(stream))
    }
}

#[cfg(feature = "axum")]
pub use axum_adapter::{
    axum_socket, from_tungstenite, tungstenite_server_socket, tungstenite_socket,
};

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
    let (to_call, call_rx) = futures::channel::mpsc::channel(capacity);
    let (call_tx, from_call) = futures::channel::mpsc::channel(capacity);
    let sink = FailFastSink {
        inner: call_tx,
        failed: false,
        convert: |m| m,
        error: |e: futures::channel::mpsc::SendError| SocketError::Disconnected(e.to_string()),
        raw: None,
    };
    (Box::pin(sink), Box::pin(call_rx), to_call, from_call)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::SinkExt;

    /// A sink that fails once, then panics if it is polled again (like `SinkMapErr`).
    struct FailsOnce {
        failed: bool,
    }

    impl Sink<WsMessage> for FailsOnce {
        type Error = &'static str;
        fn poll_ready(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            assert!(!self.failed, "polled after an error");
            self.failed = true;
            Poll::Ready(Err("reset"))
        }
        fn start_send(self: Pin<&mut Self>, _: WsMessage) -> Result<(), Self::Error> {
            panic!("start_send after an error")
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            assert!(!self.failed, "polled after an error");
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            assert!(!self.failed, "polled after an error");
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_failed_sink_is_never_polled_again() {
        let mut sink = FailFastSink {
            inner: FailsOnce { failed: false },
            failed: false,
            convert: |m| m,
            error: |e: &'static str| SocketError::Disconnected(e.into()),
            raw: None,
        };
        let e = sink.send(WsMessage::Text("a".into())).await.unwrap_err();
        assert_eq!(e, SocketError::Disconnected("reset".into()));
        assert!(
            sink.send(WsMessage::Text("b".into()))
                .await
                .unwrap_err()
                .is_disconnect()
        );
        assert!(sink.close().await.unwrap_err().is_disconnect());
        assert!(sink.flush().await.unwrap_err().is_disconnect());
    }

    #[test]
    fn close_codes() {
        assert_eq!(SocketError::Protocol("x".into()).close_code(), Some(1002));
        assert_eq!(SocketError::InvalidUtf8.close_code(), Some(1007));
        assert_eq!(SocketError::TooBig("x".into()).close_code(), Some(1009));
        assert_eq!(SocketError::Other("x".into()).close_code(), Some(1011));
        assert_eq!(SocketError::Disconnected("x".into()).close_code(), None);
    }

    #[cfg(feature = "axum")]
    #[test]
    fn tungstenite_errors_are_classified_by_variant() {
        use tokio_tungstenite::tungstenite::Error as E;
        use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError as P};
        let c = |e| from_tungstenite(e).close_code();
        assert_eq!(c(E::Protocol(P::NonZeroReservedBits)), Some(1002));
        assert_eq!(c(E::Protocol(P::UnmaskedFrameFromClient)), Some(1002));
        assert_eq!(c(E::Protocol(P::ControlFrameTooBig)), Some(1002));
        assert_eq!(c(E::Protocol(P::InvalidOpcode(3))), Some(1002));
        assert_eq!(c(E::Utf8("bad".into())), Some(1007));
        assert_eq!(
            c(E::Capacity(CapacityError::MessageTooLong {
                size: 9,
                max_size: 1
            })),
            Some(1009)
        );
        assert_eq!(c(E::Protocol(P::ResetWithoutClosingHandshake)), None);
        assert_eq!(c(E::ConnectionClosed), None);
        assert_eq!(
            c(E::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset
            ))),
            None
        );
    }
}
