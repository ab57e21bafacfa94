//! Shared helpers of the simulator tests.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use micdrop_core::stt::{SpeechToText, SttCommand, SttEvent, SttSessionIo};
use micdrop_core::tts::{TextToSpeech, TtsCommand, TtsEvent, TtsSessionIo};
use micdrop_providers::ProvidersConfig;
use micdrop_sim::{SimHandle, SimScript, Simulators, TtsEngine};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Generous bound for anything that should happen quickly (2 shared cores).
pub const WAIT: Duration = Duration::from_secs(10);

/// Starts the simulators with zero delays, tone TTS and `transcripts`.
pub async fn sim(transcripts: &[&str], f: impl FnOnce(&mut SimScript)) -> SimHandle {
    let mut script = SimScript::default().zero_delay();
    script.tts_engine = TtsEngine::Tone;
    script.transcripts = transcripts.iter().map(|s| s.to_string()).collect();
    f(&mut script);
    Simulators::start("127.0.0.1:0".parse().unwrap(), script)
        .await
        .expect("simulators start")
}

/// The default configuration pointed at `sim`, with fast retries.
pub fn config(sim: &SimHandle) -> ProvidersConfig {
    let mut c = ProvidersConfig::default();
    c.agent.retry_delay_ms = 5;
    c.agent.max_retry_delay_ms = 20;
    c.agent.first_token_timeout_ms = 3000;
    let g = &mut c.stt.gladia;
    g.retry_delay_ms = 5;
    g.max_retry_delay_ms = 20;
    g.transcription_timeout_ms = 3000;
    g.connect_timeout_ms = 2000;
    let gs = &mut c.stt.gradium;
    gs.retry_delay_ms = 5;
    gs.max_retry_delay_ms = 20;
    gs.transcription_timeout_ms = 3000;
    gs.connect_timeout_ms = 2000;
    let t = &mut c.tts.as_mut().unwrap().gradium;
    t.retry_delay_ms = 5;
    t.max_retry_delay_ms = 20;
    t.connect_timeout_ms = 2000;
    t.audio_timeout_ms = 3000;
    c.point_to_simulators(
        &sim.gladia_base_url(),
        &sim.gradium_base_url(),
        &sim.mistral_base_url(),
    );
    c
}

/// 100 ms chunks of a loud tone (speech for the simulators' VAD).
pub fn speech(ms: u32) -> Vec<Bytes> {
    chunks(ms, |i| {
        ((2.0 * std::f32::consts::PI * 220.0 * i as f32 / 16_000.0).sin() * 8000.0) as i16
    })
}

/// 100 ms chunks of silence.
pub fn quiet(ms: u32) -> Vec<Bytes> {
    chunks(ms, |_| 0)
}

fn chunks(ms: u32, f: impl Fn(u32) -> i16) -> Vec<Bytes> {
    let samples = 16 * ms;
    let mut all = Vec::with_capacity(samples as usize * 2);
    for i in 0..samples {
        all.extend_from_slice(&f(i).to_le_bytes());
    }
    all.chunks(3200).map(Bytes::copy_from_slice).collect()
}

/// A running STT session.
pub struct Stt {
    pub tx: mpsc::Sender<SttCommand>,
    pub rx: mpsc::Receiver<SttEvent>,
    pub task: JoinHandle<()>,
}

pub fn start_stt(p: &dyn SpeechToText) -> Stt {
    let (tx, crx) = mpsc::channel(512);
    let (etx, rx) = mpsc::channel(64);
    let task = tokio::spawn(p.run(SttSessionIo {
        commands: crx,
        events: etx,
    }));
    Stt { tx, rx, task }
}

impl Stt {
    /// Plays one user turn: speech then a little silence, then `EndTurn`.
    pub async fn turn(&self, speech_ms: u32) {
        self.tx.send(SttCommand::StartTurn).await.unwrap();
        for c in speech(speech_ms).into_iter().chain(quiet(200)) {
            self.tx.send(SttCommand::Audio(c)).await.unwrap();
        }
        self.tx.send(SttCommand::EndTurn).await.unwrap();
    }

    /// The next event that is not a partial.
    pub async fn next_final(&mut self) -> SttEvent {
        loop {
            let ev = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .expect("an STT event in time")
                .expect("session alive");
            if !matches!(ev, SttEvent::Partial(_)) {
                return ev;
            }
        }
    }
}

/// A running TTS session.
pub struct Tts {
    pub tx: mpsc::Sender<TtsCommand>,
    pub rx: mpsc::Receiver<TtsEvent>,
    pub task: JoinHandle<()>,
}

pub fn start_tts(p: &dyn TextToSpeech) -> Tts {
    let (tx, crx) = mpsc::channel(1024);
    let (etx, rx) = mpsc::channel(64);
    let task = tokio::spawn(p.run(TtsSessionIo {
        commands: crx,
        events: etx,
    }));
    Tts { tx, rx, task }
}

impl Tts {
    pub async fn say(&self, id: u64, pieces: &[&str]) {
        self.tx.send(TtsCommand::Speak(id)).await.unwrap();
        for p in pieces {
            self.tx
                .send(TtsCommand::Text(id, p.to_string()))
                .await
                .unwrap();
        }
        self.tx.send(TtsCommand::EndText(id)).await.unwrap();
    }

    pub async fn next(&mut self) -> TtsEvent {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a TTS event in time")
            .expect("session alive")
    }

    /// Collects audio bytes of `id` until its `Done` (panics on `Failed`).
    pub async fn until_done(&mut self, id: u64) -> usize {
        let mut bytes = 0;
        loop {
            match self.next().await {
                TtsEvent::Audio(u, b) if u == id => bytes += b.len(),
                TtsEvent::Done(u) if u == id => return bytes,
                TtsEvent::Failed { error, .. } => panic!("TTS failed: {error}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
