//! Gladia STT against the Gladia simulator: a spoken turn and every fault.

mod common;

use std::time::Duration;

use common::{Stt, config, quiet, sim, speech, start_stt};
use micdrop_core::ProviderErrorKind;
use micdrop_core::stt::{SttCommand, SttEvent};
use micdrop_providers::GladiaStt;
use micdrop_sim::{Fault, FaultKind, Service, SimHandle};

fn gladia(
    sim: &SimHandle,
    f: impl FnOnce(&mut micdrop_providers::config::GladiaConfig),
) -> GladiaStt {
    let mut c = config(sim).stt.gladia;
    f(&mut c);
    let key = c.api_key.clone().unwrap();
    GladiaStt::new(c, key).unwrap()
}

#[tokio::test]
async fn a_spoken_turn_gives_its_transcript() {
    let sim = sim(&["Bonjour", "Quelle heure est-il ?"], |_| {}).await;
    let mut s: Stt = start_stt(&gladia(&sim, |_| {}));
    s.turn(800).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript("Bonjour".into()));
    s.turn(800).await;
    assert_eq!(
        s.next_final().await,
        SttEvent::Transcript("Quelle heure est-il ?".into())
    );
    // One session for the call, one socket, no rejection.
    let c = sim.counters().gladia;
    assert_eq!((c.sessions, c.connections, c.rejected), (1, 1, 0));
    drop(s.tx);
    s.task.await.unwrap();
    let c = sim.wait_idle(common::WAIT).await;
    assert_eq!(c.gladia.open_connections, 0);
    assert_eq!(
        c.gladia.open_sessions, 0,
        "stop_recording ended the session"
    );
}

#[tokio::test]
async fn partials_are_passed_on_when_enabled() {
    let sim = sim(&["Bonjour tout le monde"], |_| {}).await;
    let mut s = start_stt(&gladia(&sim, |c| c.partial_transcripts = true));
    s.turn(1500).await;
    let mut partials = 0;
    loop {
        match tokio::time::timeout(common::WAIT, s.rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            SttEvent::Partial(_) => partials += 1,
            SttEvent::Transcript(t) => {
                assert_eq!(t, "Bonjour tout le monde");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(partials > 0);
}

#[tokio::test]
async fn a_drop_mid_utterance_loses_nothing() {
    let sim = sim(&["Bonjour"], |_| {}).await;
    sim.push_fault(Service::Gladia, Fault::new(FaultKind::DropMidUtterance));
    let mut s = start_stt(&gladia(&sim, |_| {}));
    s.turn(1000).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript("Bonjour".into()));
    let c = sim.counters().gladia;
    assert_eq!(c.faults, 1);
    assert_eq!(c.connections, 2, "reconnected");
    assert_eq!(c.sessions, 1, "resumed the same session");
}

#[tokio::test]
async fn a_close_mid_stream_reconnects_and_transcribes() {
    let sim = sim(&["Bonjour"], |_| {}).await;
    sim.push_fault(Service::Gladia, Fault::close(3, 1011));
    let mut s = start_stt(&gladia(&sim, |_| {}));
    s.turn(1000).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript("Bonjour".into()));
    assert!(sim.counters().gladia.connections >= 2);
}

#[tokio::test]
async fn rate_limited_init_then_success() {
    let sim = sim(&["Bonjour"], |_| {}).await;
    sim.push_fault(Service::Gladia, Fault::status(429));
    let mut s = start_stt(&gladia(&sim, |_| {}));
    s.turn(800).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript("Bonjour".into()));
    assert_eq!(sim.counters().gladia.sessions, 1);
}

