//! The on-premise providers of micdrop-local in the registry: `[stt] provider = "whisper"`,
//! `[tts] provider = "espeak" | "piper"`. In-process: no key, no endpoint (docs/local.md).

use std::sync::Arc;

use micdrop_core::stt::SpeechToText;
use micdrop_core::tts::TextToSpeech;
use micdrop_local::models::ModelsDir;
use micdrop_local::{EspeakOptions, EspeakTts, WhisperEngine, WhisperOptions, WhisperStt};
use serde::Deserialize;
use url::Url;

use crate::config::{BuildContext, ConfigError, KeyNeed, ProviderSection, SttSection, TtsSection};

/// `[stt.whisper]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhisperConfig {
    /// A pulled model (`base`, `tiny.en`, `whisper-small`) or a path to a ggml file.
    pub model: String,
    /// Spoken language (`fr`, `en`...), or `auto` to detect it per turn.
    pub language: String,
    /// Threads per transcription (default: 1, see `WhisperOptions::new`).
    pub threads: Option<usize>,
    /// Transcriptions at a time (default: the number of cores).
    pub workers: Option<usize>,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        Self {
            model: "base".into(),
            language: "fr".into(),
            threads: None,
            workers: None,
        }
    }
}

impl ProviderSection for WhisperConfig {
    fn key_need(&self) -> Option<KeyNeed> {
        None
    }
    fn endpoints(&self) -> Vec<Url> {
        Vec::new()
    }
}

impl SttSection for WhisperConfig {
    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn SpeechToText>, ConfigError> {
        let err = |e: micdrop_local::LocalError| ConfigError::invalid(cx.label, e.to_string());
        let path = ModelsDir::from_env()
            .whisper_model(&self.model)
            .map_err(err)?;
        let mut opts = WhisperOptions::new(path);
        opts.language = Some(self.language.clone()).filter(|l| l != "auto" && !l.is_empty());
        if let Some(t) = self.threads {
            opts.threads = t.max(1);
        }
        if let Some(w) = self.workers {
            opts.workers = w.max(1);
        }
        let engine = WhisperEngine::load(opts).map_err(err)?;
        Ok(Arc::new(WhisperStt::new(engine)))
    }
}

/// `[tts.espeak]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EspeakConfig {
    /// The espeak-ng voice (`fr`, `en-us`...).
    pub voice: String,
    /// Words per minute.
    pub speed_wpm: u32,
    /// Pitch, 0 to 99.
    pub pitch: u32,
}

impl Default for EspeakConfig {
    fn default() -> Self {
        let d = EspeakOptions::default();
        Self {
            voice: d.voice,
            speed_wpm: d.speed_wpm,
            pitch: d.pitch,
        }
    }
}

impl ProviderSection for EspeakConfig {
    fn key_need(&self) -> Option<KeyNeed> {
        None
    }
    fn endpoints(&self) -> Vec<Url> {
        Vec::new()
    }
}

impl TtsSection for EspeakConfig {
    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn TextToSpeech>, ConfigError> {
        let tts = EspeakTts::new_blocking(EspeakOptions {
            voice: self.voice.clone(),
            speed_wpm: self.speed_wpm,
            pitch: self.pitch,
            ..EspeakOptions::default()
        })
        .map_err(|e| ConfigError::invalid(cx.label, e.to_string()))?;
        Ok(Arc::new(tts))
    }
}

/// `[tts.piper]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PiperConfig {
    /// A pulled voice (`en-joe` for `piper-en-joe`) or a path to a `.onnx` file.
    pub voice: String,
    /// Speaking speed (> 1: faster).
    pub speed: f32,
    /// Threads per synthesis.
    pub threads: usize,
}

impl Default for PiperConfig {
    fn default() -> Self {
        Self {
            voice: "en-joe".into(),
            speed: 1.0,
            threads: 1,
        }
    }
}

impl ProviderSection for PiperConfig {
    fn key_need(&self) -> Option<KeyNeed> {
        None
    }
    fn endpoints(&self) -> Vec<Url> {
        Vec::new()
    }
}

impl TtsSection for PiperConfig {
    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn TextToSpeech>, ConfigError> {
        let err = |e: micdrop_local::LocalError| ConfigError::invalid(cx.label, e.to_string());
        let models = ModelsDir::from_env();
        let (model, config) = models.piper_voice(&self.voice).map_err(err)?;
        let onnxruntime = models.onnxruntime().map_err(err)?;
        let tts = micdrop_local::PiperTts::load(micdrop_local::PiperOptions {
            model,
            config,
            onnxruntime,
            speed: self.speed,
            threads: self.threads.max(1),
            espeak: "espeak-ng".into(),
        })
        .map_err(err)?;
        Ok(Arc::new(tts))
    }
}
