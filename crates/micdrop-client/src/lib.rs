//! # micdrop-client
//!
//! A native Rust client for Micdrop servers (micdrop-rs or Micdrop's Node server): it speaks
//! the wire protocol, keeps the same state and events as Micdrop's browser client, cuts a
//! continuous source into turns with a VAD, reconnects with Micdrop's close-code rules, and
//! runs scripted scenarios with expectations.
//!
//! Layout:
//! - [`client`]: [`Client`], its [`ClientState`] and [`Event`]s (one task owns a call).
//! - [`vad`]: the [`Vad`] trait, Micdrop's energy-based [`VolumeVad`] and the [`Recorder`]
//!   (pre-roll, turn cutting).
//! - [`audio`]: PCM helpers, WAV files, resampling, `espeak-ng`, synthetic speech.
//! - [`scenario`]: TOML scenarios (steps and expectations) and their runner.
//! - [`error`]: [`ClientError`] and the close-code mapping.
//! - [`bench`](mod@bench): the load generator of `micdrop bench` (concurrent callers, latency, barge-in,
//!   server CPU and memory).
//! - `live` (feature `mic`): the default microphone and speaker through `cpal` (Linux: build
//!   needs `libasound2-dev`).
//!
//! ## Example
//!
//! ```no_run
//! use micdrop_client::{Client, ClientOptions, Event, Pace, audio};
//!
//! # async fn demo() {
//! let options = ClientOptions::new("ws://127.0.0.1:8080/call").bearer("secret");
//! let (client, mut events) = Client::start(options);
//! let speech = audio::speech_like(800);
//! let say = async {
//!     client.say(&speech, Pace::RealTime).await;
//! };
//! let read = async {
//!     while let Some(ev) = events.recv().await {
//!         if let Event::Message(item) = &ev.event {
//!             println!("{item:?}");
//!         }
//!         if matches!(ev.event, Event::SkipAnswer | Event::Stopped) {
//!             break;
//!         }
//!     }
//! };
//! tokio::join!(say, read);
//! client.stop().await;
//! # }
//! ```

pub mod audio;
pub mod bench;
pub mod client;
pub mod error;
#[cfg(feature = "mic")]
pub mod live;
pub mod scenario;
pub mod vad;

pub use client::{Client, ClientOptions, ClientState, Event, Pace, ReconnectOptions, TimedEvent};
pub use error::{ClientError, ClientErrorCode};
pub use vad::{Recorder, RecorderEvent, Vad, VadEvent, VolumeVad, VolumeVadOptions};
