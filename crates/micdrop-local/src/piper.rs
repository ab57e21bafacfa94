//! Piper voices (VITS models exported to ONNX), run by onnxruntime loaded at run time.
//!
//! Text is turned into IPA phonemes by `espeak-ng --ipa` (with the voice's espeak voice), the
//! phonemes into ids with the voice's `phoneme_id_map` (`^` first, `_` after each phoneme, `$`
//! last, as Piper does), and the model's audio (at the voice's rate, 22.05 kHz for `medium`
//! voices) is resampled to 16 kHz. Inference runs on tokio's blocking threads, one at a time
//! per voice; a cancelled utterance's result is dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use micdrop_core::tts::{TextToSpeech, TtsSessionIo};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::audio;
use crate::error::LocalError;
use crate::tts::{Synthesizer, run_session};

/// Options of `[tts.piper]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PiperOptions {
    /// The voice's `.onnx` file (its `.onnx.json` beside it).
    pub model: PathBuf,
    /// The voice's configuration.
    pub config: PathBuf,
    /// The onnxruntime shared library.
    pub onnxruntime: PathBuf,
    /// Speaking speed: > 1 is faster (Piper's `length_scale` is its inverse).
    pub speed: f32,
    /// Threads per synthesis.
    pub threads: usize,
    /// The `espeak-ng` program (phonemes).
    pub espeak: PathBuf,
}

#[derive(Debug, Deserialize)]
struct VoiceConfig {
    audio: AudioConfig,
    espeak: EspeakConfig,
    #[serde(default)]
    inference: InferenceConfig,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    num_speakers: u32,
}

#[derive(Debug, Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

#[derive(Debug, Deserialize)]
struct EspeakConfig {
    voice: String,
}

#[derive(Debug, Deserialize)]
struct InferenceConfig {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

struct Piper {
    session: Mutex<Session>,
    config: VoiceConfig,
    speed: f32,
    espeak: PathBuf,
}

/// The Piper text-to-speech provider.
#[derive(Clone)]
pub struct PiperTts {
    synth: Arc<Piper>,
}

impl std::fmt::Debug for PiperTts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperTts")
            .field("voice", &self.synth.config.espeak.voice)
            .field("rate", &self.synth.config.audio.sample_rate)
            .finish_non_exhaustive()
    }
}

fn ort_error(e: impl std::fmt::Display) -> LocalError {
    LocalError::engine("piper", e.to_string())
}

/// Loads onnxruntime from `library` once per process and returns its environment (later calls
/// reuse the first library).
fn onnxruntime(library: &Path) -> Result<Environment, LocalError> {
    static ENV: Mutex<Option<Environment>> = Mutex::new(None);
    let mut env = ENV
        .lock()
        .map_err(|_| ort_error("onnxruntime init lock poisoned"))?;
    if let Some(e) = env.as_ref() {
        return Ok(e.clone());
    }
    if !library.is_file() {
        return Err(LocalError::Model(format!(
            "onnxruntime library {} not found: run `micdrop models pull onnxruntime` or set ORT_DYLIB_PATH",
            library.display()
        )));
    }
    let built = ort::init_from(library)
        .map_err(|e| ort_error(format!("cannot load {}: {e}", library.display())))?
        .with_name("micdrop")
        .build()
        .map_err(|e| ort_error(format!("onnxruntime environment: {e}")))?;
    *env = Some(built.clone());
    Ok(built)
}

impl PiperTts {
    /// Loads the voice (blocking: call it at startup or in `spawn_blocking`).
    pub fn load(opts: PiperOptions) -> Result<Self, LocalError> {
        let text =
            std::fs::read_to_string(&opts.config).map_err(|e| LocalError::io(&opts.config, e))?;
        let config: VoiceConfig = serde_json::from_str(&text)
            .map_err(|e| LocalError::format(opts.config.display().to_string(), e.to_string()))?;
        if config.audio.sample_rate == 0 {
            return Err(LocalError::format(
                opts.config.display().to_string(),
                "sample rate 0",
            ));
        }
        for symbol in ["^", "_", "$"] {
            if !config.phoneme_id_map.contains_key(symbol) {
                return Err(LocalError::format(
                    opts.config.display().to_string(),
                    format!("phoneme_id_map has no `{symbol}`"),
                ));
            }
        }
        let env = onnxruntime(&opts.onnxruntime)?;
        let session = Session::builder(&env)
            .map_err(ort_error)?
            .with_intra_threads(opts.threads.max(1))
            .map_err(ort_error)?
            .commit_from_file(&opts.model)
            .map_err(|e| ort_error(format!("cannot load {}: {e}", opts.model.display())))?;
        Ok(Self {
            synth: Arc::new(Piper {
                session: Mutex::new(session),
                config,
                speed: if opts.speed > 0.0 { opts.speed } else { 1.0 },
                espeak: opts.espeak,
            }),
        })
    }

