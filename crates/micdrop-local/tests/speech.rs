//! Real speech: espeak-ng speaks, Whisper transcribes (models from the cache, pulled by
//! `scripts/test`), through the engines and through the providers' sessions.

mod common;

use std::time::Duration;

use bytes::Bytes;
use micdrop_core::stt::{SpeechToText, SttCommand, SttEvent, SttSessionIo};
use micdrop_core::tts::{TextToSpeech, TtsCommand, TtsEvent, TtsSessionIo};
use micdrop_local::{EspeakOptions, EspeakTts, WhisperEngine, WhisperOptions, WhisperStt};
use tokio::sync::mpsc;

const FRENCH: &str = "Bonjour, je voudrais réserver une table pour deux personnes ce soir.";
/// Key words (Whisper's spelling of espeak's "réserver" varies: it is not one of them).
const FRENCH_WORDS: &[&str] = &["bonjour", "voudrais", "table", "deux", "personnes", "soir"];

/// espeak-ng at 130 words per minute: its robotic voice is understood best when slow.
async fn espeak(voice: &str) -> EspeakTts {
    EspeakTts::new(EspeakOptions {
        voice: voice.into(),
        speed_wpm: 130,
        ..Default::default()
    })
    .await
    .expect("espeak-ng (scripts/deps installs it)")
}

fn whisper(model: &str, language: &str, workers: usize) -> WhisperEngine {
    let mut opts = WhisperOptions::new(common::whisper_model(model));
    opts.language = Some(language.into());
    opts.workers = workers;
    WhisperEngine::load(opts).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whisper_base_understands_french_spoken_by_espeak() {
    let tts = espeak("fr").await;
    let pcm = tts.synthesize(FRENCH).await.unwrap();
    // 16 kHz s16le: a sentence of this length lasts 3 to 8 s.
    let secs = pcm.len() as f64 / 32_000.0;
    assert!((3.0..8.0).contains(&secs), "{secs} s of speech");
    let engine = whisper("base", "fr", 1);
    let text = engine
        .transcribe(micdrop_local::audio::s16le_to_f32(&pcm))
        .await
        .unwrap();
    assert!(
        common::has_words(&text, FRENCH_WORDS, 4),
        "transcript: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whisper_tiny_en_understands_english() {
    let tts = espeak("en-us").await;
    let pcm = tts
        .synthesize("Hello, I would like to book a table for two people tonight.")
        .await
        .unwrap();
    let engine = whisper("tiny.en", "en", 1);
    let text = engine
        .transcribe(micdrop_local::audio::s16le_to_f32(&pcm))
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
    // An English-only model refuses another language at load time, naming the model.
    let mut opts = WhisperOptions::new(common::whisper_model("tiny.en"));
    opts.language = Some("fr".into());
    let e = WhisperEngine::load(opts).unwrap_err().to_string();
    assert!(e.contains("English-only"), "{e}");
}

fn stt_session(stt: &WhisperStt) -> (mpsc::Sender<SttCommand>, mpsc::Receiver<SttEvent>) {
    let (ctx, crx) = mpsc::channel(512);
    let (etx, erx) = mpsc::channel(16);
    tokio::spawn(stt.run(SttSessionIo {
        commands: crx,
        events: etx,
    }));
    (ctx, erx)
}

async fn send_turn(tx: &mpsc::Sender<SttCommand>, pcm: &[u8]) {
    tx.send(SttCommand::StartTurn).await.unwrap();
    for chunk in pcm.chunks(3_200) {
        tx.send(SttCommand::Audio(Bytes::copy_from_slice(chunk)))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stt_session_transcribes_each_turn_when_it_ends() {
    let pcm = espeak("fr").await.synthesize(FRENCH).await.unwrap();
    let stt = WhisperStt::new(whisper("base", "fr", 1));
    let (tx, mut rx) = stt_session(&stt);

    // A discarded turn (mute) gives nothing; the next turn is transcribed at its end.
    send_turn(&tx, &pcm).await;
    tx.send(SttCommand::DiscardTurn).await.unwrap();
    send_turn(&tx, &pcm).await;
    tx.send(SttCommand::EndTurn).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let SttEvent::Transcript(text) = first else {
        panic!("{first:?}")
    };
    assert!(
        common::has_words(&text, FRENCH_WORDS, 4),
        "transcript: {text:?}"
    );

    // A silent turn gives an empty transcript (never a hallucinated sentence).
    tx.send(SttCommand::StartTurn).await.unwrap();
    tx.send(SttCommand::Audio(Bytes::from(vec![0u8; 32_000])))
        .await
        .unwrap();
    tx.send(SttCommand::EndTurn).await.unwrap();
    let silent = tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(silent, SttEvent::Transcript(String::new()));

    // The session ends when the call closes its commands.
    drop(tx);
    assert!(rx.recv().await.is_none());
}

/// Transcriptions run off the async runtime: on a single-threaded runtime, with three calls'
/// turns queued on a one-worker pool, other tasks of the runtime still run while Whisper works.
#[tokio::test(flavor = "current_thread")]
async fn transcriptions_never_block_the_runtime() {
    let pcm = espeak("fr").await.synthesize(FRENCH).await.unwrap();
    let stt = WhisperStt::new(whisper("base", "fr", 1));
    // Every session's events into one channel.
    let (all_tx, mut all_rx) = mpsc::channel::<SttEvent>(8);
    let mut senders = Vec::new();
    for _ in 0..3 {
        let (tx, mut rx) = stt_session(&stt);
        send_turn(&tx, &pcm).await;
        tx.send(SttCommand::EndTurn).await.unwrap();
        senders.push(tx);
        let all = all_tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let _ = all.send(ev).await;
            }
        });
    }
    // A light task of another call: it must complete long before the queued transcriptions.
    let (ping_tx, mut ping_rx) = mpsc::channel::<u32>(8);
    tokio::spawn(async move {
        for i in 0..5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ping_tx.send(i).await.unwrap();
        }
    });
    let mut order = Vec::new();
    let mut pings = 0;
    let mut transcripts = 0;
    while transcripts < 3 {
        tokio::select! {
            Some(_) = ping_rx.recv(), if pings < 5 => { pings += 1; order.push("ping"); }
            Some(ev) = all_rx.recv() => {
                transcripts += 1;
                order.push("transcript");
                assert!(matches!(ev, SttEvent::Transcript(_)), "{ev:?}");
            }
        }
    }
    let first_transcript = order.iter().position(|o| *o == "transcript").unwrap();
    assert_eq!(
        &order[..5],
        &["ping"; 5],
        "the runtime was blocked: {order:?}"
    );
    assert!(first_transcript >= 5);
}

