//! Energy VAD shared by the STT simulators: a 20 ms frame is speech when its RMS is above the
//! threshold; an utterance starts after `min_speech` of continuous speech and ends after
//! `endpointing` of continuous non-speech (or after `max_utterance` of speech).

use crate::audio::{VAD_FRAME_S, rms};

/// A change of state found while processing audio. Times are seconds of session audio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SpeechEvent {
    /// Speech started at `time`.
    Start { time: f64 },
    /// The utterance that started at `start` ended at `end` (last speech frame).
    End { start: f64, end: f64 },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Silence { voiced_since: Option<f64> },
    Speech { start: f64, last_voiced_end: f64 },
}

/// The VAD state of one stream.
#[derive(Debug)]
pub(crate) struct SpeechTracker {
    rate: u32,
    frame_len: usize,
    threshold: f64,
    min_speech: f64,
    endpointing: f64,
    max_utterance: f64,
    buf: Vec<i16>,
    processed: u64,
    state: State,
    /// Total speech time (voiced frames inside utterances) of the current utterance.
    voiced_in_utt: f64,
    /// Time of the end of the last voiced frame (any).
    pub(crate) last_voiced: Option<f64>,
}

impl SpeechTracker {
    pub(crate) fn new(
        rate: u32,
        threshold: f64,
        min_speech: f64,
        endpointing: f64,
        max_utterance: f64,
    ) -> Self {
        Self {
            rate,
            frame_len: ((rate as f64 * VAD_FRAME_S) as usize).max(1),
            threshold,
            min_speech,
            endpointing,
            max_utterance,
            buf: Vec::new(),
            processed: 0,
            state: State::Silence { voiced_since: None },
            voiced_in_utt: 0.0,
            last_voiced: None,
        }
    }

    /// Seconds of audio analysed so far.
    pub(crate) fn now(&self) -> f64 {
        self.processed as f64 / self.rate as f64
    }

    /// Seconds of audio received so far (analysed or waiting for a full frame).
    pub(crate) fn received(&self) -> f64 {
        (self.processed + self.buf.len() as u64) as f64 / self.rate as f64
    }

    /// Start of the current utterance, if one is open.
    pub(crate) fn utterance_start(&self) -> Option<f64> {
        match self.state {
            State::Speech { start, .. } => Some(start),
            State::Silence { .. } => None,
        }
    }

    /// Speech time inside the current utterance.
    pub(crate) fn voiced_in_utterance(&self) -> f64 {
        self.voiced_in_utt
    }

    /// Silence since the last voiced frame (0 while speaking or before any speech).
    pub(crate) fn silence_run(&self) -> f64 {
        match self.last_voiced {
            Some(t) => (self.now() - t).max(0.0),
            None => self.now(),
        }
    }

    /// Ends the open utterance now (flush, stop): returns its span.
    pub(crate) fn force_end(&mut self) -> Option<SpeechEvent> {
        match self.state {
            State::Speech {
                start,
                last_voiced_end,
            } => {
                self.state = State::Silence { voiced_since: None };
                self.voiced_in_utt = 0.0;
                Some(SpeechEvent::End {
                    start,
                    end: last_voiced_end.max(start),
                })
            }
            State::Silence { .. } => None,
        }
    }

    /// Analyses samples; returns the events in order.
    pub(crate) fn push(&mut self, samples: &[i16]) -> Vec<SpeechEvent> {
        let mut events = Vec::new();
        self.buf.extend_from_slice(samples);
        let mut off = 0;
        while self.buf.len() - off >= self.frame_len {
            let frame = &self.buf[off..off + self.frame_len];
            off += self.frame_len;
            let t0 = self.now();
            self.processed += self.frame_len as u64;
            let t1 = self.now();
            let voiced = rms(frame) > self.threshold;
            if voiced {
                self.last_voiced = Some(t1);
            }
            match self.state {
                State::Silence { voiced_since } => {
                    if voiced {
                        let since = voiced_since.unwrap_or(t0);
                        if t1 - since + 1e-9 >= self.min_speech {
                            self.state = State::Speech {
                                start: since,
                                last_voiced_end: t1,
                            };
                            self.voiced_in_utt = t1 - since;
                            events.push(SpeechEvent::Start { time: since });
                        } else {
                            self.state = State::Silence {
                                voiced_since: Some(since),
                            };
                        }
                    } else {
                        self.state = State::Silence { voiced_since: None };
                    }
                }
                State::Speech {
                    start,
                    last_voiced_end,
                } => {
                    if voiced {
                        self.voiced_in_utt += t1 - t0;
                        if t1 - start >= self.max_utterance {
                            events.push(SpeechEvent::End { start, end: t1 });
                            events.push(SpeechEvent::Start { time: t1 });
                            self.state = State::Speech {
                                start: t1,
                                last_voiced_end: t1,
                            };
                            self.voiced_in_utt = 0.0;
                        } else {
                            self.state = State::Speech {
                                start,
                                last_voiced_end: t1,
                            };
                        }
                    } else if t1 - last_voiced_end + 1e-9 >= self.endpointing {
                        events.push(SpeechEvent::End {
                            start,
                            end: last_voiced_end,
                        });
                        self.state = State::Silence { voiced_since: None };
                        self.voiced_in_utt = 0.0;
                    }
                }
            }
        }
        self.buf.drain(..off);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loud(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| if i % 2 == 0 { 4000 } else { -4000 })
            .collect()
    }

    #[test]
    fn detects_utterance_after_endpointing_silence() {
        let mut t = SpeechTracker::new(16000, 300.0, 0.06, 0.3, 30.0);
        assert!(t.push(&vec![0; 3200]).is_empty());
        let ev = t.push(&loud(16000));
        assert_eq!(ev, vec![SpeechEvent::Start { time: 0.2 }]);
        assert!(t.push(&vec![0; 3200]).is_empty(), "0.2 s < endpointing");
        let ev = t.push(&vec![0; 3200]);
        assert_eq!(len_end(&ev), Some((0.2, 1.2)));
    }

    fn len_end(ev: &[SpeechEvent]) -> Option<(f64, f64)> {
        ev.iter().find_map(|e| match e {
            SpeechEvent::End { start, end } => Some((
                (start * 100.0).round() / 100.0,
                (end * 100.0).round() / 100.0,
            )),
            _ => None,
        })
    }

    #[test]
    fn short_blip_is_not_speech() {
        let mut t = SpeechTracker::new(16000, 300.0, 0.06, 0.3, 30.0);
        let mut a = loud(320);
        a.extend(vec![0; 16000]);
        assert!(t.push(&a).is_empty());
    }
}
