//! The call's outbox: frames waiting for the socket, written by the call task itself (no
//! writer task, no channel). It owns the sink, the order of frames, the watermark below which
//! audio is cancelled, the PCM aligner and the pacing of assistant audio.
//!
//! Pacing: assistant audio goes out at real time plus a lead (`CallConfig::audio_lead`): the
//! first `lead` of an answer is written at once; then, whenever the audio already sent has less
//! than half the lead left to play, a burst tops it up to the full lead (writes are batched:
//! one wake-up and one flush per burst, and a client gets nothing between bursts). The rest
//! waits here, where a barge-in drops it; the TTS is read only while less than
//! [`MAX_QUEUED_AUDIO`] waits (its own channel and connection hold the rest), so a long answer
//! does not pile up in memory.

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::protocol::{PcmAligner, WsMessage};
use crate::socket::{SocketError, SocketSink};
use crate::tts::UtteranceId;

/// Audio queued in the outbox beyond which the call stops reading the TTS (bytes: 1 s).
pub(super) const MAX_QUEUED_AUDIO: usize = 32_000;
/// How long the frames still queued at the end of a call get to be written.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Play time of PCM s16le 16 kHz mono bytes (31.25 µs a byte).
fn play_time(bytes: usize) -> Duration {
    Duration::from_nanos(bytes as u64 * 31_250)
}

/// A frame waiting for the socket.
#[derive(Debug)]
enum Outgoing {
    Frame(WsMessage),
    Audio(UtteranceId, Bytes),
}

/// See the module docs.
pub(super) struct Outbox {
    sink: SocketSink,
    queue: VecDeque<Outgoing>,
    /// Frames were sent and not flushed yet.
    unflushed: bool,
    /// The sink failed: it is never polled again.
    failed: bool,
    /// Utterances below this id are cancelled.
    watermark: UtteranceId,
    aligner: PcmAligner,
    aligner_utterance: UtteranceId,
    /// The highest utterance that produced audio (queued).
    audio_pushed: UtteranceId,
    /// The highest utterance whose audio was written.
    audio_written: UtteranceId,
    /// The first frame of a new utterance was written: (utterance, when).
    first_written: Option<(UtteranceId, Instant)>,
    /// Bytes of audio queued.
    queued_audio: usize,
    /// Pacing lead; `None`: audio goes out as fast as it comes.
    lead: Option<Duration>,
    /// When the audio written so far ends playing at the client (if it plays as it arrives).
    play_until: Option<Instant>,
}

impl Outbox {
    pub fn new(sink: SocketSink, lead: Option<Duration>) -> Self {
        Self {
            sink,
            queue: VecDeque::new(),
            unflushed: false,
            failed: false,
            watermark: 0,
            aligner: PcmAligner::default(),
            aligner_utterance: 0,
            audio_pushed: 0,
            audio_written: 0,
            first_written: None,
            queued_audio: 0,
            lead,
            play_until: None,
        }
    }

    /// Queues a frame (text, close, ...), in order with the audio.
    pub fn push_frame(&mut self, msg: WsMessage) {
        self.queue.push_back(Outgoing::Frame(msg));
    }

    /// Queues TTS audio of utterance `u` (dropped if cancelled), re-aligned to whole samples.
    /// Returns the aligned chunk when `want` (for an observer; a clone may allocate).
    pub fn push_audio(&mut self, u: UtteranceId, pcm: Bytes, want: bool) -> Option<Bytes> {
        if u < self.watermark {
            return None;
        }
        if u != self.aligner_utterance {
            self.aligner.reset();
            self.aligner_utterance = u;
        }
        let chunk = self.aligner.push_bytes(pcm)?;
        self.audio_pushed = self.audio_pushed.max(u);
        self.queued_audio += chunk.len();
        let copy = want.then(|| chunk.clone());
        self.queue.push_back(Outgoing::Audio(u, chunk));
        copy
    }

