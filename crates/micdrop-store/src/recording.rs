//! Call recordings: a stereo WAV file (user left, assistant right, 16 kHz, 16-bit) streamed to
//! disk as the call goes.
//!
//! Both sides are placed on the call's timeline (time since the recording started):
//! - a user chunk ends when it arrives (the client streams the microphone in real time), so it
//!   starts at `arrival - its length`, or right after the previous user chunk;
//! - an assistant chunk plays when it is sent, or right after the previous assistant chunk
//!   (the client queues them);
//! - user audio only flows during a user turn, and a user turn interrupts the assistant
//!   (Micdrop's barge-in), so assistant audio queued beyond the moment user audio arrives is
//!   dropped: it was never played.
//!
//! Memory stays bounded: samples older than [`FINAL_AFTER`] are final and written out; only
//! the assistant audio queued ahead of real time waits (at most [`MAX_AHEAD`]). The WAV header
//! is rewritten every second, so a killed process leaves a readable file.

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::warn;

/// Sample rate of both sides (Micdrop's PCM, both ways).
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples older than this are written out (later user chunks cannot land before it).
pub const FINAL_AFTER: Duration = Duration::from_secs(1);
/// Assistant audio queued further ahead of real time than this is dropped (logged once).
pub const MAX_AHEAD: Duration = Duration::from_secs(120);
const HEADER_EVERY: Duration = Duration::from_secs(1);

/// One side of the recording: samples from frame `start` on.
#[derive(Debug, Default)]
struct Track {
    samples: VecDeque<i16>,
    /// An odd byte left over from the previous chunk.
    carry: Option<u8>,
}

impl Track {
    fn decode(&mut self, pcm: &[u8]) -> Vec<i16> {
        let mut out = Vec::with_capacity(pcm.len() / 2 + 1);
        let mut bytes = pcm;
        if let Some(lo) = self.carry.take() {
            if let Some((&hi, rest)) = bytes.split_first() {
                out.push(i16::from_le_bytes([lo, hi]));
                bytes = rest;
            } else {
                self.carry = Some(lo);
                return out;
            }
        }
        let mut chunks = bytes.chunks_exact(2);
        out.extend(chunks.by_ref().map(|b| i16::from_le_bytes([b[0], b[1]])));
        self.carry = chunks.remainder().first().copied();
        out
    }

    /// Places `samples` at frame `at` (relative to the track's start), or right after what the
    /// track holds if that is later.
    fn place(&mut self, at: usize, samples: &[i16]) {
        if at > self.samples.len() {
            self.samples.resize(at, 0);
        }
        self.samples.extend(samples.iter().copied());
    }
}

/// A stereo WAV recording in progress.
pub struct StereoRecorder {
    path: PathBuf,
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    started: Instant,
    /// Frames already in the file.
    written: u64,
    user: Track,
    assistant: Track,
    last_header: Instant,
    dropped_ahead: bool,
}

impl std::fmt::Debug for StereoRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StereoRecorder")
            .field("path", &self.path)
            .field("written", &self.written)
            .finish()
    }
}

impl StereoRecorder {
    /// Creates the file (its directory must exist); the timeline starts now.
    pub fn create(path: &Path) -> Result<Self, hound::Error> {
        Self::create_at(path, Instant::now())
    }