#[tokio::test]
async fn server_errors_until_failure_give_the_pending_audio_back() {
    let sim = sim(&["Bonjour"], |_| {}).await;
    sim.push_fault(Service::Gladia, Fault::status(500).times(100));
    let mut s = start_stt(&gladia(&sim, |c| c.max_retries = 2));
    s.turn(500).await;
    match s.next_final().await {
        SttEvent::Failed { error, pending } => {
            assert!(
                matches!(error.kind, ProviderErrorKind::Exhausted { .. }),
                "{error}"
            );
            // The whole turn: 500 ms of speech and 200 ms of silence, 100 ms chunks.
            assert_eq!(pending.len(), 7);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.counters().gladia.requests, 3, "1 attempt + 2 retries");
}

#[tokio::test]
async fn a_refused_key_is_not_retried() {
    let sim = sim(&["Bonjour"], |s| {
        s.gladia.api_key = Some("the-right-key".into())
    })
    .await;
    let mut s = start_stt(&gladia(&sim, |_| {}));
    s.turn(300).await;
    match s.next_final().await {
        SttEvent::Failed { error, .. } => {
            assert!(
                matches!(error.kind, ProviderErrorKind::Status { status: 401, .. }),
                "{error}"
            );
            assert!(
                error.to_string().contains("gladia key not found"),
                "{error}"
            );
            assert!(!error.to_string().contains("sim-gladia-key"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.counters().gladia.requests, 1);
}

#[tokio::test]
async fn a_hanging_init_times_out_into_failed() {
    let sim = sim(&["Bonjour"], |_| {}).await;
    sim.push_fault(Service::Gladia, Fault::new(FaultKind::Hang).times(100));
    let mut s = start_stt(&gladia(&sim, |c| {
        c.max_retries = 1;
        c.connect_timeout_ms = 200;
    }));
    s.turn(300).await;
    assert!(matches!(s.next_final().await, SttEvent::Failed { .. }));
}

#[tokio::test]
async fn malformed_messages_are_skipped() {
    let sim = sim(&["Bonjour"], |_| {}).await;
    sim.push_fault(Service::Gladia, Fault::malformed(1));
    let mut s = start_stt(&gladia(&sim, |_| {}));
    s.turn(800).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript("Bonjour".into()));
}

#[tokio::test]
async fn silence_gives_an_empty_transcript_after_the_timeout() {
    let sim = sim(&["Bonjour"], |_| {}).await;
    let mut s = start_stt(&gladia(&sim, |c| c.transcription_timeout_ms = 400));
    s.tx.send(SttCommand::StartTurn).await.unwrap();
    for c in quiet(500) {
        s.tx.send(SttCommand::Audio(c)).await.unwrap();
    }
    let started = tokio::time::Instant::now();
    s.tx.send(SttCommand::EndTurn).await.unwrap();
    assert_eq!(s.next_final().await, SttEvent::Transcript(String::new()));
    assert!(started.elapsed() >= Duration::from_millis(390));
}

#[tokio::test]
async fn a_silent_server_counts_as_a_dead_connection() {
    let sim = sim(&["Bonjour"], |s| s.gladia.drop_acks = true).await;
    let mut s = start_stt(&gladia(&sim, |c| {
        c.transcription_timeout_ms = 300;
        c.max_retries = 1;
        c.settings.insert(
            "messages_config".into(),
            serde_json::json!({"receive_lifecycle_events": false}),
        );
    }));
    // Silence only (no transcript to send) with acknowledgments and lifecycle events off: the
    // server sends nothing at all after the turn.
    s.tx.send(SttCommand::StartTurn).await.unwrap();
    for c in quiet(300) {
        s.tx.send(SttCommand::Audio(c)).await.unwrap();
    }
    s.tx.send(SttCommand::EndTurn).await.unwrap();
    // Not a word from the server → reconnect, replay, still nothing → Failed with the audio.
    match s.next_final().await {
        SttEvent::Failed { pending, .. } => assert_eq!(pending.len(), 3),
        SttEvent::Transcript(t) => panic!("unexpected transcript {t:?}"),
        other => panic!("{other:?}"),
    }
    assert!(sim.counters().gladia.connections >= 2);
}

#[tokio::test]
async fn discarded_turns_are_not_finalized() {
    let sim = sim(&["Bonjour", "Salut"], |_| {}).await;
    let mut s = start_stt(&gladia(&sim, |c| c.transcription_timeout_ms = 300));
    s.tx.send(SttCommand::StartTurn).await.unwrap();
    for c in speech(100) {
        s.tx.send(SttCommand::Audio(c)).await.unwrap();
    }
    s.tx.send(SttCommand::DiscardTurn).await.unwrap();
    s.turn(800).await;
    let ev = s.next_final().await;
    assert!(
        matches!(ev, SttEvent::Transcript(ref t) if !t.is_empty()),
        "{ev:?}"
    );
}

/// Issue #9, defect 3: a Gladia that closes an utterance only after 1 s of trailing silence.
/// The first burst (0.3 s, plus the 0.2 s of silence the turn ends with) is not enough: the
/// session must keep feeding silence, or the user's turn is lost (an empty transcript).
#[tokio::test]
async fn a_strict_gladia_still_gets_its_final_from_the_fed_silence() {
    for end_silence_ms in [1000, 1800] {
        let sim = sim(&["Bonjour", "Et ensuite ?"], |s| {
            s.gladia.strict_end_silence_ms = end_silence_ms
        })
        .await;
        let mut s = start_stt(&gladia(&sim, |_| {}));
        s.turn(800).await;
        assert_eq!(
            s.next_final().await,
            SttEvent::Transcript("Bonjour".into()),
            "strict_end_silence_ms = {end_silence_ms}"
        );
        // The next turn works the same (the feeding restarted from the first burst).
        s.turn(800).await;
        assert_eq!(
            s.next_final().await,
            SttEvent::Transcript("Et ensuite ?".into())
        );
        assert_eq!(sim.counters().gladia.sessions, 1);
    }
}

#[tokio::test]
async fn without_feeding_a_strict_gladia_loses_the_turn() {
    // The rule the test above relies on: with the first burst only (max = burst), the strict
    // simulator gives no final and the turn ends empty.
    let sim = sim(&["Bonjour"], |s| s.gladia.strict_end_silence_ms = 1000).await;
    let mut s = start_stt(&gladia(&sim, |c| {
        c.max_finalize_silence_ms = 0;
        c.transcription_timeout_ms = 1500;
    }));
    s.turn(800).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript(String::new()));
}
