//! # micdrop-server
//!
//! The micdrop-rs server: configuration, provider wiring, the HTTP and WebSocket routes and the
//! web page. The `micdrop serve` command is a thin wrapper over [`cli::serve`].

pub mod cli;