    /// Synthesizes `text` (PCM s16le 16 kHz mono).
    pub async fn synthesize(&self, text: &str) -> Result<Vec<u8>, LocalError> {
        speak(self.synth.clone(), text.to_string()).await
    }
}

/// IPA phonemes of `text` from `espeak-ng -q --ipa` (one line per clause).
async fn phonemes(espeak: &Path, voice: &str, text: &str) -> Result<String, LocalError> {
    let mut child = tokio::process::Command::new(espeak)
        .args(["-q", "--ipa", "-v", voice, "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            LocalError::engine("piper", format!("cannot run {}: {e}", espeak.display()))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| LocalError::engine("piper", format!("espeak-ng stdin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| LocalError::engine("piper", e.to_string()))?;
    if !out.status.success() {
        return Err(LocalError::engine(
            "piper",
            format!("espeak-ng: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    let clauses: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let mut ipa = clauses.join(", ");
    if let Some(end) = text
        .trim_end()
        .chars()
        .last()
        .filter(|c| matches!(c, '.' | '!' | '?'))
    {
        ipa.push(end);
    }
    Ok(ipa)
}

/// Piper's phoneme ids: `^`, then each known phoneme followed by `_`, then `$`.
fn phoneme_ids(map: &HashMap<String, Vec<i64>>, ipa: &str) -> Vec<i64> {
    let id = |s: &str| map.get(s).cloned().unwrap_or_default();
    let mut ids = id("^");
    ids.extend(id("_"));
    for c in ipa.chars() {
        if let Some(p) = map.get(c.encode_utf8(&mut [0; 4]) as &str) {
            ids.extend(p);
            ids.extend(id("_"));
        }
    }
    ids.extend(id("$"));
    ids
}

async fn speak(piper: Arc<Piper>, text: String) -> Result<Vec<u8>, LocalError> {
    let ipa = phonemes(&piper.espeak, &piper.config.espeak.voice, &text).await?;
    let ids = phoneme_ids(&piper.config.phoneme_id_map, &ipa);
    if ids.len() <= 3 {
        return Ok(Vec::new());
    }
    tokio::task::spawn_blocking(move || infer(&piper, ids))
        .await
        .map_err(|e| LocalError::engine("piper", format!("synthesis task: {e}")))?
}

fn infer(piper: &Piper, ids: Vec<i64>) -> Result<Vec<u8>, LocalError> {
    let n = ids.len();
    let inf = &piper.config.inference;
    let input = Tensor::from_array(([1usize, n], ids)).map_err(ort_error)?;
    let lengths = Tensor::from_array(([1usize], vec![n as i64])).map_err(ort_error)?;
    let scales = Tensor::from_array((
        [3usize],
        vec![inf.noise_scale, inf.length_scale / piper.speed, inf.noise_w],
    ))
    .map_err(ort_error)?;
    let mut session = piper
        .session
        .lock()
        .map_err(|_| ort_error("the voice's session lock is poisoned"))?;
    let outputs = if piper.config.num_speakers > 1 {
        let sid = Tensor::from_array(([1usize], vec![0i64])).map_err(ort_error)?;
        session.run(ort::inputs![
            "input" => input,
            "input_lengths" => lengths,
            "scales" => scales,
            "sid" => sid,
        ])
    } else {
        session.run(ort::inputs![
            "input" => input,
            "input_lengths" => lengths,
            "scales" => scales,
        ])
    }
    .map_err(ort_error)?;
    let (_, samples) = outputs[0].try_extract_tensor::<f32>().map_err(ort_error)?;
    let resampled = audio::resample(samples, piper.config.audio.sample_rate, audio::RATE)?;
    Ok(audio::to_s16le(&resampled))
}

/// The synthesizer of a session (shares the loaded voice).
struct PiperSynth(Arc<Piper>);

impl Synthesizer for PiperSynth {
    fn name(&self) -> &'static str {
        "piper"
    }

    fn synthesize(&self, text: String) -> BoxFuture<'static, Result<Vec<u8>, LocalError>> {
        Box::pin(speak(self.0.clone(), text))
    }
}

impl TextToSpeech for PiperTts {
    fn name(&self) -> &str {
        "piper"
    }

    fn run(&self, io: TtsSessionIo) -> BoxFuture<'static, ()> {
        run_session(Arc::new(PiperSynth(self.synth.clone())), io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_pipers_layout() {
        let map: HashMap<String, Vec<i64>> = [("^", 1), ("_", 0), ("$", 2), ("a", 14), ("b", 15)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), vec![v]))
            .collect();
        // Unknown symbols (here `x`) are skipped.
        assert_eq!(phoneme_ids(&map, "axb"), vec![1, 0, 14, 0, 15, 0, 2]);
    }
}
