//! Timed providers, the engine stack of `micdrop bench`: a speech-to-text, a chat model and a
//! text-to-speech at the trait level (no network) that add exactly the delays they are
//! configured with, so that the server's own overhead is the measured latency minus these
//! delays.

use std::sync::Arc;

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use micdrop_core::agent::{Agent, ChatChunk, ChatModel, ChatRequest};
use micdrop_core::call::{CallConfig, FloorAnswer};
use micdrop_core::stt::{SpeechToText, SttCommand, SttEvent, SttSessionIo};
use micdrop_core::time::sleep_until_exact;
use micdrop_core::tts::{TextToSpeech, TtsCommand, TtsEvent, TtsSessionIo, UtteranceId};
use micdrop_core::{AgentError, protocol::SAMPLE_RATE};
use serde::Serialize;
use tokio::time::Instant;

/// Delays the simulated providers add.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SimDelays {
    /// From `EndTurn` to the final transcript.
    pub stt_final_ms: u64,
    /// From the model request to its first token.
    pub llm_first_token_ms: u64,
    /// Between tokens.
    pub llm_token_ms: u64,
    /// From the first text of an utterance to its first audio.
    pub tts_first_audio_ms: u64,
    /// Audio per character of text, in ms (speech at ~15 characters per second ≈ 65 ms).
    pub tts_ms_per_char: u64,
    /// Wall-clock time the TTS spends per second of audio after the first frame, as in
    /// micdrop-sim's Gradium (`tts_realtime_factor`): 0 emits it all at once, 0.25 four times
    /// faster than real time (like hosted TTSs and the simulator), 1 in real time (one 100 ms
    /// frame every 100 ms: the paced outbox then has one frame to send at a time).
    pub tts_realtime_factor: f64,
}

impl SimDelays {
    /// No delay at all: the latency measured is the server's (and the client's) own.
    pub fn zero() -> Self {
        Self {
            stt_final_ms: 0,
            llm_first_token_ms: 0,
            llm_token_ms: 0,
            tts_first_audio_ms: 0,
            tts_ms_per_char: 65,
            tts_realtime_factor: 0.0,
        }
    }

    /// Delays of the order of hosted providers (streaming STT final, LLM first token, TTS
    /// first audio); assumptions, not measurements.
    pub fn realistic() -> Self {
        Self {
            stt_final_ms: 200,
            llm_first_token_ms: 350,
            llm_token_ms: 15,
            tts_first_audio_ms: 150,
            tts_ms_per_char: 65,
            tts_realtime_factor: 0.25,
        }
    }

    /// What the providers add between `StopSpeaking` and the first audio byte.
    pub fn first_audio_delay(&self) -> Duration {
        Duration::from_millis(self.stt_final_ms + self.llm_first_token_ms + self.tts_first_audio_ms)
    }
}

/// The answer the simulated model gives (its audio lasts ~3 s at 65 ms per character).
pub const ANSWER: &str = "Très bien, voici une réponse simulée pour le banc d'essai.";

/// A call config over the simulated providers (no greeting: the call starts with `SkipAnswer`).
pub fn call_config(delays: SimDelays) -> CallConfig {
    let agent = Agent::new(Arc::new(SimModel { delays }), "Banc d'essai.");
    CallConfig::new(Arc::new(SimStt { delays }))
        .agent(agent)
        .tts(Arc::new(SimTts::new(delays)))
}

async fn pause(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Transcribes every turn with audio as `tour N` after `stt_final_ms`.
#[derive(Debug)]
struct SimStt {
    delays: SimDelays,
}

impl SpeechToText for SimStt {
    fn name(&self) -> &str {
        "bench-stt"
    }

    fn run(&self, mut io: SttSessionIo) -> BoxFuture<'static, ()> {
        let delay = self.delays.stt_final_ms;
        Box::pin(async move {
            let mut chunks = 0usize;
            let mut turn = 0u64;
            let mut pending: Option<tokio::task::JoinHandle<()>> = None;
            while let Some(cmd) = io.commands.recv().await {
                match cmd {
                    SttCommand::StartTurn => chunks = 0,
                    SttCommand::Audio(_) => chunks += 1,
                    SttCommand::DiscardTurn => chunks = 0,
                    SttCommand::EndTurn => {
                        turn += 1;
                        let text = if chunks > 0 {
                            format!("tour {turn}")
                        } else {
                            String::new()
                        };
                        let events = io.events.clone();
                        let job = async move {
                            pause(delay).await;
                            let _ = events.send(SttEvent::Transcript(text)).await;
                        };
                        if delay == 0 {
                            job.await;
                        } else {
                            pending = Some(tokio::spawn(job));
                        }
                    }
                }
            }
            if let Some(p) = pending {
                p.abort();
            }
        })
    }
}

