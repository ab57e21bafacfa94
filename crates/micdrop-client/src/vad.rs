//! Voice activity detection: the [`Vad`] trait (pluggable), Micdrop's energy-based
//! [`VolumeVad`] (defaults: history 5, threshold −55 dB), and the [`Recorder`] that cuts a
//! continuous source into user turns with a pre-roll, as Micdrop's browser recorder does.
//!
//! The recorder works on 100 ms windows (1600 samples at 16 kHz), the same pace as Micdrop's
//! VAD loop (`delay` = 100 ms). Speech is confirmed after two loud windows out of the last three
//! (the first one is kept as pre-roll), and ends after the whole history (5 windows, 500 ms) has
//! been quiet plus one more quiet window, as in Micdrop's `VolumeVAD`.

use std::collections::VecDeque;

use crate::audio::{FRAME_SAMPLES, level_db};

/// A transition reported by a [`Vad`] (the events of Micdrop's `VAD` class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech may have started (not confirmed yet).
    StartSpeaking,
    /// Speech is confirmed: the user turn starts.
    ConfirmSpeaking,
    /// The unconfirmed speech was noise: forget it.
    CancelSpeaking,
    /// Confirmed speech ended: the user turn ends.
    StopSpeaking,
}

/// A voice activity detector fed with consecutive 100 ms windows of 16 kHz mono audio.
///
/// Implement it to plug another detector (a neural one, for example) into the [`Recorder`].
pub trait Vad: Send {
    /// Analyses the next window and returns the transition it causes, if any.
    fn process(&mut self, window: &[i16]) -> Option<VadEvent>;
    /// Forgets everything (the VAD is paused): returns `StopSpeaking` if speech was confirmed,
    /// `CancelSpeaking` if it was not yet.
    fn reset(&mut self) -> Option<VadEvent>;
}

/// Options of [`VolumeVad`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct VolumeVadOptions {
    /// Number of windows of history (at least 3). Micdrop's default: 5.
    pub history: usize,
    /// Level above which a window is loud, in dBFS. Micdrop's default: −55.
    pub threshold_db: f64,
}

impl Default for VolumeVadOptions {
    fn default() -> Self {
        Self {
            history: 5,
            threshold_db: -55.0,
        }
    }
}

/// Micdrop's volume VAD (after hark). The level of a window is its RMS in dBFS, where the
/// browser uses the loudest bin of an FFT: the decision logic is Micdrop's, the level measure
/// is a plain energy measure.
#[derive(Debug, Clone)]
pub struct VolumeVad {
    options: VolumeVadOptions,
    history: VecDeque<bool>,
    speaking: bool,
    attempt: bool,
}

impl VolumeVad {
    /// A VAD with these options (`history` is raised to 3 if lower).
    pub fn new(options: VolumeVadOptions) -> Self {
        let history = options.history.max(3);
        Self {
            options: VolumeVadOptions { history, ..options },
            history: std::iter::repeat_n(false, history).collect(),
            speaking: false,
            attempt: false,
        }
    }
}

impl Default for VolumeVad {
    fn default() -> Self {
        Self::new(VolumeVadOptions::default())
    }
}

impl Vad for VolumeVad {
    fn process(&mut self, window: &[i16]) -> Option<VadEvent> {
        let loud = level_db(window) > self.options.threshold_db;
        let mut event = None;
        if loud {
            if !self.speaking {
                let recent = self.history.iter().rev().take(3).filter(|&&b| b).count();
                if recent >= 2 {
                    self.speaking = true;
                    self.attempt = false;
                    event = Some(VadEvent::ConfirmSpeaking);
                } else if recent == 1 {
                    self.attempt = true;
                    event = Some(VadEvent::StartSpeaking);
                }
            }
        } else if self.speaking {
            if self.history.iter().all(|&b| !b) {
                self.speaking = false;
                event = Some(VadEvent::StopSpeaking);
            }
        } else if self.attempt && self.history.back() == Some(&false) {
            self.attempt = false;
            event = Some(VadEvent::CancelSpeaking);
        }
        self.history.pop_front();
        self.history.push_back(loud);
        event
    }

    fn reset(&mut self) -> Option<VadEvent> {
        let event = if self.speaking {
            Some(VadEvent::StopSpeaking)
        } else if self.attempt {
            Some(VadEvent::CancelSpeaking)
        } else {
            None
        };
        self.speaking = false;
        self.attempt = false;
        self.history.iter_mut().for_each(|b| *b = false);
        event
    }
}

/// What the [`Recorder`] asks the client to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecorderEvent {
    /// Speech confirmed: send `StartSpeaking`.
    StartSpeaking,
    /// A frame of the user turn (pre-roll first), 100 ms at most.
    Audio(Vec<i16>),
    /// Speech ended: send `StopSpeaking`.
    StopSpeaking,
}

/// Cuts a continuous source into user turns: buffers 100 ms windows, runs the VAD, keeps one
/// window of pre-roll and the unconfirmed windows, sends them right after `StartSpeaking` when
/// speech is confirmed, and drops them when it is cancelled.
pub struct Recorder {
    vad: Box<dyn Vad>,
    buffer: Vec<i16>,
    preroll: Option<Vec<i16>>,
    pending: Vec<Vec<i16>>,
    maybe: bool,
    speaking: bool,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("buffered", &self.buffer.len())
            .field("pending", &self.pending.len())
            .field("speaking", &self.speaking)
            .finish()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new(Box::new(VolumeVad::default()))
    }
}

impl Recorder {
    /// A recorder over any VAD.
    pub fn new(vad: Box<dyn Vad>) -> Self {
        Self {
            vad,
            buffer: Vec::with_capacity(FRAME_SAMPLES * 2),
            preroll: None,
            pending: Vec::new(),
            maybe: false,
            speaking: false,
        }
    }