async fn tts_session(
    tts: &dyn TextToSpeech,
) -> (mpsc::Sender<TtsCommand>, mpsc::Receiver<TtsEvent>) {
    let (ctx, crx) = mpsc::channel(1024);
    let (etx, erx) = mpsc::channel(64);
    tokio::spawn(tts.run(TtsSessionIo {
        commands: crx,
        events: etx,
    }));
    (ctx, erx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_speaks_utterances_in_order_and_cancels() {
    let tts = espeak("fr").await;
    let (tx, mut rx) = tts_session(&tts).await;
    // Text streamed in pieces, as an agent writes it.
    tx.send(TtsCommand::Speak(1)).await.unwrap();
    for piece in ["Bonjour", ", comment ", "allez-vous ? Très ", "bien."] {
        tx.send(TtsCommand::Text(1, piece.into())).await.unwrap();
    }
    tx.send(TtsCommand::EndText(1)).await.unwrap();
    tx.send(TtsCommand::Speak(2)).await.unwrap();
    tx.send(TtsCommand::Text(2, "Au revoir.".into()))
        .await
        .unwrap();
    tx.send(TtsCommand::EndText(2)).await.unwrap();
    let mut bytes = [0usize; 3];
    let mut order = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        match ev {
            TtsEvent::Audio(id, b) => {
                bytes[id as usize] += b.len();
                if order.last() != Some(&id) {
                    order.push(id);
                }
            }
            TtsEvent::Done(2) => break,
            TtsEvent::Done(1) => order.push(100),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        order,
        vec![1, 100, 2],
        "utterance 1, its Done, then utterance 2"
    );
    // 16 kHz: "Bonjour, comment allez-vous ? Très bien." lasts more than a second.
    assert!(bytes[1] > 32_000, "{} bytes", bytes[1]);
    assert!(bytes[2] > 8_000 && bytes[2] < bytes[1]);

    // Cancel: a long utterance is dropped; the next one is spoken normally.
    tx.send(TtsCommand::Speak(3)).await.unwrap();
    tx.send(TtsCommand::Text(
        3,
        "Une très longue phrase qui ne sera jamais dite en entier. ".repeat(5),
    ))
    .await
    .unwrap();
    tx.send(TtsCommand::Cancel).await.unwrap();
    tx.send(TtsCommand::Speak(4)).await.unwrap();
    tx.send(TtsCommand::Text(4, "Oui.".into())).await.unwrap();
    tx.send(TtsCommand::EndText(4)).await.unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        match ev {
            TtsEvent::Audio(3, _) | TtsEvent::Audio(4, _) => {}
            TtsEvent::Done(4) => break,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_missing_espeak_voice_is_refused_at_start() {
    let e = EspeakTts::new(EspeakOptions {
        voice: "no-such-voice".into(),
        ..Default::default()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("no-such-voice"), "{e}");
}
