//! Gradium TTS and STT against the Gradium simulator: full utterances and turns, and faults.

mod common;

use common::{WAIT, config, sim, start_stt, start_tts};
use micdrop_core::ProviderErrorKind;
use micdrop_core::stt::SttEvent;
use micdrop_core::tts::{TtsCommand, TtsEvent};
use micdrop_providers::{GradiumStt, GradiumTts};
use micdrop_sim::{Fault, FaultKind, Service, SimHandle};

fn tts(
    sim: &SimHandle,
    f: impl FnOnce(&mut micdrop_providers::config::GradiumTtsConfig),
) -> GradiumTts {
    let mut c = config(sim).tts.unwrap().gradium;
    f(&mut c);
    let key = c.api_key.clone().unwrap();
    GradiumTts::new(c, key).unwrap()
}

fn stt(sim: &SimHandle) -> GradiumStt {
    let c = config(sim).stt.gradium;
    let key = c.api_key.clone().unwrap();
    GradiumStt::new(c, key).unwrap()
}

const SENTENCE: &[&str] = &["Bonjour", " à tous,", " comment", " allez", "-vous ?"];

#[tokio::test]
async fn speaks_an_utterance_streamed_in_pieces() {
    let sim = sim(&[], |_| {}).await;
    let mut t = start_tts(&tts(&sim, |_| {}));
    t.say(1, SENTENCE).await;
    let bytes = t.until_done(1).await;
    // Tone engine: 60 ms per character at 16 kHz, s16 → well over a second of audio.
    assert!(bytes > 32_000, "{bytes} bytes");
    assert_eq!(bytes % 2, 0);
    // A second utterance on the same socket (multiplexed requests).
    t.say(2, &["Au revoir."]).await;
    assert!(t.until_done(2).await > 0);
    let c = sim.counters().gradium_tts;
    assert_eq!((c.connections, c.rejected), (1, 0));
}

