//! Audio helpers of the local engines: WAV decoding, whole-clip resampling, sample formats.

use rubato::{FftFixedIn, Resampler};

use crate::error::LocalError;

/// Micdrop's audio rate.
pub const RATE: u32 = 16_000;

/// Decodes a 16-bit PCM WAV (espeak-ng's output) into mono samples and its rate.
pub fn decode_wav(bytes: &[u8]) -> Result<(Vec<i16>, u32), LocalError> {
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes))
        .map_err(|e| LocalError::format("WAV", e.to_string()))?;
    let spec = reader.spec();
    if spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
        return Err(LocalError::format(
            "WAV",
            format!(
                "{}-bit {:?} (16-bit PCM expected)",
                spec.bits_per_sample, spec.sample_format
            ),
        ));
    }
    let channels = usize::from(spec.channels.max(1));
    let samples: Vec<i16> = reader
        .into_samples::<i16>()
        .collect::<Result<_, _>>()
        .map_err(|e| LocalError::format("WAV", e.to_string()))?;
    let mono = if channels == 1 {
        samples
    } else {
        samples
            .chunks(channels)
            .map(|c| (c.iter().map(|s| i32::from(*s)).sum::<i32>() / c.len() as i32) as i16)
            .collect()
    };
    Ok((mono, spec.sample_rate))
}

/// Resamples a whole clip from `from` Hz to `to` Hz (FFT resampler; the filter's delay is
/// trimmed so the output is aligned and `len × to / from` samples long).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, LocalError> {
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    if from == 0 || to == 0 {
        return Err(LocalError::format(
            "audio",
            format!("sample rates {from} → {to}"),
        ));
    }
    let fail = |e: String| LocalError::engine("resampler", e);
    let chunk = 1024;
    let mut r = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 2, 1)
        .map_err(|e| fail(e.to_string()))?;
    let expected = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let delay = r.output_delay();
    let mut out: Vec<f32> = Vec::with_capacity(expected + delay + chunk);
    let mut pos = 0;
    while pos + chunk <= samples.len() {
        let o = r
            .process(&[&samples[pos..pos + chunk]], None)
            .map_err(|e| fail(e.to_string()))?;
        out.extend_from_slice(&o[0]);
        pos += chunk;
    }
    if pos < samples.len() {
        let o = r
            .process_partial(Some(&[&samples[pos..]]), None)
            .map_err(|e| fail(e.to_string()))?;
        out.extend_from_slice(&o[0]);
    }
    let mut guard = 0;
    while out.len() < expected + delay && guard < 16 {
        guard += 1;
        let o = r
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| fail(e.to_string()))?;
        out.extend_from_slice(&o[0]);
    }
    let end = (delay + expected).min(out.len());
    Ok(out[delay.min(end)..end].to_vec())
}

/// i16 samples as f32 in [-1, 1].
pub fn to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|s| f32::from(*s) / 32768.0).collect()
}

/// f32 samples as s16le bytes (clamped).
pub fn to_s16le(samples: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// s16le bytes as f32 samples (an odd trailing byte is ignored).
pub fn s16le_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resample_keeps_length_and_tone() {
        // 1 s of 440 Hz at 22.05 kHz → 16 kHz: 16000 samples, same frequency (zero crossings).
        let from = 22_050;
        let tone: Vec<f32> = (0..from)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / from as f32).sin() * 0.5)
            .collect();
        let out = resample(&tone, from, RATE).unwrap();
        assert_eq!(out.len(), 16_000);
        let crossings = out.windows(2).filter(|w| w[0] <= 0.0 && w[1] > 0.0).count();
        assert!(
            (438..=442).contains(&crossings),
            "{crossings} upward crossings"
        );
        let peak = out[1000..15000].iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((0.45..0.55).contains(&peak), "peak {peak}");
    }

    #[test]
    fn wav_round_trip_and_errors() {
        let mut buf = Vec::new();
        {
            let spec = hound::WavSpec {
                channels: 2,
                sample_rate: 22_050,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut w = hound::WavWriter::new(std::io::Cursor::new(&mut buf), spec).unwrap();
            for s in [100i16, 300, -100, -300] {
                w.write_sample(s).unwrap();
            }
            w.finalize().unwrap();
        }
        let (mono, rate) = decode_wav(&buf).unwrap();
        assert_eq!(rate, 22_050);
        assert_eq!(mono, vec![200, -200]);
        assert!(decode_wav(b"RIFF garbage").is_err());
    }
}
