//! Audio plumbing: PCM s16le helpers and a streaming resampler (rubato) for providers whose rate
//! differs from Micdrop's 16 kHz.

use bytes::Bytes;
use rubato::{FftFixedInOut, Resampler};

/// Micdrop's audio rate (both directions): PCM s16le, 16 kHz, mono.
pub const MICDROP_RATE: u32 = 16_000;

/// `ms` milliseconds of digital silence at `rate` (s16le mono).
pub fn silence(rate: u32, ms: u64) -> Bytes {
    let samples = (u64::from(rate) * ms / 1000) as usize;
    Bytes::from(vec![0u8; samples * 2])
}

/// Duration in seconds of `bytes` of s16le mono at `rate`.
pub fn duration_secs(bytes: usize, rate: u32) -> f64 {
    bytes as f64 / 2.0 / f64::from(rate.max(1))
}

/// A streaming s16le mono resampler. Feed any chunk sizes (even odd byte counts); output keeps
/// the stream's timing (the resampler's own delay is trimmed) and [`PcmResampler::flush`]
/// returns the tail so that `in_samples × to / from` samples come out in all.
pub struct PcmResampler {
    from: u32,
    to: u32,
    inner: Option<FftFixedInOut<f32>>,
    input: Vec<f32>,
    odd_byte: Option<u8>,
    delay_left: usize,
    total_in: u64,
    total_out: u64,
}

impl std::fmt::Debug for PcmResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcmResampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl PcmResampler {
    /// A resampler from `from` Hz to `to` Hz (equal rates: a pass-through).
    pub fn new(from: u32, to: u32) -> Result<Self, String> {
        if from == 0 || to == 0 {
            return Err(format!("invalid sample rates {from} → {to}"));
        }
        let inner = if from == to {
            None
        } else {
            // 10 ms of input per FFT chunk: small latency, efficient enough.
            let chunk = (from / 100).max(1) as usize;
            Some(
                FftFixedInOut::<f32>::new(from as usize, to as usize, chunk, 1)
                    .map_err(|e| e.to_string())?,
            )
        };
        let delay_left = inner.as_ref().map_or(0, |r| r.output_delay());
        Ok(Self {
            from,
            to,
            inner,
            input: Vec::new(),
            odd_byte: None,
            delay_left,
            total_in: 0,
            total_out: 0,
        })
    }

    /// Input rate.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Output rate.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Resamples a chunk; returns what is ready.
    pub fn push(&mut self, pcm: &[u8]) -> Bytes {
        let samples = self.decode(pcm);
        self.total_in += samples.len() as u64;
        if self.inner.is_none() {
            self.total_out += samples.len() as u64;
            return encode(&samples);
        }
        self.input.extend(samples);
        let mut out = Vec::new();
        self.run(&mut out, false);
        self.emit(out)
    }

    /// Returns the rest of the stream (the resampler's delay flushed out).
    pub fn flush(&mut self) -> Bytes {
        self.odd_byte = None;
        if self.inner.is_none() {
            return Bytes::new();
        }
        let mut out = Vec::new();
        self.run(&mut out, true);
        let expected = self.total_in * u64::from(self.to) / u64::from(self.from);
        // Push zeros through until the delayed tail is out.
        let mut guard = 0;
        while self.total_out + (out.len() as u64) < expected && guard < 64 {
            guard += 1;
            let Some(r) = self.inner.as_mut() else { break };
            match r.process_partial(None::<&[Vec<f32>]>, None) {
                Ok(mut o) => {
                    let chunk = o.pop().unwrap_or_default();
                    self.take_after_delay(chunk, &mut out);
                }
                Err(_) => break,
            }
        }
        let room = expected.saturating_sub(self.total_out) as usize;
        out.truncate(room);
        let bytes = self.emit(out);
        if let Some(r) = self.inner.as_mut() {
            r.reset();
            self.delay_left = r.output_delay();
        }
        self.total_in = 0;
        self.total_out = 0;
        bytes
    }

