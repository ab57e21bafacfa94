//! The sending half of a simulated WebSocket, with message-count faults applied.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::SinkExt;
use futures::stream::SplitSink;
use serde_json::Value;

use crate::script::{Fault, FaultKind};

/// Why a connection task must stop now.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The peer is gone (send failed).
    PeerGone,
    /// A fault cut the connection: drop the socket without a close frame.
    Dropped,
    /// A close frame was sent.
    Closed,
}

/// Sends JSON messages, applying `drop`, `malformed` and `close` faults by message count.
pub(crate) struct Out {
    sink: SplitSink<WebSocket, Message>,
    sent: u32,
    fault: Option<Fault>,
    closed: bool,
}

impl Out {
    pub(crate) fn new(sink: SplitSink<WebSocket, Message>, fault: Option<Fault>) -> Self {
        Self {
            sink,
            sent: 0,
            fault,
            closed: false,
        }
    }

    /// Whether the connection fault is `kind`.
    pub(crate) fn fault_is(&self, kind: FaultKind) -> bool {
        self.fault.as_ref().is_some_and(|f| f.kind == kind)
    }

    /// Sends one JSON message.
    pub(crate) async fn send(&mut self, v: &Value) -> Result<(), Ended> {
        if let Some(f) = &self.fault {
            match f.kind {
                FaultKind::Drop if self.sent >= f.after_messages => return Err(Ended::Dropped),
                FaultKind::Close if self.sent >= f.after_messages => {
                    let code = f.code.unwrap_or(1011);
                    self.close(code, "simulated fault").await;
                    return Err(Ended::Closed);
                }
                FaultKind::Malformed if self.sent == f.after_messages => {
                    self.sent += 1;
                    let s = crate::state::first_half(&v.to_string());
                    return self
                        .sink
                        .send(Message::Text(s.into()))
                        .await
                        .map_err(|_| Ended::PeerGone);
                }
                _ => {}
            }
        }
        self.sent += 1;
        self.sink
            .send(Message::Text(v.to_string().into()))
            .await
            .map_err(|_| Ended::PeerGone)
    }

    /// Sends a close frame (once).
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        let _ = self
            .sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.to_string().into(),
            })))
            .await;
        let _ = self.sink.flush().await;
    }
}

/// Sleeps until `t`, or forever when there is none (the `select!` branch of an optional timer).
pub(crate) async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
