//! Light callers: the cheapest client that still follows the protocol in real time, so that
//! the load generator is not the bottleneck. One task and one socket per call, no VAD, no
//! resampling, no event channel: a pre-encoded 100 ms frame (one shared buffer) is sent ten
//! times a turn, and the answer's frames are only counted.
//!
//! A turn: `StartSpeaking`, 10 × 100 ms of speech-like audio in real time, `StopSpeaking`;
//! latency = `StopSpeaking` written → first assistant audio frame. The answer is over after
//! `SkipAnswer`, or once no audio came for [`ANSWER_QUIET`] and the audio received has played
//! (as a client plays it: back to back from its arrival), whatever the server's pacing; then a
//! think time of 1 to 3 s (pseudo-random per call) before the next turn.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::Agg;

/// Frames of user speech per turn.
pub const FRAMES_PER_TURN: usize = 10;
/// Length of one user frame.
pub const FRAME: Duration = Duration::from_millis(100);
/// The answer is over when no assistant audio came for this long.
pub const ANSWER_QUIET: Duration = Duration::from_millis(400);
/// A turn without any answer for this long is an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// 100 ms of speech-like PCM s16le 16 kHz (encoded once, shared by every caller).
pub fn speech_frame() -> Bytes {
    crate::audio::to_bytes(&crate::audio::speech_like(100))
}

enum Phase {
    /// Until this instant.
    Thinking(Instant),
    /// `sent` frames of the turn sent; the next one is due at `next`.
    Speaking { sent: usize, next: Instant },
    /// `StopSpeaking` was written at `stopped`.
    Waiting {
        stopped: Instant,
        last_audio: Option<Instant>,
        /// When the audio received so far ends playing.
        played: Option<Instant>,
    },
}

/// A small xorshift for think times (no dependency, deterministic per caller).
fn think_time(state: &mut u64) -> Duration {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    Duration::from_millis(1000 + *state % 2000)
}

/// One light caller: connects (once) and plays turns until `stop`; returns when the call ends.
#[allow(clippy::too_many_arguments)]
pub(super) async fn caller(
    index: usize,
    url: String,
    params: Option<serde_json::Value>,
    frame: Bytes,
    held: Arc<AtomicUsize>,
    agg: Arc<Mutex<Agg>>,
    stop: CancellationToken,
) {
    let fail = |e: String| {
        let mut a = agg.lock().unwrap_or_else(|e| e.into_inner());
        a.errors += 1;
        if a.error_samples.len() < 5 && !a.error_samples.contains(&e) {
            a.error_samples.push(e);
        }
    };
    let ws = match tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await {
        Ok((ws, _)) => ws,
        Err(e) => return fail(format!("connect: {e}")),
    };
    held.fetch_add(1, Ordering::Relaxed);
    let (mut tx, mut rx) = ws.split();
    let mut seed = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut latencies = Vec::new();
    let (mut sent_turns, mut answered) = (0usize, 0usize);
    let mut error: Option<String> = None;
    if let Some(p) = &params {
        if let Err(e) = tx.send(Message::text(p.to_string())).await {
            error = Some(format!("send params: {e}"));
        }
    }
    let mut phase = Phase::Thinking(Instant::now() + think_time(&mut seed) / 2);
    while error.is_none() {
        let due = match &phase {
            Phase::Thinking(at) => Some(*at),
            Phase::Speaking { next, .. } => Some(*next),
            Phase::Waiting {
                stopped,
                last_audio,
                played,
            } => Some(last_audio.map_or(*stopped + ANSWER_TIMEOUT, |t| {
                (t + ANSWER_QUIET).max(played.unwrap_or(t))
            })),
        };
        tokio::select! {
            biased;
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(audio))) => {
                    if let Phase::Waiting { stopped, last_audio, played } = &mut phase {
                        let now = Instant::now();
                        if last_audio.is_none() {
                            latencies.push(now.duration_since(*stopped).as_secs_f64() * 1000.0);
                        }
                        *last_audio = Some(now);
                        *played = Some(played.unwrap_or(now).max(now) + crate::audio::duration_of_bytes(audio.len()));
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "SkipAnswer" {
                        if let Phase::Waiting { .. } = phase {
                            answered += 1;
                            phase = Phase::Thinking(Instant::now() + think_time(&mut seed));
                        }
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    if !stop.is_cancelled() {
                        error = Some(format!("closed by the server: {c:?}"));
                    }
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    error = Some(format!("socket: {e}"));
                }
                None => {
                    error = Some("the server closed the connection".into());
                }
            },
            _ = stop.cancelled(), if !matches!(phase, Phase::Speaking { .. } | Phase::Waiting { .. }) => break,
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)) => {
                let now = Instant::now();
                let r = match &mut phase {
                    Phase::Thinking(_) => {
                        if stop.is_cancelled() {
                            break;
                        }
                        sent_turns += 1;
                        phase = Phase::Speaking { sent: 0, next: now };
                        tx.send(Message::text("StartSpeaking")).await
                    }
                    Phase::Speaking { sent, next } => {
                        if *sent < FRAMES_PER_TURN {
                            *sent += 1;
                            *next += FRAME;
                            tx.send(Message::Binary(frame.clone())).await
                        } else {
                            phase = Phase::Waiting { stopped: now, last_audio: None, played: None };
                            tx.send(Message::text("StopSpeaking")).await
                        }
                    }
                    // Due once the audio received has played and was followed by silence.
                    Phase::Waiting { last_audio, .. } => {
                        if last_audio.is_some() {
                            answered += 1;
                            phase = Phase::Thinking(now + think_time(&mut seed));
                        } else {
                            error = Some("no answer within 15 s".into());
                        }
                        Ok(())
                    }
                };
                if let Err(e) = r {
                    error = Some(format!("send: {e}"));
                }
            }
        }
    }
    let _ = tx.close().await;
    held.fetch_sub(1, Ordering::Relaxed);
    {
        let mut a = agg.lock().unwrap_or_else(|e| e.into_inner());
        a.runs += 1;
        a.turns_sent += sent_turns;
        a.turns_completed += answered;
        a.latencies.extend(latencies);
    }
    if let Some(e) = error {
        agg.lock().unwrap_or_else(|e| e.into_inner()).runs_failed += 1;
        fail(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn think_times_are_between_one_and_three_seconds() {
        let mut s = 0x1234_5678_9abc_def1;
        for _ in 0..1000 {
            let t = think_time(&mut s);
            assert!(
                t >= Duration::from_secs(1) && t < Duration::from_secs(3),
                "{t:?}"
            );
        }
        assert_eq!(speech_frame().len(), 3200);
        assert_eq!(crate::audio::duration_of_bytes(speech_frame().len()), FRAME);
    }
}
