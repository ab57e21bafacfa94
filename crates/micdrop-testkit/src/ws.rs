use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// A frame received by the test client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
    /// A close frame with its code and reason.
    Close(u16, String),
    /// The socket ended without a close frame.
    Ended,
}

impl Frame {
    /// The text, if a text frame.
    pub fn text(&self) -> Option<&str> {
        match self {
            Frame::Text(t) => Some(t),
            _ => None,
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket client for tests.
pub struct WsClient {
    ws: Ws,
}

impl WsClient {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Self { ws }
    }

    /// Wraps a socket opened elsewhere (with custom headers, for example).
    pub fn from_stream(ws: Ws) -> Self {
        Self { ws }
    }

    /// Sends a text frame.
    pub async fn text(&mut self, t: &str) {
        self.ws
            .send(Message::Text(t.to_owned().into()))
            .await
            .expect("send text");
    }

    /// Sends a binary frame.
    pub async fn binary(&mut self, b: impl Into<Bytes>) {
        self.ws
            .send(Message::Binary(b.into()))
            .await
            .expect("send binary");
    }

    /// Sends `n` frames of 3200 bytes of PCM (100 ms each).
    pub async fn audio(&mut self, n: usize) {
        for _ in 0..n {
            self.binary(vec![1u8; 3200]).await;
        }
    }

    /// Closes the socket.
    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Sends a close frame with a code.
    pub async fn close_with(&mut self, code: u16) {
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: code.into(),
                reason: "".into(),
            }))
            .await;
    }

    /// The next frame (pings skipped), or `None` after `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Frame> {
        tokio::time::timeout(timeout, async {
            loop {
                match self.ws.next().await {
                    None | Some(Err(_)) => return Frame::Ended,
                    Some(Ok(Message::Text(t))) => return Frame::Text(t.as_str().to_owned()),
                    Some(Ok(Message::Binary(b))) => return Frame::Binary(b),
                    Some(Ok(Message::Close(c))) => {
                        return c.map_or(Frame::Close(1005, String::new()), |c| {
                            Frame::Close(c.code.into(), c.reason.as_str().to_owned())
                        });
                    }
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await
        .ok()
    }

    /// The next frame within 5 s (panics otherwise).
    pub async fn next(&mut self) -> Frame {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("a frame within 5 s")
    }

    /// The next non-audio frame within 5 s; returns it with the number of audio bytes skipped.
    pub async fn next_text(&mut self) -> (Frame, usize) {
        let mut audio = 0;
        loop {
            match self.next().await {
                Frame::Binary(b) => audio += b.len(),
                other => return (other, audio),
            }
        }
    }

    /// Asserts the next non-audio frame is exactly `text`.
    pub async fn expect_text(&mut self, text: &str) -> usize {
        let (f, audio) = self.next_text().await;
        assert_eq!(f, Frame::Text(text.to_owned()), "expected {text:?}");
        audio
    }

    /// Reads frames until `quiet` passes without any; returns them.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Frame> {
        let mut v = Vec::new();
        while let Some(f) = self.next_within(quiet).await {
            let end = matches!(f, Frame::Ended | Frame::Close(..));
            v.push(f);
            if end {
                break;
            }
        }
        v
    }
}
