//! Audio helpers: PCM s16le 16 kHz mono (the wire format), WAV files, resampling, synthetic
//! speech-like signals, and speech from `espeak-ng`.

use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use micdrop_core::protocol::SAMPLE_RATE;

/// Samples in one 100 ms frame at 16 kHz: the frame size of Micdrop's recorder.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE / 10) as usize;

/// An audio error: a file that cannot be read or written, a format we do not handle, a
/// synthesizer that is missing or failed.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// A file could not be read or written.
    #[error("audio file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The WAV data is not usable.
    #[error("WAV: {0}")]
    Wav(String),
    /// `espeak-ng` is missing or failed.
    #[error("espeak-ng: {0}")]
    Espeak(String),
}

/// The duration of `samples` samples at 16 kHz.
pub fn duration_of(samples: usize) -> Duration {
    Duration::from_micros(samples as u64 * 1_000_000 / u64::from(SAMPLE_RATE))
}

/// The duration of `bytes` bytes of PCM s16le at 16 kHz.
pub fn duration_of_bytes(bytes: usize) -> Duration {
    duration_of(bytes / 2)
}

/// Samples → PCM s16le bytes.
pub fn to_bytes(samples: &[i16]) -> Bytes {
    let mut v = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        v.extend_from_slice(&s.to_le_bytes());
    }
    Bytes::from(v)
}