    /// Creates the file with a given timeline start (for tests).
    pub fn create_at(path: &Path, started: Instant) -> Result<Self, hound::Error> {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec)?;
        Ok(Self {
            path: path.to_owned(),
            writer: Some(writer),
            started,
            written: 0,
            user: Track::default(),
            assistant: Track::default(),
            last_header: Instant::now(),
            dropped_ahead: false,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn frames_at(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.started);
        (d.as_secs_f64() * f64::from(SAMPLE_RATE)) as u64
    }

    /// A chunk of user audio (PCM s16le mono 16 kHz) that arrived now.
    pub fn user(&mut self, pcm: &[u8]) {
        self.user_at(pcm, Instant::now());
    }

    /// A chunk of user audio that arrived at `t`.
    pub fn user_at(&mut self, pcm: &[u8], t: Instant) {
        let samples = self.user.decode(pcm);
        let now = self.frames_at(t);
        let start = now.saturating_sub(samples.len() as u64);
        let at = start.saturating_sub(self.written) as usize;
        self.user.place(at, &samples);
        // The user speaks: the assistant was interrupted, what it had queued was not played.
        let now_rel = now.saturating_sub(self.written) as usize;
        if self.assistant.samples.len() > now_rel {
            self.assistant.samples.truncate(now_rel);
        }
        self.flush_until(t);
    }

    /// A chunk of assistant audio (PCM s16le mono 16 kHz) sent now.
    pub fn assistant(&mut self, pcm: &[u8]) {
        self.assistant_at(pcm, Instant::now());
    }

    /// A chunk of assistant audio sent at `t`.
    pub fn assistant_at(&mut self, pcm: &[u8], t: Instant) {
        let samples = self.assistant.decode(pcm);
        let now = self.frames_at(t);
        let at = now.saturating_sub(self.written) as usize;
        let limit = (now.saturating_sub(self.written)
            + (MAX_AHEAD.as_secs() * u64::from(SAMPLE_RATE))) as usize;
        let room = limit.saturating_sub(self.assistant.samples.len().max(at));
        if samples.len() > room {
            if !self.dropped_ahead {
                warn!(path = %self.path.display(), "recording: assistant audio too far ahead of real time, dropped");
                self.dropped_ahead = true;
            }
            self.assistant.place(at, &samples[..room]);
        } else {
            self.assistant.place(at, &samples);
        }
        self.flush_until(t);
    }

    /// Writes the frames that are final at `t`.
    fn flush_until(&mut self, t: Instant) {
        let final_frames = self
            .frames_at(t)
            .saturating_sub(FINAL_AFTER.as_secs() * u64::from(SAMPLE_RATE));
        if final_frames > self.written {
            let n = (final_frames - self.written) as usize;
            self.write_frames(n);
        }
        if self.last_header.elapsed() >= HEADER_EVERY {
            self.last_header = Instant::now();
            if let Some(w) = self.writer.as_mut() {
                if let Err(e) = w.flush() {
                    self.fail(&e);
                }
            }
        }
    }

    fn write_frames(&mut self, n: usize) {
        let Some(w) = self.writer.as_mut() else {
            // A failed recording keeps nothing in memory.
            self.user.samples.clear();
            self.assistant.samples.clear();
            return;
        };
        let mut result = Ok(());
        for _ in 0..n {
            let l = self.user.samples.pop_front().unwrap_or(0);
            let r = self.assistant.samples.pop_front().unwrap_or(0);
            result = w.write_sample(l).and_then(|()| w.write_sample(r));
            if result.is_err() {
                break;
            }
        }
        self.written += n as u64;
        if let Err(e) = result {
            self.fail(&e);
        }
    }

    fn fail(&mut self, e: &hound::Error) {
        warn!(error = %e, path = %self.path.display(), "recording failed: the rest of the call is not recorded");
        self.writer = None;
    }

    /// Writes what is left and closes the file; returns its path (None if writing failed).
    pub fn finish(mut self) -> Option<PathBuf> {
        let n = self.user.samples.len().max(self.assistant.samples.len());
        self.write_frames(n);
        let writer = self.writer.take()?;
        match writer.finalize() {
            Ok(()) => Some(self.path.clone()),
            Err(e) => {
                warn!(error = %e, path = %self.path.display(), "recording failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(value: i16, samples: usize) -> Vec<u8> {
        std::iter::repeat_n(value.to_le_bytes(), samples)
            .flatten()
            .collect()
    }

    fn read(path: &Path) -> (hound::WavSpec, Vec<(i16, i16)>) {
        let mut r = hound::WavReader::open(path).unwrap();
        let spec = r.spec();
        let s: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        (spec, s.chunks(2).map(|c| (c[0], c[1])).collect())
    }

    #[test]
    fn both_sides_on_one_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.wav");
        let t0 = Instant::now();
        let mut r = StereoRecorder::create_at(&path, t0).unwrap();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // The assistant speaks 0.5 s from t=0.1 s (sent at once, played in real time).
        r.assistant_at(&pcm(100, 8000), ms(100));
        // The user speaks 0.2 s, arriving at t=1.0 s (so from 0.8 s): the assistant was
        // already done.
        r.user_at(&pcm(7, 3200), ms(1000));
        // Then the assistant answers 2 s at t=1.5 s, and the user barges in at t=2.0 s with
        // 0.1 s of audio: the assistant's audio after 2.0 s was never played.
        r.assistant_at(&pcm(200, 32000), ms(1500));
        r.user_at(&pcm(9, 1600), ms(2000));
        let path = r.finish().unwrap();
        let (spec, frames) = read(&path);
        assert_eq!(spec.channels, 2);
        assert_eq!(spec.sample_rate, 16_000);
        let at = |s: f64| frames[(s * 16_000.0) as usize];
        assert_eq!(at(0.05), (0, 0));
        assert_eq!(at(0.15), (0, 100));
        assert_eq!(at(0.59), (0, 100));
        assert_eq!(at(0.65), (0, 0));
        assert_eq!(at(0.85), (7, 0));
        assert_eq!(at(1.2), (0, 0));
        assert_eq!(at(1.6), (0, 200));
        assert_eq!(at(1.95), (9, 200));
        // Nothing of the interrupted answer after 2.0 s.
        assert_eq!(frames.len(), 2 * 16_000);
    }

    #[test]
    fn memory_stays_bounded_and_header_is_valid_mid_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.wav");
        let t0 = Instant::now() - Duration::from_secs(60);
        let mut r = StereoRecorder::create_at(&path, t0).unwrap();
        // A minute of user audio in 100 ms chunks, in real time.
        for i in 1..=600u64 {
            r.user_at(&pcm(1, 1600), t0 + Duration::from_millis(i * 100));
            assert!(r.user.samples.len() <= 2 * 16_000, "user buffer grows");
        }
        // The header was rewritten: the file reads while still open.
        r.writer.as_mut().unwrap().flush().unwrap();
        let (_, frames) = read(&path);
        assert!(frames.len() >= 58 * 16_000, "{}", frames.len());
        drop(r);
    }

    #[test]
    fn odd_chunks_keep_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.wav");
        let t0 = Instant::now();
        let mut r = StereoRecorder::create_at(&path, t0).unwrap();
        let bytes = 1234i16.to_le_bytes();
        r.assistant_at(&bytes[..1], t0);
        r.assistant_at(&bytes[1..], t0);
        let (_, frames) = read(&r.finish().unwrap());
        assert_eq!(frames, vec![(0, 1234)]);
    }
}