    /// Whether a user turn is open (speech confirmed and not ended).
    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Feeds samples (any length); appends what to send to `out`.
    pub fn push(&mut self, samples: &[i16], out: &mut Vec<RecorderEvent>) {
        self.buffer.extend_from_slice(samples);
        while self.buffer.len() >= FRAME_SAMPLES {
            let window: Vec<i16> = self.buffer.drain(..FRAME_SAMPLES).collect();
            self.window(window, out);
        }
    }

    fn window(&mut self, window: Vec<i16>, out: &mut Vec<RecorderEvent>) {
        let event = self.vad.process(&window);
        let preroll = self.preroll.replace(window.clone());
        match event {
            Some(VadEvent::StartSpeaking) => {
                self.maybe = true;
                self.pending.clear();
                self.pending.extend(preroll);
                self.pending.push(window);
            }
            Some(VadEvent::ConfirmSpeaking) => {
                if !self.maybe {
                    self.pending.clear();
                    self.pending.extend(preroll);
                }
                self.pending.push(window);
                self.maybe = false;
                self.speaking = true;
                out.push(RecorderEvent::StartSpeaking);
                out.extend(self.pending.drain(..).map(RecorderEvent::Audio));
            }
            Some(VadEvent::CancelSpeaking) => {
                self.maybe = false;
                self.pending.clear();
            }
            Some(VadEvent::StopSpeaking) => {
                self.speaking = false;
                out.push(RecorderEvent::StopSpeaking);
            }
            None if self.speaking => out.push(RecorderEvent::Audio(window)),
            None if self.maybe => self.pending.push(window),
            None => {}
        }
    }

    /// Pauses: forgets buffered audio; if a turn was open, ends it (`StopSpeaking`).
    pub fn reset(&mut self, out: &mut Vec<RecorderEvent>) {
        self.buffer.clear();
        self.pending.clear();
        self.preroll = None;
        self.maybe = false;
        if self.vad.reset() == Some(VadEvent::StopSpeaking) || self.speaking {
            out.push(RecorderEvent::StopSpeaking);
        }
        self.speaking = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{silence, speech_like};

    fn run(rec: &mut Recorder, pcm: &[i16]) -> Vec<RecorderEvent> {
        let mut out = Vec::new();
        // Odd-sized pushes: the recorder re-cuts 100 ms windows itself.
        for chunk in pcm.chunks(700) {
            rec.push(chunk, &mut out);
        }
        out
    }

    fn summary(events: &[RecorderEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                RecorderEvent::StartSpeaking => "start".to_owned(),
                RecorderEvent::StopSpeaking => "stop".to_owned(),
                RecorderEvent::Audio(a) => format!("{}", a.len()),
            })
            .collect()
    }

    #[test]
    fn volume_vad_follows_micdrop_timing() {
        let mut vad = VolumeVad::default();
        let loud = speech_like(100);
        let quiet = silence(100);
        assert_eq!(vad.process(&loud), None);
        assert_eq!(vad.process(&loud), Some(VadEvent::StartSpeaking));
        assert_eq!(vad.process(&loud), Some(VadEvent::ConfirmSpeaking));
        for _ in 0..5 {
            assert_eq!(vad.process(&quiet), None);
        }
        assert_eq!(vad.process(&quiet), Some(VadEvent::StopSpeaking));
        // A single blip is cancelled.
        assert_eq!(vad.process(&loud), None);
        assert_eq!(vad.process(&loud), Some(VadEvent::StartSpeaking));
        assert_eq!(vad.process(&quiet), None);
        assert_eq!(vad.process(&quiet), Some(VadEvent::CancelSpeaking));
        // Below −55 dBFS is silence (a −60 dB hum).
        let hum: Vec<i16> = (0..1600)
            .map(|i| if i % 2 == 0 { 33 } else { -33 })
            .collect();
        assert!(level_db(&hum) < -55.0);
        for _ in 0..5 {
            assert_eq!(vad.process(&hum), None);
        }
    }

    #[test]
    fn recorder_cuts_two_turns_with_preroll() {
        let mut pcm = silence(500);
        pcm.extend(speech_like(1000));
        pcm.extend(silence(1000));
        pcm.extend(speech_like(500));
        pcm.extend(silence(1000));
        let mut rec = Recorder::default();
        let events = run(&mut rec, &pcm);
        let s = summary(&events);
        let starts = s.iter().filter(|e| *e == "start").count();
        let stops = s.iter().filter(|e| *e == "stop").count();
        assert_eq!((starts, stops), (2, 2), "{s:?}");
        // First turn: 1000 ms of speech, confirmed at its 3rd window; the two windows before
        // are flushed right after StartSpeaking (pre-roll), then 5 quiet windows until the stop.
        let first: Vec<&String> = s.iter().skip(1).take_while(|e| *e != "stop").collect();
        assert_eq!(first.len(), 10 + 5, "{s:?}");
        assert!(first.iter().all(|e| *e == "1600"));
        assert!(!rec.is_speaking());
    }

    #[test]
    fn recorder_drops_noise_and_reset_ends_turn() {
        let mut pcm = speech_like(150);
        pcm.extend(silence(1000));
        let mut rec = Recorder::default();
        assert!(
            run(&mut rec, &pcm).is_empty(),
            "a 150 ms blip is not a turn"
        );

        let events = run(&mut rec, &speech_like(600));
        assert_eq!(events.first(), Some(&RecorderEvent::StartSpeaking));
        assert!(rec.is_speaking());
        let mut out = Vec::new();
        rec.reset(&mut out);
        assert_eq!(out, vec![RecorderEvent::StopSpeaking]);
        assert!(!rec.is_speaking());
    }
}
