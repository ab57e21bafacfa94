//! Audio helpers: sample codecs (PCM, G.711), energy, resampling, WAV headers and the speech
//! synthesis used by the TTS simulator (`espeak-ng` subprocess or a deterministic tone).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Analysis frame of the energy VAD: 20 ms.
pub(crate) const VAD_FRAME_S: f64 = 0.02;

/// RMS energy of samples (signed 16-bit scale).
pub(crate) fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| (s as f64) * (s as f64)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// Linear-interpolation resampler (mono). Good enough for a simulator.
pub(crate) fn resample(input: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || input.is_empty() || from == 0 || to == 0 {
        return input.to_vec();
    }
    let out_len = ((input.len() as u64 * to as u64) / from as u64) as usize;
    let step = from as f64 / to as f64;
    let mut out = Vec::with_capacity(out_len);
    for i in 0..out_len {
        let pos = i as f64 * step;
        let idx = pos.floor() as usize;
        let frac = pos - idx as f64;
        let a = input[idx.min(input.len() - 1)] as f64;
        let b = input[(idx + 1).min(input.len() - 1)] as f64;
        out.push((a + (b - a) * frac).round() as i16);
    }
    out
}

/// µ-law encode (G.711).
pub(crate) fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    if s > CLIP {
        s = CLIP;
    }
    s += BIAS;
    let mut exp = 7;
    let mut mask = 0x4000;
    while exp > 0 && (s & mask) == 0 {
        exp -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exp + 3)) & 0x0F;
    !((sign | (exp << 4) | mantissa) as u8)
}

/// µ-law decode (G.711).
pub(crate) fn ulaw_to_linear(u: u8) -> i16 {
    const BIAS: i32 = 0x84;
    let u = !u;
    let sign = u & 0x80;
    let exp = (u >> 4) & 7;
    let mant = (u & 0x0F) as i32;
    let s = (((mant << 3) + BIAS) << exp) - BIAS;
    (if sign != 0 { -s } else { s }) as i16
}

/// A-law encode (G.711).
pub(crate) fn linear_to_alaw(sample: i16) -> u8 {
    const SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let mut pcm = (sample as i32) >> 3;
    let mask: u8 = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let seg = SEG_END.iter().position(|&e| pcm <= e).unwrap_or(8);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let mut aval = (seg as i32) << 4;
    if seg < 2 {
        aval |= (pcm >> 1) & 0xF;
    } else {
        aval |= (pcm >> seg) & 0xF;
    }
    (aval as u8) ^ mask
}

/// A-law decode (G.711).
pub(crate) fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// Sample encodings of incoming audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SampleFormat {
    /// Unsigned 8-bit PCM (WAV convention).
    U8,
    /// Signed little-endian PCM of 16, 24 or 32 bits.
    S16,
    S24,
    S32,
    /// G.711.
    Ulaw,
    Alaw,
}

impl SampleFormat {
    pub(crate) fn bytes(self) -> usize {
        match self {
            Self::U8 | Self::Ulaw | Self::Alaw => 1,
            Self::S16 => 2,
            Self::S24 => 3,
            Self::S32 => 4,
        }
    }
}

/// Decodes interleaved bytes into mono i16 (channels averaged), keeping an incomplete trailing
/// frame for the next call.
#[derive(Debug)]
pub(crate) struct Decoder {
    pub(crate) format: SampleFormat,
    pub(crate) channels: usize,
    residual: Vec<u8>,
    /// Whether a WAV header may still come first.
    header_possible: bool,
}