    fn run(&mut self, out: &mut Vec<f32>, partial: bool) {
        let Some(r) = self.inner.as_mut() else { return };
        loop {
            let need = r.input_frames_next();
            if self.input.len() >= need {
                let chunk: Vec<f32> = self.input.drain(..need).collect();
                match r.process(&[chunk], None) {
                    Ok(mut o) => {
                        let c = o.pop().unwrap_or_default();
                        Self::skip_delay(&mut self.delay_left, c, out);
                    }
                    Err(_) => return,
                }
            } else if partial && !self.input.is_empty() {
                let chunk: Vec<f32> = std::mem::take(&mut self.input);
                match r.process_partial(Some(&[chunk]), None) {
                    Ok(mut o) => {
                        let c = o.pop().unwrap_or_default();
                        Self::skip_delay(&mut self.delay_left, c, out);
                    }
                    Err(_) => return,
                }
            } else {
                return;
            }
        }
    }

    fn take_after_delay(&mut self, chunk: Vec<f32>, out: &mut Vec<f32>) {
        Self::skip_delay(&mut self.delay_left, chunk, out);
    }

    fn skip_delay(delay_left: &mut usize, chunk: Vec<f32>, out: &mut Vec<f32>) {
        let skip = (*delay_left).min(chunk.len());
        *delay_left -= skip;
        out.extend_from_slice(&chunk[skip..]);
    }

    fn emit(&mut self, out: Vec<f32>) -> Bytes {
        self.total_out += out.len() as u64;
        encode(&out)
    }

    fn decode(&mut self, pcm: &[u8]) -> Vec<f32> {
        let mut bytes: Vec<u8> = Vec::with_capacity(pcm.len() + 1);
        if let Some(b) = self.odd_byte.take() {
            bytes.push(b);
        }
        bytes.extend_from_slice(pcm);
        if bytes.len() % 2 == 1 {
            self.odd_byte = bytes.pop();
        }
        bytes
            .chunks_exact(2)
            .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
            .collect()
    }
}

fn encode(samples: &[f32]) -> Bytes {
    let mut out = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        let v = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f32, ms: u32) -> Vec<u8> {
        let n = rate * ms / 1000;
        let mut v = Vec::new();
        for i in 0..n {
            let s = (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin() * 0.5;
            v.extend_from_slice(&((s * 32767.0) as i16).to_le_bytes());
        }
        v
    }

    fn rms(pcm: &[u8]) -> f64 {
        let n = pcm.len() / 2;
        let sum: f64 = pcm
            .chunks_exact(2)
            .map(|c| f64::from(i16::from_le_bytes([c[0], c[1]])).powi(2))
            .sum();
        (sum / n.max(1) as f64).sqrt()
    }

    #[test]
    fn passthrough_at_equal_rates() {
        let mut r = PcmResampler::new(16_000, 16_000).unwrap();
        let a = r.push(&[1, 2, 3]);
        let b = r.push(&[4]);
        assert_eq!(&a[..], &[1, 2]);
        assert_eq!(&b[..], &[3, 4]);
    }

    #[test]
    fn resamples_24k_to_16k_with_exact_length_and_level() {
        let input = sine(24_000, 440.0, 1000);
        let mut r = PcmResampler::new(24_000, 16_000).unwrap();
        let mut out = Vec::new();
        // Odd-sized chunks, as a network would deliver them.
        for c in input.chunks(1001) {
            out.extend_from_slice(&r.push(c));
        }
        out.extend_from_slice(&r.flush());
        assert_eq!(out.len(), 16_000 * 2, "one second at 16 kHz");
        let (a, b) = (rms(&input), rms(&out[3200..out.len() - 3200]));
        assert!((a - b).abs() / a < 0.05, "level kept: {a} vs {b}");
    }

    #[test]
    fn resamples_16k_to_48k() {
        let input = sine(16_000, 300.0, 500);
        let mut r = PcmResampler::new(16_000, 48_000).unwrap();
        let mut out = r.push(&input).to_vec();
        out.extend_from_slice(&r.flush());
        assert_eq!(out.len(), 24_000 * 2);
        assert!(PcmResampler::new(0, 16_000).is_err());
    }

    #[test]
    fn silence_has_the_right_length() {
        assert_eq!(silence(16_000, 250).len(), 8000);
        assert!((duration_secs(32_000, 16_000) - 1.0).abs() < 1e-9);
    }
}
