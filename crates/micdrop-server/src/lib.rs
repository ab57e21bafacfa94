//! # micdrop-server
//!
//! The micdrop-rs server: the TOML [`config`], the HTTP and WebSocket routes ([`server`]) and
//! the web page. The `micdrop serve` command (crate micdrop-cli) parses its arguments and runs
//! an [`App`].
//!
//! Feature `sim` (on by default): `serve --sim`, the in-process simulators of micdrop-sim
//! ([`sim`]); without it, the server has no simulator code.
//!
//! Routes: `GET /healthz` (200 `ok`: liveness), `GET /readyz` (200 while taking calls, 503 when
//! draining or full), `GET /metrics` (Prometheus, see [`telemetry`]; traces over OTLP: [`traces`]), the WebSocket call endpoint
//! (`/call` by default), the demo page at `/` and `micdrop.js` (embedded at build time from
//! `assets/`). [`drain`]: the graceful drain on SIGTERM/SIGINT.

pub mod admin;
pub mod agents;
pub mod app;
pub mod config;
pub mod drain;
pub mod floor;
pub mod guard;
pub mod http;
pub mod logging;
pub mod persist;
pub mod server;
pub mod sim;
pub mod telemetry;
pub mod traces;
mod upgrade;

pub use app::{App, AppError, build_agent};
pub use server::{CallFactory, EndHook, RunningServer, ServerOptions, start};
