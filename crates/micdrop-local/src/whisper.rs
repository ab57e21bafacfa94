//! Whisper speech-to-text, in-process (whisper.cpp through `whisper-rs`).
//!
//! One [`WhisperEngine`] (the model, loaded once) serves every call. A call's session buffers
//! the user's turn and transcribes it when the turn ends. Transcriptions run on tokio's blocking
//! threads, at most `workers` at a time (a fair semaphore: turns are served in the order they
//! ended), so that many calls can never starve the async runtime; a turn waiting for a worker
//! waits asynchronously. Each worker keeps a whisper.cpp state (its compute buffers) for reuse.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use micdrop_core::error::{ProviderErrorKind, SttError};
use micdrop_core::stt::{SpeechToText, SttCommand, SttEvent, SttSessionIo};
use tokio::sync::Semaphore;
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

use crate::audio;
use crate::error::LocalError;

/// The shortest clip whisper.cpp transcribes (shorter turns are padded with silence).
const MIN_SAMPLES: usize = 16_000 + 1_600;

/// Options of the Whisper engine (`[stt.whisper]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhisperOptions {
    /// The ggml model file.
    pub model: PathBuf,
    /// Spoken language (`fr`, `en`), or `None` to detect it for each turn.
    pub language: Option<String>,
    /// Threads per transcription.
    pub threads: usize,
    /// Transcriptions at a time (the worker pool's size).
    pub workers: usize,
    /// Encode only as much audio context as the turn needs (much faster on short turns) rather
    /// than Whisper's fixed 30 s window.
    pub fit_context: bool,
    /// The longest turn transcribed at once, in seconds: a longer turn is transcribed in pieces
    /// of this length while the user speaks (each one a final transcript).
    pub max_turn_secs: u32,
}

impl WhisperOptions {
    /// Defaults for a model file: language auto-detected, one thread per transcription and as
    /// many transcriptions at a time as there are cores. One thread each, because whisper.cpp's
    /// threads wait for each other at every step (spinning): on a busy machine, where one of two
    /// threads is often not scheduled, two threads took 8 s where one took 0.7 s for the same
    /// 5 s turn (docs/BENCHMARKS.md, "Local speech").
    pub fn new(model: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            model: model.into(),
            language: None,
            threads: 1,
            workers: cores,
            fit_context: true,
            max_turn_secs: 28,
        }
    }
}

/// A loaded Whisper model with its worker pool (cheap to clone, shared by all calls).
#[derive(Clone)]
pub struct WhisperEngine {
    ctx: Arc<WhisperContext>,
    permits: Arc<Semaphore>,
    states: Arc<Mutex<Vec<WhisperState>>>,
    opts: Arc<WhisperOptions>,
}

impl std::fmt::Debug for WhisperEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperEngine")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl WhisperEngine {
    /// Loads the model (blocking: call it at startup, or in `spawn_blocking`).
    pub fn load(opts: WhisperOptions) -> Result<Self, LocalError> {
        whisper_rs::install_logging_hooks();
        if !opts.model.is_file() {
            return Err(LocalError::Model(format!(
                "Whisper model file {} does not exist",
                opts.model.display()
            )));
        }
        let ctx = WhisperContext::new_with_params(&opts.model, WhisperContextParameters::default())
            .map_err(|e| {
                LocalError::engine(
                    "whisper",
                    format!("cannot load {}: {e}", opts.model.display()),
                )
            })?;
        if let Some(lang) = &opts.language
            && whisper_rs::get_lang_id(lang).is_none()
        {
            return Err(LocalError::engine(
                "whisper",
                format!("unknown language `{lang}`"),
            ));
        }
        if opts.language.as_deref().is_some_and(|l| l != "en") && !ctx.is_multilingual() {
            return Err(LocalError::engine(
                "whisper",
                format!(
                    "{} is an English-only model: it cannot transcribe `{}`",
                    opts.model.display(),
                    opts.language.as_deref().unwrap_or_default()
                ),
            ));
        }
        let workers = opts.workers.max(1);
        Ok(Self {
            ctx: Arc::new(ctx),
            permits: Arc::new(Semaphore::new(workers)),
            states: Arc::new(Mutex::new(Vec::new())),
            opts: Arc::new(WhisperOptions { workers, ..opts }),
        })
    }

    /// The options the engine runs with.
    pub fn options(&self) -> &WhisperOptions {
        &self.opts
    }

    /// Transcribes 16 kHz mono samples (in [-1, 1]) on the worker pool.
    pub async fn transcribe(&self, samples: Vec<f32>) -> Result<String, LocalError> {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LocalError::engine("whisper", "the worker pool is closed"))?;
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.transcribe_blocking(&samples))
            .await
            .map_err(|e| LocalError::engine("whisper", format!("transcription task: {e}")))?
    }

    /// Transcribes on the calling thread (no pool).
    pub fn transcribe_blocking(&self, samples: &[f32]) -> Result<String, LocalError> {
        if samples.iter().all(|s| s.abs() < 1e-4) {
            return Ok(String::new());
        }
        let mut padded;
        let samples = if samples.len() < MIN_SAMPLES {
            padded = samples.to_vec();
            padded.resize(MIN_SAMPLES, 0.0);
            &padded[..]
        } else {
            samples
        };
        let pooled = self.states.lock().ok().and_then(|mut s| s.pop());
        let mut state = match pooled {
            Some(s) => s,
            None => self.ctx.create_state().map_err(|e| {
                LocalError::engine("whisper", format!("cannot create a state: {e}"))
            })?,
        };
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(i32::try_from(self.opts.threads.max(1)).unwrap_or(1));
        params.set_language(Some(self.opts.language.as_deref().unwrap_or("auto")));
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        params.set_no_context(true);
        params.set_no_timestamps(true);
        params.set_suppress_blank(true);
        params.set_suppress_nst(true);
        if self.opts.fit_context {
            params.set_audio_ctx(fitted_audio_ctx(samples.len(), self.ctx.n_audio_ctx()));
        }
        let result = state
            .full(params, samples)
            .map_err(|e| LocalError::engine("whisper", format!("transcription failed: {e}")));
        let text = result.map(|()| {
            let mut text = String::new();
            for segment in state.as_iter() {
                if let Ok(s) = segment.to_str_lossy() {
                    text.push_str(&s);
                }
            }
            clean_transcript(&text)
        });
        if let Ok(mut s) = self.states.lock()
            && s.len() < self.opts.workers
        {
            s.push(state);
        }
        text
    }
}