#[tokio::test]
async fn utterances_are_spoken_in_order() {
    let sim = sim(&[], |_| {}).await;
    let mut t = start_tts(&tts(&sim, |_| {}));
    t.say(1, &["Une phrase assez longue pour durer un moment."])
        .await;
    t.say(2, &["Courte."]).await;
    let mut order = Vec::new();
    loop {
        match t.next().await {
            TtsEvent::Audio(u, _) => {
                if order.last() != Some(&u) {
                    order.push(u);
                }
            }
            TtsEvent::Done(2) => break,
            TtsEvent::Done(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(order, [1, 2], "no interleaving, earlier utterance first");
}

#[tokio::test]
async fn a_cancelled_utterance_stops_and_the_next_one_plays() {
    let sim = sim(&[], |s| {
        s.zero_delay = false;
        s.gradium.ready_delay_ms = 0;
        s.gradium.tts_first_audio_ms = 0;
        s.gradium.tts_realtime_factor = 0.5;
    })
    .await;
    let mut t = start_tts(&tts(&sim, |_| {}));
    t.say(
        1,
        &["Une très longue phrase qui ne sera jamais entendue jusqu'au bout, vraiment."],
    )
    .await;
    assert!(matches!(t.next().await, TtsEvent::Audio(1, _)));
    t.tx.send(TtsCommand::Cancel).await.unwrap();
    t.say(2, &["Oui ?"]).await;
    loop {
        match t.next().await {
            TtsEvent::Audio(1, _) => {
                // Frames already queued before the cancel reached the session may still come
                // out, but never after audio of the next utterance started.
            }
            TtsEvent::Audio(2, _) => break,
            other => panic!("{other:?}"),
        }
    }
    loop {
        match t.next().await {
            TtsEvent::Audio(2, _) => {}
            TtsEvent::Done(2) => break,
            other => panic!("audio of the cancelled utterance after the next one: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_drop_mid_utterance_resends_the_unspoken_text() {
    let sim = sim(&[], |_| {}).await;
    sim.push_fault(Service::GradiumTts, Fault::new(FaultKind::DropMidUtterance));
    let mut t = start_tts(&tts(&sim, |_| {}));
    t.say(1, SENTENCE).await;
    let bytes = t.until_done(1).await;
    // The same sentence without a fault, for comparison.
    t.say(2, SENTENCE).await;
    let clean = t.until_done(2).await;
    // Resumed after the words heard: neither the whole sentence twice nor words missing
    // (a word cut by the drop may be said again).
    assert!(
        bytes as f64 >= clean as f64 * 0.9 && (bytes as f64) < clean as f64 * 1.4,
        "{bytes} bytes with a drop, {clean} without"
    );
    let c = sim.counters().gradium_tts;
    assert_eq!(c.faults, 1);
    assert_eq!(c.connections, 2, "reconnected once");
}

#[tokio::test]
async fn upgrade_errors_until_failure_give_the_unspoken_text_back() {
    let sim = sim(&[], |_| {}).await;
    sim.push_fault(Service::GradiumTts, Fault::status(503).times(100));
    let mut t = start_tts(&tts(&sim, |c| c.max_retries = 2));
    t.say(7, SENTENCE).await;
    match t.next().await {
        TtsEvent::Failed {
            utterance,
            error,
            unspoken,
        } => {
            assert_eq!(utterance, 7);
            assert!(
                matches!(error.kind, ProviderErrorKind::Exhausted { .. }),
                "{error}"
            );
            assert_eq!(unspoken, vec![SENTENCE.concat()]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_revoked_key_fails_without_retries() {
    let sim = sim(&[], |s| s.gradium.api_key = Some("gd_right".into())).await;
    let mut t = start_tts(&tts(&sim, |_| {}));
    t.say(1, &["Bonjour."]).await;
    match t.next().await {
        TtsEvent::Failed { error, .. } => {
            assert!(
                matches!(error.kind, ProviderErrorKind::Closed { code: 1008, .. }),
                "{error}"
            );
            assert!(!error.to_string().contains("sim-gradium-key"));
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.counters().gradium_tts.connections <= 2);
}

#[tokio::test]
async fn a_silent_socket_times_out_and_reconnects() {
    let sim = sim(&[], |_| {}).await;
    sim.push_fault(Service::GradiumTts, Fault::new(FaultKind::Hang));
    let mut t = start_tts(&tts(&sim, |c| c.audio_timeout_ms = 300));
    t.say(1, &["Bonjour à tous."]).await;
    assert!(t.until_done(1).await > 0);
    assert_eq!(sim.counters().gradium_tts.connections, 2);
}

#[tokio::test]
async fn malformed_messages_are_skipped_by_tts() {
    let sim = sim(&[], |_| {}).await;
    sim.push_fault(Service::GradiumTts, Fault::malformed(2));
    let mut t = start_tts(&tts(&sim, |_| {}));
    t.say(1, &["Bonjour à tous."]).await;
    assert!(t.until_done(1).await > 0);
}

#[tokio::test]
async fn stt_a_spoken_turn_gives_its_transcript() {
    let sim = sim(&["Bonjour", "Encore une fois"], |_| {}).await;
    let mut s = start_stt(&stt(&sim));
    s.turn(900).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript("Bonjour".into()));
    s.turn(1200).await;
    assert_eq!(
        s.next_final().await,
        SttEvent::Transcript("Encore une fois".into())
    );
    assert_eq!(sim.counters().gradium_stt.connections, 1);
}

#[tokio::test]
async fn stt_a_drop_mid_utterance_loses_nothing() {
    let sim = sim(&["Bonjour"], |_| {}).await;
    sim.push_fault(Service::GradiumStt, Fault::new(FaultKind::DropMidUtterance));
    let mut s = start_stt(&stt(&sim));
    s.turn(900).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript("Bonjour".into()));
    let c = sim.counters().gradium_stt;
    assert_eq!((c.faults, c.connections), (1, 2));
}

#[tokio::test]
async fn stt_errors_until_failure() {
    let sim = sim(&["Bonjour"], |_| {}).await;
    sim.push_fault(Service::GradiumStt, Fault::status(500).times(100));
    let mut c = config(&sim).stt.gradium;
    c.max_retries = 1;
    let key = c.api_key.clone().unwrap();
    let mut s = start_stt(&GradiumStt::new(c, key).unwrap());
    s.turn(300).await;
    match tokio::time::timeout(WAIT, s.next_final()).await.unwrap() {
        SttEvent::Failed { pending, .. } => assert_eq!(pending.len(), 5),
        other => panic!("{other:?}"),
    }
}

/// Gradium ends every socket at its session cap (300 s; shortened here): a long call loses no
/// utterance and no turn, whether the cap falls between or in the middle of them.
#[tokio::test]
async fn a_long_call_across_session_caps_loses_nothing() {
    let sim = sim(&["un", "deux", "trois", "quatre", "cinq", "six"], |s| {
        s.gradium.max_session_ms = 900;
    })
    .await;
    // Without the client's recycling, only reconnection on the cap saves the work in flight.
    let mut t = start_tts(&tts(&sim, |c| c.max_session_age_ms = 0));
    for id in 1..=6 {
        t.say(id, &["Une phrase pour passer le temps."]).await;
        assert!(t.until_done(id).await > 0, "utterance {id}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let c = sim.counters().gradium_tts;
    assert!(c.connections >= 2, "the cap was reached: {c:?}");

    let mut c = common::config(&sim).stt.gradium;
    c.max_session_age_ms = 600;
    let key = c.api_key.clone().unwrap();
    let mut s = start_stt(&GradiumStt::new(c, key).unwrap());
    for want in ["un", "deux", "trois", "quatre", "cinq", "six"] {
        s.turn(400).await;
        assert_eq!(s.next_final().await, SttEvent::Transcript(want.into()));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let c = sim.counters().gradium_stt;
    assert!(c.connections >= 2, "the socket was renewed: {c:?}");
}

/// Cancelling stops the rendering: Gradium has no cancel message, so the socket of a request
/// still being rendered is closed (not `end_of_stream`, which would render and bill the rest)
/// and a fresh one is opened for the next answer.
#[tokio::test]
async fn cancelling_closes_the_rendering_socket_and_the_next_answer_plays() {
    let sim = sim(&[], |s| {
        s.zero_delay = false;
        s.gradium.ready_delay_ms = 0;
        s.gradium.tts_first_audio_ms = 0;
        s.gradium.tts_realtime_factor = 0.5;
    })
    .await;
    let mut t = start_tts(&tts(&sim, |_| {}));
    t.tx.send(TtsCommand::Speak(1)).await.unwrap();
    t.tx.send(TtsCommand::Text(
        1,
        "Une longue phrase qui ne finira jamais ".into(),
    ))
    .await
    .unwrap();
    // Wait for its first audio: the request is being rendered.
    loop {
        if let TtsEvent::Audio(1, _) = t.next().await {
            break;
        }
    }
    t.tx.send(TtsCommand::Cancel).await.unwrap();
    t.say(2, &["Oui ?"]).await;
    loop {
        match t.next().await {
            TtsEvent::Audio(1, _) => {}
            TtsEvent::Audio(2, _) => {}
            TtsEvent::Done(2) => break,
            other => panic!("{other:?}"),
        }
    }
    let c = sim
        .wait_idle(std::time::Duration::from_millis(300))
        .await
        .gradium_tts;
    assert_eq!(c.connections, 2, "a fresh socket after the cancel: {c:?}");
    assert_eq!(
        c.open_connections, 1,
        "the rendering socket was closed: {c:?}"
    );
}

/// Issue #9, defect 9: Gradium may send the last words of a flush just after `flushed`; the
/// transcript waits a moment (150 ms) for them instead of dropping them.
#[tokio::test]
async fn stt_words_after_flushed_are_kept() {
    let sim = sim(&["Bonjour tout le monde", "Et puis"], |s| {
        // Zero delays: the late words follow `flushed` at once (no race with the grace).
        s.gradium.stt_words_after_flushed = 2;
    })
    .await;
    let mut s = start_stt(&stt(&sim));
    s.turn(1200).await;
    assert_eq!(
        s.next_final().await,
        SttEvent::Transcript("Bonjour tout le monde".into())
    );
    // The late words are not carried into the next turn.
    s.turn(900).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript("Et puis".into()));
}