/// Answers [`ANSWER`] word by word.
#[derive(Debug)]
struct SimModel {
    delays: SimDelays,
}

impl ChatModel for SimModel {
    fn name(&self) -> &str {
        "bench-model"
    }

    fn stream(&self, _request: ChatRequest) -> BoxStream<'static, Result<ChatChunk, AgentError>> {
        let d = self.delays;
        // The words are cut once per process: the fake model costs the server's measure as
        // little as it can.
        static WORDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        let words = WORDS.get_or_init(|| {
            // Each word with the space before it (the first has none).
            ANSWER
                .split(' ')
                .enumerate()
                .map(|(i, w)| {
                    if i == 0 {
                        w.to_owned()
                    } else {
                        format!(" {w}")
                    }
                })
                .collect()
        });
        Box::pin(futures::stream::unfold(0usize, move |i| async move {
            let word = words.get(i)?.clone();
            pause(if i == 0 {
                d.llm_first_token_ms
            } else {
                d.llm_token_ms
            })
            .await;
            Some((Ok(ChatChunk::Text(word)), i + 1))
        }))
    }
}

/// Speaks `tts_ms_per_char` of audio per character, first audio `tts_first_audio_ms` after the
/// utterance's first text, then 100 ms frames at `tts_realtime_factor`.
#[derive(Debug)]
struct SimTts {
    delays: SimDelays,
    frame: Bytes,
}

impl SimTts {
    fn new(delays: SimDelays) -> Self {
        Self {
            delays,
            frame: tone_frame(),
        }
    }
}

/// Audio bytes the TTS speaks per character of text.
fn bytes_per_char(d: &SimDelays) -> usize {
    (d.tts_ms_per_char * u64::from(SAMPLE_RATE) / 1000 * 2) as usize
}

/// What a turn of the engine stack sends, for `micdrop bench --stack floor`
/// ([`micdrop_core::call::io_floor`]): the user's message, [`ANSWER`], and as many bytes of
/// the same tone as the TTS speaks for it.
pub fn floor_answer(delays: SimDelays) -> FloorAnswer {
    let len = ANSWER.chars().count() * bytes_per_char(&delays);
    let frame = tone_frame();
    let audio: Vec<u8> = frame.iter().copied().cycle().take(len).collect();
    FloorAnswer {
        user: "tour 1".into(),
        assistant: ANSWER.into(),
        audio: Bytes::from(audio),
    }
}

/// Frame length: 100 ms of PCM s16le at 16 kHz.
const FRAME_BYTES: usize = (SAMPLE_RATE / 10) as usize * 2;

struct Utterance {
    id: UtteranceId,
    /// Audio bytes still to send.
    pending: usize,
    ended: bool,
    /// When the next frame is due (set by the first text).
    next: Option<Instant>,
}

impl TextToSpeech for SimTts {
    fn name(&self) -> &str {
        "bench-tts"
    }

    fn run(&self, mut io: TtsSessionIo) -> BoxFuture<'static, ()> {
        let d = self.delays;
        let frame = self.frame.clone();
        Box::pin(async move {
            let bytes_per_char = bytes_per_char(&d);
            let mut queue: std::collections::VecDeque<Utterance> = Default::default();
            loop {
                let due = queue.front().and_then(|u| {
                    if u.pending > 0 || u.ended {
                        u.next
                    } else {
                        None
                    }
                });
                tokio::select! {
                    biased;
                    cmd = io.commands.recv() => {
                        let Some(cmd) = cmd else { return };
                        match cmd {
                            TtsCommand::Speak(id) => queue.push_back(Utterance { id, pending: 0, ended: false, next: None }),
                            TtsCommand::Text(id, text) => {
                                if let Some(u) = queue.iter_mut().find(|u| u.id == id) {
                                    u.pending += text.chars().count() * bytes_per_char;
                                    if u.next.is_none() {
                                        u.next = Some(Instant::now() + Duration::from_millis(d.tts_first_audio_ms));
                                    }
                                }
                            }
                            TtsCommand::EndText(id) => {
                                if let Some(u) = queue.iter_mut().find(|u| u.id == id) {
                                    u.ended = true;
                                    u.next.get_or_insert_with(Instant::now);
                                }
                            }
                            TtsCommand::Cancel => queue.clear(),
                        }
                    }
                    _ = sleep_until_exact(due) => {
                        // Every frame that is due, without a wake-up each.
                        let now = Instant::now();
                        while let Some(u) = queue.front_mut() {
                            if u.next.is_none_or(|next| next > now) {
                                break;
                            }
                            if u.pending > 0 {
                                let n = u.pending.min(FRAME_BYTES);
                                u.pending -= n;
                                let id = u.id;
                                if let Some(next) = u.next.as_mut() {
                                    *next += duration_of_bytes(n).mul_f64(d.tts_realtime_factor);
                                }
                                if io.events.send(TtsEvent::Audio(id, frame.slice(..n))).await.is_err() {
                                    return;
                                }
                            } else if u.ended {
                                let id = u.id;
                                queue.pop_front();
                                if io.events.send(TtsEvent::Done(id)).await.is_err() {
                                    return;
                                }
                            } else {
                                break;
                            }
                        }
                    }
                }
            }
        })
    }
}

