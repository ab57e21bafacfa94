//! Text-to-speech with the `espeak-ng` program (Debian package `espeak-ng`): always available,
//! many languages, robotic but intelligible. Its 22.05 kHz output is resampled to 16 kHz.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use futures::future::BoxFuture;
use micdrop_core::tts::{TextToSpeech, TtsSessionIo};
use tokio::io::AsyncWriteExt;

use crate::audio;
use crate::error::LocalError;
use crate::tts::{Synthesizer, run_session};

/// Options of `[tts.espeak]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspeakOptions {
    /// The espeak-ng voice (`fr`, `en-us`, `de`...; `espeak-ng --voices` lists them).
    pub voice: String,
    /// Words per minute (espeak-ng's default is 175).
    pub speed_wpm: u32,
    /// Pitch, 0 to 99 (espeak-ng's default is 50).
    pub pitch: u32,
    /// The program (`espeak-ng`, found on the `PATH`).
    pub program: PathBuf,
}

impl Default for EspeakOptions {
    fn default() -> Self {
        Self {
            voice: "fr".into(),
            speed_wpm: 165,
            pitch: 50,
            program: PathBuf::from("espeak-ng"),
        }
    }
}

/// The espeak-ng text-to-speech provider.
#[derive(Debug, Clone)]
pub struct EspeakTts {
    synth: Arc<Espeak>,
}

#[derive(Debug)]
struct Espeak {
    opts: EspeakOptions,
}

impl EspeakTts {
    /// A provider; fails if the program cannot be run or the voice does not exist.
    pub async fn new(opts: EspeakOptions) -> Result<Self, LocalError> {
        let synth = Espeak { opts };
        // The voice must exist (espeak-ng silently falls back to its default voice otherwise),
        // and a short word proves the program works: errors show at start, not in a call.
        synth.check_voice().await?;
        synth.speak("ok").await?;
        Ok(Self {
            synth: Arc::new(synth),
        })
    }

    /// A provider, checked with blocking calls (for synchronous configuration code at start):
    /// fails if the program cannot be run or the voice does not exist.
    pub fn new_blocking(opts: EspeakOptions) -> Result<Self, LocalError> {
        let out = std::process::Command::new(&opts.program)
            .arg("--voices")
            .output()
            .map_err(|e| {
                LocalError::engine(
                    "espeak-ng",
                    format!("cannot run {}: {e}", opts.program.display()),
                )
            })?;
        let synth = Espeak { opts };
        synth.voice_listed(&String::from_utf8_lossy(&out.stdout))?;
        Ok(Self {
            synth: Arc::new(synth),
        })
    }

    /// Synthesizes `text` (PCM s16le 16 kHz mono).
    pub async fn synthesize(&self, text: &str) -> Result<Vec<u8>, LocalError> {
        self.synth.speak(text).await
    }
}

impl Espeak {
    /// Checks the voice against `espeak-ng --voices` (language codes such as `fr`, `fr-fr`,
    /// `en-us`; voice names; file names such as `roa/fr`; a `+variant` suffix is allowed).
    async fn check_voice(&self) -> Result<(), LocalError> {
        let out = tokio::process::Command::new(&self.opts.program)
            .arg("--voices")
            .output()
            .await
            .map_err(|e| {
                LocalError::engine(
                    "espeak-ng",
                    format!("cannot run {}: {e}", self.opts.program.display()),
                )
            })?;
        self.voice_listed(&String::from_utf8_lossy(&out.stdout))
    }

    /// Whether the voice is in the output of `espeak-ng --voices`.
    fn voice_listed(&self, listing: &str) -> Result<(), LocalError> {
        let wanted = self
            .opts
            .voice
            .split('+')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let listing = listing.to_ascii_lowercase();
        let known = listing.lines().skip(1).any(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let mut names = cols
                .iter()
                .skip(1)
                .take(4)
                .map(|c| c.to_string())
                .collect::<Vec<_>>();
            if let Some(file) = cols.get(4) {
                names.push(file.rsplit('/').next().unwrap_or(file).to_string());
            }
            // "(fr 5)": the voice also answers to its short language code.
            if let Some(pos) = cols.iter().position(|c| c.starts_with('(')) {
                names.push(cols[pos].trim_start_matches('(').to_string());
            }
            names.contains(&wanted)
        });
        if known {
            Ok(())
        } else {
            Err(LocalError::engine(
                "espeak-ng",
                format!(
                    "voice `{}` does not exist (espeak-ng --voices lists them)",
                    self.opts.voice
                ),
            ))
        }
    }

    /// Runs espeak-ng, text on stdin, WAV into a temporary file (its header then has the right
    /// sizes); the process is killed if the future is dropped.
    async fn speak(&self, text: &str) -> Result<Vec<u8>, LocalError> {
        let dir = tempfile::tempdir().map_err(|e| LocalError::io(std::env::temp_dir(), e))?;
        let wav_path = dir.path().join("speech.wav");
        let mut child = tokio::process::Command::new(&self.opts.program)
            .arg("-v")
            .arg(&self.opts.voice)
            .arg("-s")
            .arg(self.opts.speed_wpm.to_string())
            .arg("-p")
            .arg(self.opts.pitch.min(99).to_string())
            .arg("-w")
            .arg(&wav_path)
            .arg("--stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                LocalError::engine(
                    "espeak-ng",
                    format!("cannot run {}: {e}", self.opts.program.display()),
                )
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|e| LocalError::engine("espeak-ng", format!("stdin: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| LocalError::engine("espeak-ng", e.to_string()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("voice does not exist") {
            return Err(LocalError::engine(
                "espeak-ng",
                format!("voice `{}`: {}", self.opts.voice, stderr.trim()),
            ));
        }
        let wav = tokio::fs::read(&wav_path)
            .await
            .map_err(|e| LocalError::io(&wav_path, e))?;
        let (samples, rate) = audio::decode_wav(&wav)?;
        let resampled = audio::resample(&audio::to_f32(&samples), rate, audio::RATE)?;
        Ok(audio::to_s16le(&resampled))
    }
}

impl Synthesizer for Espeak {
    fn name(&self) -> &'static str {
        "espeak"
    }

    fn synthesize(&self, text: String) -> BoxFuture<'static, Result<Vec<u8>, LocalError>> {
        let this = Espeak {
            opts: self.opts.clone(),
        };
        Box::pin(async move { this.speak(&text).await })
    }
}

impl TextToSpeech for EspeakTts {
    fn name(&self) -> &str {
        "espeak"
    }

    fn run(&self, io: TtsSessionIo) -> BoxFuture<'static, ()> {
        run_session(self.synth.clone(), io)
    }
}
