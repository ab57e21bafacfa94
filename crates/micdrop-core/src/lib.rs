//! # micdrop-core
//!
//! The core of micdrop-rs, a Rust server for real-time voice conversations with AI that speaks
//! [Micdrop](https://micdrop.dev)'s wire protocol exactly.
//!
//! Layout:
//! - [`protocol`]: the wire frames, to the byte (client commands, server frames, close codes).
//! - [`conversation`]: Micdrop's conversation items and their exact JSON shapes.
//! - [`agent`]: the provider-independent agent (tools, tool loop, automatic tools, extract,
//!   hooks) over the [`agent::ChatModel`] trait.
//! - [`stt`], [`tts`]: the speech-to-text and text-to-speech provider traits.
//! - [`turn`]: the optional server-side turn detector.
//! - [`call`]: the call engine: one task owns each call (Micdrop's server rules).
//! - [`params`]: the first-frame params with Micdrop's 3 s rule.
//! - [`error`]: errors, close codes.
//! - [`socket`]: socket adapters and typed socket errors; [`time`]: small timing helpers.
//! - [`telemetry`]: the metrics' names and the helpers that record them.
//! - [`trace`]: the trace spans of a call (call, turn, provider requests).
#![cfg_attr(
    feature = "axum",
    doc = r#"
## Example: a call on an axum WebSocket

```no_run
use std::sync::Arc;
use axum::{Router, routing::get, extract::ws::WebSocketUpgrade, response::Response};
use micdrop_core::call::{CallConfig, run_call};
use micdrop_core::socket::axum_socket;

async fn handler(ws: WebSocketUpgrade, config: Arc<CallConfig>) -> Response {
    ws.on_upgrade(move |socket| async move {
        let (sink, stream) = axum_socket(socket);
        let end = run_call((*config).clone(), sink, stream).await;
        println!("call ended after {} s with {} items", end.duration_secs, end.conversation.len());
    })
}
```
"#
)]

pub mod agent;
pub mod call;
pub mod call_budget;
pub mod conversation;
pub mod error;
pub mod params;
pub mod protocol;
pub mod socket;
pub mod stt;
pub mod telemetry;
pub mod time;
pub mod trace;
pub mod tts;
pub mod turn;

pub use conversation::{Conversation, ConversationItem, Role};
pub use error::{AgentError, MicdropError, ProviderErrorKind, SttError, TtsError};
pub use protocol::{ClientCommand, ServerFrame, WsMessage};