    /// Cancels every utterance below `watermark`: their queued audio is dropped now and any
    /// later audio of theirs is refused. The client stops its playback at a barge-in, so the
    /// pacing starts over.
    pub fn cancel_below(&mut self, watermark: UtteranceId) {
        self.watermark = watermark;
        self.queue
            .retain(|o| !matches!(o, Outgoing::Audio(u, _) if *u < watermark));
        self.queued_audio = self
            .queue
            .iter()
            .map(|o| match o {
                Outgoing::Audio(_, b) => b.len(),
                Outgoing::Frame(_) => 0,
            })
            .sum();
        self.aligner.reset();
        self.play_until = None;
    }

    /// Utterances below this id are cancelled.
    pub fn watermark(&self) -> UtteranceId {
        self.watermark
    }

    /// Whether utterance `u` produced any audio yet.
    pub fn has_audio(&self, u: UtteranceId) -> bool {
        self.audio_pushed >= u
    }

    /// Whether audio waits to be written.
    pub fn has_queued_audio(&self) -> bool {
        self.queued_audio > 0
    }

    /// Whether the call should read more TTS audio now.
    pub fn wants_audio(&self) -> bool {
        self.lead.is_none() || self.queued_audio < MAX_QUEUED_AUDIO
    }

    /// The first frame of a new utterance that was written since the last call: (id, when).
    pub fn take_first_written(&mut self) -> Option<(UtteranceId, Instant)> {
        self.first_written.take()
    }

    /// Whether an audio frame may be written at `now`: a burst starts when less than half the
    /// lead is left to play (`in_burst`: it goes on up to the full lead).
    fn audio_due(&self, now: Instant, in_burst: bool) -> bool {
        match (self.lead, self.play_until) {
            (Some(lead), Some(until)) => until <= now + if in_burst { lead } else { lead / 2 },
            _ => true,
        }
    }