impl Decoder {
    pub(crate) fn new(format: SampleFormat, channels: usize) -> Self {
        Self {
            format,
            channels: channels.max(1),
            residual: Vec::new(),
            header_possible: true,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<i16> {
        let mut data = bytes;
        if self.header_possible && self.residual.is_empty() {
            self.header_possible = false;
            if let Some(skip) = wav_data_offset(data) {
                data = &data[skip..];
            }
        }
        self.residual.extend_from_slice(data);
        let frame = self.format.bytes() * self.channels;
        let n = self.residual.len() / frame;
        let mut out = Vec::with_capacity(n);
        for f in 0..n {
            let mut acc = 0i32;
            for c in 0..self.channels {
                let o = f * frame + c * self.format.bytes();
                let b = &self.residual[o..o + self.format.bytes()];
                let v: i32 = match self.format {
                    SampleFormat::U8 => (b[0] as i32 - 128) << 8,
                    SampleFormat::S16 => i16::from_le_bytes([b[0], b[1]]) as i32,
                    SampleFormat::S24 => (i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8) >> 8,
                    SampleFormat::S32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 16,
                    SampleFormat::Ulaw => ulaw_to_linear(b[0]) as i32,
                    SampleFormat::Alaw => alaw_to_linear(b[0]) as i32,
                };
                acc += v;
            }
            out.push((acc / self.channels as i32) as i16);
        }
        self.residual.drain(..n * frame);
        out
    }
}

/// If `data` starts with a RIFF/WAVE header, the offset of the first sample.
pub(crate) fn wav_data_offset(data: &[u8]) -> Option<usize> {
    if data.len() < 12 || &data[0..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12;
    while pos + 8 <= data.len() {
        let id = &data[pos..pos + 4];
        let size = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]])
            as usize;
        if id == b"data" {
            return Some(pos + 8);
        }
        pos = pos.checked_add(8 + size + (size & 1))?;
    }
    None
}

/// A streaming WAV header (s16 mono) with "unknown" sizes, as streaming servers send.
pub(crate) fn wav_header(rate: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * 2).to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    h
}

/// Parses the WAV that `espeak-ng --stdout` writes (sizes may be bogus): (rate, samples).
fn parse_espeak_wav(data: &[u8]) -> Option<(u32, Vec<i16>)> {
    if data.len() < 44 || &data[0..4] != b"RIFF" {
        return None;
    }
    let rate = u32::from_le_bytes([data[24], data[25], data[26], data[27]]);
    let mut pos = 12;
    while pos + 8 <= data.len() {
        let id = &data[pos..pos + 4];
        let size = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]])
            as usize;
        if id == b"data" {
            let body = &data[pos + 8..];
            let samples = body
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return Some((rate, samples));
        }
        pos = pos.checked_add(8 + size.min(data.len()) + (size & 1))?;
    }
    None
}