/// 100 ms of a 220 Hz tone, PCM s16le 16 kHz (what the timed TTS speaks).
fn tone_frame() -> Bytes {
    let rate = f64::from(SAMPLE_RATE);
    let mut v = Vec::with_capacity(FRAME_BYTES);
    for i in 0..FRAME_BYTES / 2 {
        let x = (2.0 * std::f64::consts::PI * 220.0 * i as f64 / rate).sin() * 0.2 * 32767.0;
        v.extend_from_slice(&(x as i16).to_le_bytes());
    }
    Bytes::from(v)
}

/// Play time of `n` bytes of PCM s16le 16 kHz mono.
fn duration_of_bytes(n: usize) -> Duration {
    Duration::from_micros((n / 2) as u64 * 1_000_000 / u64::from(SAMPLE_RATE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realistic_delays_add_up_to_the_first_audio_delay() {
        assert_eq!(SimDelays::zero().first_audio_delay(), Duration::ZERO);
        assert_eq!(
            SimDelays::realistic().first_audio_delay(),
            Duration::from_millis(700)
        );
        assert_eq!(tone_frame().len(), FRAME_BYTES);
        assert_eq!(duration_of_bytes(FRAME_BYTES), Duration::from_millis(100));
    }

    /// When each audio frame of a 10-character utterance comes out, from its first text.
    async fn frame_times(factor: f64) -> Vec<Duration> {
        tts_frames(factor, "0123456789")
            .await
            .into_iter()
            .map(|(at, _)| at)
            .collect()
    }

    /// Each audio frame of an utterance of `text`: when it comes out (from the first text) and
    /// its length.
    async fn tts_frames(factor: f64, text: &str) -> Vec<(Duration, usize)> {
        let delays = SimDelays {
            tts_realtime_factor: factor,
            ..SimDelays::zero()
        };
        let (cmd_tx, commands) = tokio::sync::mpsc::channel(16);
        let (events, mut ev_rx) = tokio::sync::mpsc::channel(64);
        let session = tokio::spawn(SimTts::new(delays).run(TtsSessionIo { commands, events }));
        let start = Instant::now();
        cmd_tx.send(TtsCommand::Speak(1)).await.unwrap();
        cmd_tx.send(TtsCommand::Text(1, text.into())).await.unwrap();
        cmd_tx.send(TtsCommand::EndText(1)).await.unwrap();
        let mut times = Vec::new();
        while let Some(ev) = ev_rx.recv().await {
            match ev {
                TtsEvent::Audio(1, pcm) => {
                    assert!(pcm.len() <= FRAME_BYTES);
                    times.push((start.elapsed(), pcm.len()));
                }
                TtsEvent::Done(1) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        session.abort();
        times
    }

    #[tokio::test(start_paused = true)]
    async fn the_tts_produces_at_its_realtime_factor() {
        // 10 characters × 65 ms = 650 ms of audio: 7 frames (six of 100 ms and one of 50).
        let ms = |v: &[Duration]| v.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        assert_eq!(
            ms(&frame_times(1.0).await),
            [0, 100, 200, 300, 400, 500, 600]
        );
        assert_eq!(ms(&frame_times(0.25).await), [0, 25, 50, 75, 100, 125, 150]);
        assert_eq!(ms(&frame_times(0.0).await), [0; 7]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_answer_is_the_audio_the_tts_speaks_for_the_answer() {
        let spoken: usize = tts_frames(0.0, ANSWER).await.iter().map(|f| f.1).sum();
        let floor = floor_answer(SimDelays::zero());
        assert_eq!(floor.audio.len(), spoken);
        assert_eq!(spoken, 120_640, "3.77 s");
        assert_eq!(floor.audio.slice(..FRAME_BYTES), tone_frame());
        assert_eq!(floor.assistant, ANSWER);
    }

    #[tokio::test]
    async fn the_model_streams_the_answer_word_by_word() {
        use futures::StreamExt;
        let model = SimModel {
            delays: SimDelays::zero(),
        };
        let request = ChatRequest::from_conversation(&[], Vec::new());
        let chunks: Vec<String> = model
            .stream(request)
            .map(|c| match c {
                Ok(ChatChunk::Text(t)) => t,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
            .await;
        assert_eq!(chunks.concat(), ANSWER);
        assert_eq!(chunks.len(), ANSWER.split(' ').count());
        assert_eq!(chunks[1], " bien,");
    }
}