    /// Whether [`write`](Self::write) has something to do at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        if self.failed {
            return false;
        }
        self.unflushed
            || match self.queue.front() {
                None => false,
                Some(Outgoing::Frame(_)) => true,
                Some(Outgoing::Audio(..)) => self.audio_due(now, false),
            }
    }

    /// When the next paced audio frame falls due (`None`: nothing waits for the pace).
    pub fn pace_deadline(&self, now: Instant) -> Option<Instant> {
        match (self.queue.front(), self.lead, self.play_until) {
            (Some(Outgoing::Audio(..)), Some(lead), Some(until)) if !self.audio_due(now, false) => {
                Some(until - lead / 2)
            }
            _ => None,
        }
    }

    /// Writes the frames that are due and flushes them. Cancel-safe: all state is in `self`.
    pub async fn write(&mut self) -> Result<(), SocketError> {
        std::future::poll_fn(|cx| self.poll_write(cx)).await
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        if self.failed {
            return Poll::Ready(Ok(()));
        }
        let mut in_burst = false;
        loop {
            let now = Instant::now();
            match self.queue.front() {
                None => break,
                Some(Outgoing::Audio(u, _)) => {
                    if !self.audio_due(now, in_burst) {
                        break;
                    }
                    // One new utterance per write, so each first frame is reported.
                    if *u > self.audio_written && self.first_written.is_some() {
                        break;
                    }
                }
                Some(Outgoing::Frame(_)) => {}
            }
            match self.sink.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return self.fail(e),
                Poll::Pending if self.unflushed => break,
                Poll::Pending => return Poll::Pending,
            }
            let Some(item) = self.queue.pop_front() else {
                break;
            };
            let msg = match item {
                Outgoing::Frame(m) => m,
                Outgoing::Audio(u, pcm) => {
                    self.queued_audio -= pcm.len();
                    let start = self.play_until.map_or(now, |p| p.max(now));
                    self.play_until = Some(start + play_time(pcm.len()));
                    in_burst = true;
                    if u > self.audio_written {
                        self.audio_written = u;
                        self.first_written = Some((u, now));
                    }
                    crate::telemetry::assistant_audio(pcm.len());
                    WsMessage::Binary(pcm)
                }
            };
            if let Err(e) = self.sink.as_mut().start_send(msg) {
                return self.fail(e);
            }
            self.unflushed = true;
        }
        if self.unflushed {
            match self.sink.as_mut().poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return self.fail(e),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn fail(&mut self, e: SocketError) -> Poll<Result<(), SocketError>> {
        self.failed = true;
        self.queue.clear();
        self.queued_audio = 0;
        Poll::Ready(Err(e))
    }

    /// The end of the call: writes what is queued without pacing (at most 2 s), then the close
    /// frame, if any, flushed (unless the socket failed).
    pub async fn finish(mut self, close: Option<(u16, String)>) {
        self.lead = None;
        let _ = tokio::time::timeout(FINAL_FLUSH, async {
            while !self.failed && (!self.queue.is_empty() || self.unflushed) {
                if self.write().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if let (Some((code, reason)), false) = (close, self.failed) {
            super::send_close(&mut self.sink, code, reason).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::channel_socket;
    use futures::StreamExt;

    fn frames(rx: &mut futures::channel::mpsc::Receiver<WsMessage>) -> Vec<WsMessage> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn audio_is_paced_at_real_time_plus_the_lead_and_cancel_drops_the_rest() {
        let (sink, _stream, _tx, mut rx) = channel_socket(256);
        let lead = Duration::from_millis(300);
        let mut out = Outbox::new(sink, Some(lead));
        // Ten 100 ms frames of utterance 1, then a text frame.
        for _ in 0..10 {
            out.push_audio(1, Bytes::from(vec![0u8; 3200]), false);
        }
        out.push_frame(WsMessage::Text("after".into()));
        assert!(out.is_due(Instant::now()));
        out.write().await.unwrap();
        assert_eq!(out.take_first_written().map(|f| f.0), Some(1));
        // 300 ms of lead, and the frame that starts when 300 ms are left: 4 frames.
        assert_eq!(frames(&mut rx).len(), 4);
        let now = Instant::now();
        assert!(!out.is_due(now));
        // The next burst when 150 ms (half the lead) are left to play: 250 ms from now.
        assert_eq!(
            out.pace_deadline(now),
            Some(now + Duration::from_millis(250))
        );
        tokio::time::advance(Duration::from_millis(249)).await;
        assert!(!out.is_due(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(out.is_due(Instant::now()));
        out.write().await.unwrap();
        // It tops the lead up: 150 + 2 × 100 ms ≥ 300 ms.
        assert_eq!(frames(&mut rx).len(), 2);
        // A barge-in: the four frames left are dropped, the text frame stays.
        out.cancel_below(2);
        assert!(
            out.push_audio(1, Bytes::from(vec![0u8; 3200]), true)
                .is_none()
        );
        out.write().await.unwrap();
        assert_eq!(frames(&mut rx), vec![WsMessage::Text("after".into())]);
        assert!(out.wants_audio());
        drop(out);
        assert_eq!(rx.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tts_is_not_read_beyond_a_second_of_queued_audio() {
        let (sink, _stream, _tx, _rx) = channel_socket(256);
        let mut out = Outbox::new(sink, Some(Duration::from_millis(300)));
        for _ in 0..9 {
            out.push_audio(1, Bytes::from(vec![0u8; 3200]), false);
        }
        assert!(out.wants_audio());
        out.push_audio(1, Bytes::from(vec![0u8; 3200]), false);
        assert!(!out.wants_audio());
        let mut unpaced = Outbox::new(channel_socket(4).0, None);
        for _ in 0..20 {
            unpaced.push_audio(1, Bytes::from(vec![0u8; 3200]), false);
        }
        assert!(unpaced.wants_audio());
    }
}