/// Encoder positions for a clip: 50 per second of audio plus a margin, at least 1/4 of the
/// window (very small contexts degrade accuracy), at most the model's.
fn fitted_audio_ctx(samples: usize, model_ctx: i32) -> i32 {
    let needed = (samples as u64 * 50).div_ceil(16_000) as i32 + 64;
    needed.max(model_ctx / 4).min(model_ctx)
}

/// Trims a transcript and drops what Whisper writes for non-speech (`[BLANK_AUDIO]`,
/// `(musique)`, `*rires*`).
pub fn clean_transcript(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '[' | '(' | '*' if depth == 0 => depth = 1,
            ']' | ')' | '*' if depth == 1 => depth = 0,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The Whisper speech-to-text provider: one session per call, sharing one [`WhisperEngine`].
#[derive(Debug, Clone)]
pub struct WhisperStt {
    engine: WhisperEngine,
}

impl WhisperStt {
    /// A provider on a loaded engine.
    pub fn new(engine: WhisperEngine) -> Self {
        Self { engine }
    }

    /// The engine.
    pub fn engine(&self) -> &WhisperEngine {
        &self.engine
    }
}

type Transcription = BoxFuture<'static, (Result<String, LocalError>, Bytes)>;

fn transcription(engine: &WhisperEngine, pcm: Vec<u8>) -> Transcription {
    let engine = engine.clone();
    Box::pin(async move {
        let samples = audio::s16le_to_f32(&pcm);
        let result = engine.transcribe(samples).await;
        (result, Bytes::from(pcm))
    })
}

impl SpeechToText for WhisperStt {
    fn name(&self) -> &str {
        "whisper"
    }

    fn run(&self, io: SttSessionIo) -> BoxFuture<'static, ()> {
        let engine = self.engine.clone();
        Box::pin(async move {
            let SttSessionIo {
                mut commands,
                events,
            } = io;
            let max_bytes = engine.opts.max_turn_secs.max(1) as usize * 16_000 * 2;
            let mut turn: Option<Vec<u8>> = None;
            let mut pending: FuturesOrdered<Transcription> = FuturesOrdered::new();
            loop {
                tokio::select! {
                    command = commands.recv() => match command {
                        None => break,
                        Some(SttCommand::StartTurn) => {
                            if let Some(pcm) = turn.take() {
                                pending.push_back(transcription(&engine, pcm));
                            }
                            turn = Some(Vec::new());
                        }
                        Some(SttCommand::Audio(chunk)) => {
                            let buf = turn.get_or_insert_with(Vec::new);
                            buf.extend_from_slice(&chunk);
                            if buf.len() >= max_bytes {
                                let pcm = std::mem::take(buf);
                                pending.push_back(transcription(&engine, pcm));
                            }
                        }
                        Some(SttCommand::EndTurn) => {
                            let pcm = turn.take().unwrap_or_default();
                            pending.push_back(transcription(&engine, pcm));
                        }
                        Some(SttCommand::DiscardTurn) => turn = None,
                    },
                    Some((result, pcm)) = pending.next(), if !pending.is_empty() => {
                        let event = match result {
                            Ok(text) => SttEvent::Transcript(text),
                            Err(e) => {
                                tracing::warn!(error = %e, "whisper transcription failed");
                                SttEvent::Failed {
                                    error: SttError::new("whisper", ProviderErrorKind::Protocol(e.to_string())),
                                    pending: vec![pcm],
                                }
                            }
                        };
                        if events.send(event).await.is_err() {
                            break;
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_speech_is_dropped() {
        assert_eq!(clean_transcript(" [BLANK_AUDIO]"), "");
        assert_eq!(
            clean_transcript(" (musique) Bonjour  à tous. "),
            "Bonjour à tous."
        );
        assert_eq!(clean_transcript("*rires* Oui."), "Oui.");
        assert_eq!(
            clean_transcript("Bonjour, je voudrais réserver."),
            "Bonjour, je voudrais réserver."
        );
    }

    #[test]
    fn audio_context_fits_the_clip() {
        assert_eq!(fitted_audio_ctx(16_000 * 30, 1500), 1500);
        assert_eq!(fitted_audio_ctx(16_000 * 10, 1500), 564);
        assert_eq!(fitted_audio_ctx(16_000, 1500), 375);
    }

    #[test]
    fn a_missing_model_is_a_clear_error() {
        let e = WhisperEngine::load(WhisperOptions::new("/nonexistent/ggml.bin")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ggml.bin"), "{e}");
    }
}
