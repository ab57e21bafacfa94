//! The audio budget of a user turn: a client may send its audio at most `burst` ahead of real
//! time.
//!
//! A person speaks in real time; a client that sends 300 s of audio in 20 ms is not relaying a
//! microphone but buying transcription with someone else's credit (and filling the STT queue).
//! Each open user turn counts the audio it received against the time since it opened:
//! `received <= elapsed + burst`. The burst covers what honest clients send at once (the VAD's
//! pre-roll, audio buffered while reconnecting, network jitter). Beyond it the call is closed
//! with 1008 ("Audio faster than real time"): the audio is refused loudly, never dropped
//! silently. `micdrop call --fast` (tests, benchmarks) sends faster than real time on purpose:
//! such servers will need the check off.
//!
//! Wired into the call engine by `UserTurn` (`CallConfig::audio_burst`, `[server]
//! audio_burst_secs`; see docs/security.md).

use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::SAMPLE_RATE;

/// Default allowance ahead of real time.
pub const DEFAULT_AUDIO_BURST: Duration = Duration::from_secs(5);
/// Close code of a call that sends audio faster than real time (RFC 6455 policy violation).
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// Close reason of a call that sends audio faster than real time.
pub const AUDIO_FLOOD_REASON: &str = "Audio faster than real time";

/// Bytes of PCM per second (16 kHz, 16-bit mono).
const BYTES_PER_SECOND: u64 = SAMPLE_RATE as u64 * 2;

/// The audio budget of one open user turn.
#[derive(Debug, Clone)]
pub struct AudioBudget {
    burst: Duration,
    opened: Instant,
    bytes: u64,
}

/// Audio arrived faster than real time plus the burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} ms of audio in {} ms (burst {} ms)", received.as_millis(), elapsed.as_millis(), burst.as_millis())]
pub struct AudioFlood {
    /// Audio received in the turn.
    pub received: Duration,
    /// Time since the turn opened.
    pub elapsed: Duration,
    /// The allowance ahead of real time.
    pub burst: Duration,
}

impl AudioBudget {
    /// A budget for a turn opened at `now`.
    pub fn new(burst: Duration, now: Instant) -> Self {
        Self {
            burst,
            opened: now,
            bytes: 0,
        }
    }

    /// Counts `bytes` of PCM received at `now`; an error when the turn is now ahead of real
    /// time by more than the burst (the bytes are counted either way).
    pub fn accept(&mut self, bytes: usize, now: Instant) -> Result<(), AudioFlood> {
        self.bytes = self.bytes.saturating_add(bytes as u64);
        let received = self.received();
        let elapsed = now.saturating_duration_since(self.opened);
        if received > elapsed + self.burst {
            Err(AudioFlood {
                received,
                elapsed,
                burst: self.burst,
            })
        } else {
            Ok(())
        }
    }

    /// Audio received in the turn so far.
    pub fn received(&self) -> Duration {
        Duration::from_micros(self.bytes.saturating_mul(1_000_000) / BYTES_PER_SECOND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 ms of PCM.
    const FRAME: usize = 3200;

    #[test]
    fn real_time_audio_is_always_accepted() {
        let t0 = Instant::now();
        let mut b = AudioBudget::new(Duration::from_secs(5), t0);
        // Ten minutes of 100 ms frames, each on time.
        for i in 0..6000u64 {
            let now = t0 + Duration::from_millis(100 * i);
            assert!(b.accept(FRAME, now).is_ok(), "frame {i}");
        }
        assert_eq!(b.received(), Duration::from_secs(600));
    }

    #[test]
    fn a_burst_is_accepted_then_a_flood_is_refused() {
        let t0 = Instant::now();
        let mut b = AudioBudget::new(Duration::from_secs(5), t0);
        // 5 s at once (pre-roll, reconnection buffer): fine.
        for _ in 0..50 {
            assert!(b.accept(FRAME, t0).is_ok());
        }
        // One frame more at the same instant: refused.
        let flood = b.accept(FRAME, t0).unwrap_err();
        assert_eq!(flood.received, Duration::from_millis(5100));
        assert_eq!(flood.elapsed, Duration::ZERO);
        assert_eq!(
            flood.to_string(),
            "5100 ms of audio in 0 ms (burst 5000 ms)"
        );
    }

    #[test]
    fn time_refills_the_allowance() {
        let t0 = Instant::now();
        let mut b = AudioBudget::new(Duration::from_secs(1), t0);
        for _ in 0..10 {
            assert!(b.accept(FRAME, t0).is_ok());
        }
        assert!(b.accept(FRAME, t0).is_err());
        // 2 s later: 1.1 s received, 2 s elapsed + 1 s burst: room for 1.9 s more.
        let later = t0 + Duration::from_secs(2);
        for _ in 0..19 {
            assert!(b.accept(FRAME, later).is_ok());
        }
        assert!(b.accept(FRAME, later).is_err());
    }

    #[test]
    fn the_300_second_flood_of_the_finding_is_refused_within_the_burst() {
        let t0 = Instant::now();
        let mut b = AudioBudget::new(DEFAULT_AUDIO_BURST, t0);
        // 300 s of audio in 20 ms: refused after ~5 s of it.
        let mut accepted = 0;
        for i in 0..3000u64 {
            let now = t0 + Duration::from_micros(i * 20_000 / 3000);
            if b.accept(FRAME, now).is_err() {
                break;
            }
            accepted += 1;
        }
        assert_eq!(accepted, 50);
    }

    #[test]
    fn odd_sizes_and_overflow_do_not_panic() {
        let t0 = Instant::now();
        let mut b = AudioBudget::new(Duration::ZERO, t0);
        assert!(b.accept(0, t0).is_ok());
        assert!(b.accept(1, t0 + Duration::from_millis(1)).is_ok());
        assert!(b.accept(usize::MAX, t0).is_err());
        assert!(b.accept(usize::MAX, t0).is_err());
    }
}
