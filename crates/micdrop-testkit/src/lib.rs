//! # micdrop-testkit
//!
//! Scripted providers and a raw WebSocket client for micdrop-rs tests. These live here, never in
//! the product's code paths: the server under test gets them injected like any provider.
//!
//! - [`ScriptedStt`]: transcripts from a script, one entry per user turn; records its commands.
//! - [`ScriptedTts`]: deterministic PCM derived from the text; records cancellations.
//! - [`ScriptedModel`]: a chat model answering from a script (texts, tool calls, errors), with
//!   delays; records its requests and whether a stream was dropped before its end.
//! - [`ScriptedTurnDetector`]: turn verdicts from a script.
//! - [`WsClient`]: a raw WebSocket client that reads frames with timeouts.
//! - [`bench`](mod@bench): timed providers (exact, configurable delays), the engine stack of
//!   `micdrop bench`.
//! - [`http_get`]: a minimal HTTP GET for the probes and `/metrics`.
//! - [`tone_frame`], [`mcp_python`], [`mcp_test_server`]: inputs shared by several crates' tests.

pub mod bench;
mod fixtures;
mod http;
mod model;
mod stt;
mod tts;
mod turn;
mod ws;

pub use fixtures::{mcp_python, mcp_test_server, tone_frame};
pub use http::http_get;
pub use model::{ModelStep, ScriptedModel};
pub use stt::{ScriptedStt, SttScript};
pub use tts::ScriptedTts;
pub use turn::ScriptedTurnDetector;
pub use ws::{Frame, WsClient};