/// Whether `espeak-ng` can be run (checked once).
pub(crate) fn espeak_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new("espeak-ng")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// Speaks `text` with `espeak-ng` (blocking: call from `spawn_blocking`), resampled to `rate`.
pub(crate) fn espeak(
    text: &str,
    voice: &str,
    speed_wpm: u32,
    rate: u32,
) -> Result<Vec<i16>, String> {
    let mut child = Command::new("espeak-ng")
        .args(["-v", voice, "-s", &speed_wpm.to_string(), "--stdout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("espeak-ng: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("espeak-ng stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("espeak-ng: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "espeak-ng failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let (src_rate, samples) = parse_espeak_wav(&out.stdout)
        .filter(|(r, _)| *r > 0)
        .ok_or_else(|| "espeak-ng wrote no WAV".to_string())?;
    Ok(resample(&samples, src_rate, rate))
}

/// Duration of the tone for a word.
pub(crate) fn tone_word_duration(word: &str) -> f64 {
    (word.chars().count() as f64 * 0.06).max(0.12)
}

/// A deterministic "voice": one tone burst per word (duration follows the word's length),
/// 40 ms pauses between words. Loud enough to be speech for the STT simulators.
pub(crate) fn tone(words: &[&str], rate: u32) -> Vec<i16> {
    let mut out = Vec::new();
    let gap = (rate as f64 * 0.04) as usize;
    for (i, w) in words.iter().enumerate() {
        let n = (tone_word_duration(w) * rate as f64) as usize;
        let fade = (rate as f64 * 0.005) as usize;
        let f0 = 180.0 + 20.0 * (i % 5) as f64;
        for k in 0..n {
            let t = k as f64 / rate as f64;
            let env = if k < fade {
                k as f64 / fade as f64
            } else if k + fade > n {
                (n - k) as f64 / fade as f64
            } else {
                1.0
            };
            let v = (2.0 * std::f64::consts::PI * f0 * t).sin() * 0.6
                + (2.0 * std::f64::consts::PI * 2.0 * f0 * t).sin() * 0.3;
            out.push((v * env * 9000.0) as i16);
        }
        out.extend(std::iter::repeat_n(0i16, gap));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_round_trips_within_quantization() {
        for s in [-32000i16, -1000, -8, 0, 7, 1000, 12345, 32000] {
            let u = ulaw_to_linear(linear_to_ulaw(s));
            let a = alaw_to_linear(linear_to_alaw(s));
            let tol = (s as i32).abs() / 16 + 16;
            assert!((u as i32 - s as i32).abs() <= tol, "ulaw {s} -> {u}");
            assert!((a as i32 - s as i32).abs() <= tol, "alaw {s} -> {a}");
        }
    }

    #[test]
    fn resample_keeps_duration() {
        let x: Vec<i16> = (0..22050).map(|i| (i % 100) as i16).collect();
        assert_eq!(resample(&x, 22050, 16000).len(), 16000);
        assert_eq!(resample(&x, 22050, 48000).len(), 48000);
    }

    #[test]
    fn decoder_skips_wav_header_and_mixes_channels() {
        let mut bytes = wav_header(16000);
        for v in [100i16, 300, -100, -300] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let mut d = Decoder::new(SampleFormat::S16, 2);
        assert_eq!(d.push(&bytes), vec![200, -200]);
        // An odd trailing byte waits for the next push.
        let mut d = Decoder::new(SampleFormat::S16, 1);
        assert_eq!(d.push(&[1]), Vec::<i16>::new());
        assert_eq!(d.push(&[1]), vec![257]);
    }

    #[test]
    fn tone_is_speech_and_follows_text_length() {
        let short = tone(&["hi"], 16000);
        let long = tone(&["hello", "there", "friend"], 16000);
        assert!(long.len() > 2 * short.len());
        assert!(rms(&long) > 1000.0);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn format() -> impl Strategy<Value = SampleFormat> {
        prop_oneof![
            Just(SampleFormat::U8),
            Just(SampleFormat::S16),
            Just(SampleFormat::S24),
            Just(SampleFormat::S32),
            Just(SampleFormat::Ulaw),
            Just(SampleFormat::Alaw),
        ]
    }

    proptest! {
        /// Any bytes, any split: no panic, and the sample count only depends on the total.
        #[test]
        fn decoder_never_panics(fmt in format(), channels in 1usize..4,
                                data in proptest::collection::vec(any::<u8>(), 0..600),
                                split in 0usize..600) {
            let split = split.min(data.len());
            let mut d = Decoder::new(fmt, channels);
            let mut n = d.push(&data[..split]).len();
            n += d.push(&data[split..]).len();
            let header = wav_data_offset(&data).filter(|_| split >= 12 || split == 0);
            if header.is_none() && !data.starts_with(b"RIFF") {
                prop_assert_eq!(n, data.len() / (fmt.bytes() * channels));
            }
        }

        #[test]
        fn wav_offset_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut riff = b"RIFF\0\0\0\0WAVE".to_vec();
            riff.extend(&data);
            let _ = wav_data_offset(&data);
            if let Some(o) = wav_data_offset(&riff) {
                prop_assert!(o <= riff.len());
            }
        }

        #[test]
        fn resample_length(len in 0usize..2000, from in 8000u32..48001, to in 8000u32..48001) {
            let x = vec![1i16; len];
            let y = resample(&x, from, to);
            prop_assert_eq!(y.len(), if from == to { len } else { (len as u64 * to as u64 / from as u64) as usize });
        }
    }
}
