//! Errors of the local providers and of model management.

use std::path::PathBuf;

/// An error of micdrop-local: model files, downloads, conversion, engines.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A download failed (connect, HTTP status, interrupted body).
    #[error("download of {url} failed: {reason}")]
    Download {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// A downloaded file does not have the published checksum (the partial file is deleted).
    #[error("checksum mismatch for {file}: expected {algorithm} {expected}, got {actual}")]
    Checksum {
        /// The file's name.
        file: String,
        /// `sha256` or `sha1`.
        algorithm: &'static str,
        /// The published digest.
        expected: String,
        /// The digest of what was received.
        actual: String,
    },
    /// A model file has an unexpected format (CTranslate2, npz, tiktoken, WAV, ONNX config...).
    #[error("invalid model data in {what}: {reason}")]
    Format {
        /// Which file or part.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// An unknown model name, or a model that is not in the cache.
    #[error("{0}")]
    Model(String),
    /// A speech engine failed (whisper.cpp, espeak-ng, onnxruntime).
    #[error("{engine}: {reason}")]
    Engine {
        /// `whisper`, `espeak-ng`, `piper`.
        engine: &'static str,
        /// What happened.
        reason: String,
    },
}

impl LocalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LocalError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(what: impl Into<String>, reason: impl Into<String>) -> Self {
        LocalError::Format {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn engine(engine: &'static str, reason: impl Into<String>) -> Self {
        LocalError::Engine {
            engine,
            reason: reason.into(),
        }
    }
}