/// PCM s16le bytes → samples (an odd trailing byte is ignored).
pub fn from_bytes(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Resamples by linear interpolation, as Micdrop's browser recorder does. Cheap and good enough
/// for speech; returns the input unchanged when the rates are equal.
pub fn resample_linear(input: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || input.is_empty() || from == 0 || to == 0 {
        return input.to_vec();
    }
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    let last = input.len() - 1;
    let mut out = Vec::with_capacity(out_len);
    for i in 0..out_len {
        let pos = i as f64 * step;
        let idx = pos as usize;
        let frac = pos - idx as f64;
        let a = f64::from(input[idx.min(last)]);
        let b = f64::from(input[(idx + 1).min(last)]);
        out.push((a + (b - a) * frac).round() as i16);
    }
    out
}

/// Level of a block of samples in dBFS (RMS; full-scale sine ≈ −3 dB; silence = −∞).
pub fn level_db(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = samples
        .iter()
        .map(|&s| {
            let x = f64::from(s) / 32768.0;
            x * x
        })
        .sum();
    let rms = (sum / samples.len() as f64).sqrt();
    if rms == 0.0 {
        f64::NEG_INFINITY
    } else {
        20.0 * rms.log10()
    }
}

/// `ms` milliseconds of digital silence.
pub fn silence(ms: u64) -> Vec<i16> {
    vec![0; (ms * u64::from(SAMPLE_RATE) / 1000) as usize]
}

/// `ms` milliseconds of a voiced, speech-like signal (a 140 Hz buzz with harmonics and a
/// 4 Hz syllable envelope), loud enough for any energy VAD (about −20 dBFS). Scripted servers
/// do not listen to it; it stands in for speech in tests and load runs.
pub fn speech_like(ms: u64) -> Vec<i16> {
    let n = (ms * u64::from(SAMPLE_RATE) / 1000) as usize;
    let rate = f64::from(SAMPLE_RATE);
    (0..n)
        .map(|i| {
            let t = i as f64 / rate;
            let envelope = 0.55 + 0.45 * (2.0 * std::f64::consts::PI * 4.0 * t).sin().abs();
            let mut x = 0.0;
            for h in 1..=4 {
                x += (2.0 * std::f64::consts::PI * 140.0 * h as f64 * t).sin() / h as f64;
            }
            (x * envelope * 0.15 * 32767.0).clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// Reads a WAV file (PCM 8/16/24/32-bit or float, any rate, any channels) as 16 kHz mono.
pub fn read_wav(path: &Path) -> Result<Vec<i16>, AudioError> {
    let data = std::fs::read(path).map_err(|source| AudioError::Io {
        path: path.display().to_string(),
        source,
    })?;
    decode_wav(&data)
}

/// Reads an audio file as 16 kHz mono: `.pcm`/`.raw` files are raw PCM s16le 16 kHz mono (the
/// wire format), anything else is read as WAV.
pub fn read_audio_file(path: &Path) -> Result<Vec<i16>, AudioError> {
    let raw = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("pcm") || e.eq_ignore_ascii_case("raw"));
    if raw {
        let data = std::fs::read(path).map_err(|source| AudioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(from_bytes(&data))
    } else {
        read_wav(path)
    }
}

/// Decodes WAV bytes as 16 kHz mono. Streamed WAVs whose header declares a wrong length (as
/// `espeak-ng --stdout` writes) are read up to the end of the data.
pub fn decode_wav(data: &[u8]) -> Result<Vec<i16>, AudioError> {
    match hound::WavReader::new(Cursor::new(data)) {
        Ok(reader) => {
            let spec = reader.spec();
            if spec.sample_format == hound::SampleFormat::Int && spec.bits_per_sample == 16 {
                // The common case, kept exact.
                return match reader
                    .into_samples::<i16>()
                    .collect::<Result<Vec<i16>, _>>()
                {
                    Ok(s) => Ok(mono_i16_16k(&s, spec.channels, spec.sample_rate)),
                    Err(_) => decode_wav_lenient(data),
                };
            }
            let samples: Result<Vec<f32>, _> = match spec.sample_format {
                hound::SampleFormat::Float => reader.into_samples::<f32>().collect(),
                hound::SampleFormat::Int => {
                    let scale = 1.0 / (1u64 << (spec.bits_per_sample.max(1) - 1)) as f32;
                    reader
                        .into_samples::<i32>()
                        .map(|s| s.map(|v| v as f32 * scale))
                        .collect()
                }
            };
            match samples {
                Ok(s) => Ok(to_mono_16k(&s, spec.channels, spec.sample_rate)),
                // A wrong declared length: fall back to the lenient reader.
                Err(_) => decode_wav_lenient(data),
            }
        }
        Err(_) => decode_wav_lenient(data),
    }
}

fn mono_i16_16k(interleaved: &[i16], channels: u16, rate: u32) -> Vec<i16> {
    let channels = usize::from(channels.max(1));
    if channels == 1 {
        return resample_linear(interleaved, rate, SAMPLE_RATE);
    }
    let mono: Vec<i16> = interleaved
        .chunks(channels)
        .map(|f| (f.iter().map(|&s| i32::from(s)).sum::<i32>() / f.len() as i32) as i16)
        .collect();
    resample_linear(&mono, rate, SAMPLE_RATE)
}

fn to_mono_16k(interleaved: &[f32], channels: u16, rate: u32) -> Vec<i16> {
    let channels = usize::from(channels.max(1));
    let mono: Vec<i16> = interleaved
        .chunks(channels)
        .map(|frame| {
            let v = frame.iter().sum::<f32>() / frame.len() as f32;
            float_to_i16(v)
        })
        .collect();
    resample_linear(&mono, rate, SAMPLE_RATE)
}

/// Float → int16 as Micdrop's recorder does (clamped, ×0x8000 for negatives, ×0x7fff else).
fn float_to_i16(v: f32) -> i16 {
    let v = v.clamp(-1.0, 1.0);
    if v < 0.0 {
        (v * 32768.0) as i16
    } else {
        (v * 32767.0) as i16
    }
}

/// A minimal RIFF reader for 16-bit PCM whose sizes may be wrong (streamed output).
fn decode_wav_lenient(data: &[u8]) -> Result<Vec<i16>, AudioError> {
    let bad = |m: &str| AudioError::Wav(m.to_owned());
    if data.len() < 12 || &data[0..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let mut pos = 12;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= data.len() {
        let id = &data[pos..pos + 4];
        let size = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]])
            as usize;
        let body = pos + 8;
        if id == b"fmt " {
            let b = data
                .get(body..body + 16)
                .ok_or_else(|| bad("truncated fmt chunk"))?;
            fmt = Some((
                u16::from_le_bytes([b[0], b[1]]),
                u16::from_le_bytes([b[2], b[3]]),
                u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                u16::from_le_bytes([b[14], b[15]]),
            ));
        } else if id == b"data" {
            let (format, channels, rate, bits) = fmt.ok_or_else(|| bad("data before fmt"))?;
            if format != 1 || bits != 16 {
                return Err(bad("only 16-bit PCM is supported in streamed WAVs"));
            }
            let end = body.saturating_add(size).min(data.len());
            return Ok(mono_i16_16k(&from_bytes(&data[body..end]), channels, rate));
        }
        pos = body.saturating_add(size + (size & 1));
    }
    Err(bad("no data chunk"))
}

/// Writes 16 kHz mono PCM s16le bytes as a WAV file.
pub fn write_wav(path: &Path, pcm: &[u8]) -> Result<(), AudioError> {
    let io = |source| AudioError::Io {
        path: path.display().to_string(),
        source,
    };
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).map_err(|e| match e {
        hound::Error::IoError(e) => io(e),
        other => AudioError::Wav(other.to_string()),
    })?;
    for s in from_bytes(pcm) {
        w.write_sample(s)
            .map_err(|e| AudioError::Wav(e.to_string()))?;
    }
    w.finalize().map_err(|e| AudioError::Wav(e.to_string()))
}

/// Speaks `text` with `espeak-ng -v <voice> --stdout` and returns 16 kHz mono samples
/// (espeak-ng produces 22 050 Hz).
pub fn espeak(text: &str, voice: &str) -> Result<Vec<i16>, AudioError> {
    let out = std::process::Command::new("espeak-ng")
        .args(["-v", voice, "--stdout", text])
        .output()
        .map_err(|e| {
            AudioError::Espeak(format!(
                "cannot run espeak-ng ({e}); install it (Debian: apt-get install espeak-ng)"
            ))
        })?;
    if !out.status.success() {
        return Err(AudioError::Espeak(format!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    decode_wav(&out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav_bytes(samples: &[i16], rate: u32, channels: u16) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut buf = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut buf, spec).unwrap();
        for s in samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
        buf.into_inner()
    }

    #[test]
    fn resampling_keeps_duration_and_shape() {
        let input: Vec<i16> = (0..22050).map(|i| ((i % 100) * 100) as i16).collect();
        let out = resample_linear(&input, 22050, 16000);
        assert_eq!(out.len(), 16000);
        // A linear ramp stays a ramp: the midpoint between two samples is interpolated.
        let ramp: Vec<i16> = (0..8).map(|i| i * 100).collect();
        assert_eq!(
            resample_linear(&ramp, 8000, 16000)[..6],
            [0, 50, 100, 150, 200, 250]
        );
        assert_eq!(resample_linear(&ramp, 16000, 16000), ramp);
    }

    #[test]
    fn wav_decoding_mixes_and_resamples() {
        // Stereo 32 kHz, left = 1000, right = 3000 → mono 2000 at 16 kHz (half the samples).
        let stereo: Vec<i16> = (0..3200).flat_map(|_| [1000i16, 3000]).collect();
        let pcm = decode_wav(&wav_bytes(&stereo, 32000, 2)).unwrap();
        assert_eq!(pcm.len(), 1600);
        assert!(
            pcm.iter().all(|&s| (s - 2000).abs() <= 1),
            "{:?}",
            &pcm[..4]
        );
    }

    #[test]
    fn streamed_wav_with_wrong_sizes_is_read() {
        let mut data = wav_bytes(&[500i16; 2205], 22050, 1);
        // espeak-ng --stdout declares huge sizes because it cannot seek back.
        data[4..8].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        data[40..44].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        let pcm = decode_wav(&data).unwrap();
        assert_eq!(pcm.len(), 1600);
        assert!(pcm.iter().all(|&s| (s - 500).abs() <= 1));
        assert!(decode_wav(b"RIFF....WAVEjunk").is_err());
        assert!(decode_wav(b"nope").is_err());
    }

    #[test]
    fn levels() {
        assert_eq!(level_db(&silence(100)), f64::NEG_INFINITY);
        let s = speech_like(1000);
        for w in s.chunks(FRAME_SAMPLES) {
            let db = level_db(w);
            assert!(db > -30.0 && db < -5.0, "speech-like window at {db} dB");
        }
        assert_eq!(from_bytes(&to_bytes(&s)), s);
        assert_eq!(duration_of_bytes(3200), Duration::from_millis(100));
    }

    #[test]
    fn write_then_read_wav() {
        let dir = std::env::temp_dir().join(format!("micdrop-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.wav");
        let s = speech_like(300);
        write_wav(&path, &to_bytes(&s)).unwrap();
        assert!(
            read_wav(&path).unwrap() == s,
            "WAV round trip changed the samples"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
