//! Issue #11, finding 5: a user turn's audio is counted against the time since it opened. Up
//! to real time plus the burst allowance (`audio_burst`, 5 s by default) it goes to the STT;
//! beyond, the call closes with 1008 "Audio faster than real time". `None` disables the check.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use micdrop_core::call::{CallClose, CallConfig, EndReason};
use micdrop_core::stt::{SpeechToText, SttCommand, SttSessionIo};
use micdrop_testkit::{Frame, ScriptedStt, WsClient};

mod common;
use common::Harness;

/// The largest frame the server takes (64,000 of the 65,536 bytes): 2 s of PCM.
const TWO_SECONDS: usize = 64_000;

fn audio_bytes(stt: &ScriptedStt) -> usize {
    stt.commands()
        .iter()
        .map(|c| match c {
            SttCommand::Audio(b) => b.len(),
            _ => 0,
        })
        .sum()
}

async fn assert_flood_close(h: &Harness, c: &mut WsClient) {
    assert_eq!(
        c.next().await,
        Frame::Close(1008, "Audio faster than real time".into())
    );
    let end = h.wait_end().await;
    assert!(
        matches!(end.reason, EndReason::AudioFlood(_)),
        "{:?}",
        end.reason
    );
    assert_eq!(
        end.close,
        Some(CallClose {
            code: 1008,
            reason: "Audio faster than real time".into(),
            by_server: true,
        })
    );
}

#[tokio::test]
async fn a_flood_beyond_the_default_burst_closes_the_call_with_1008() {
    let stt = ScriptedStt::transcripts(&["Bonjour"]);
    let config = CallConfig::new(Arc::new(stt.clone()));
    assert_eq!(config.audio_burst, Some(Duration::from_secs(5)));
    let h = Harness::start(config).await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    c.text("StartSpeaking").await;
    // 6 s of audio at once (three 2 s frames): more than real time plus 5 s.
    for _ in 0..3 {
        c.binary(vec![0u8; TWO_SECONDS]).await;
    }
    assert_flood_close(&h, &mut c).await;
    // What was within the allowance went to the STT; the frame beyond it did not.
    assert_eq!(audio_bytes(&stt), 2 * TWO_SECONDS);
}

#[tokio::test]
async fn a_smaller_burst_closes_on_the_first_frame_ahead_of_it() {
    let stt = ScriptedStt::transcripts(&["Bonjour"]);
    let h = Harness::start(
        CallConfig::new(Arc::new(stt.clone())).audio_burst(Some(Duration::from_secs(1))),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    c.text("StartSpeaking").await;
    c.binary(vec![0u8; TWO_SECONDS]).await;
    assert_flood_close(&h, &mut c).await;
    assert_eq!(audio_bytes(&stt), 0);
}

#[tokio::test]
async fn real_time_audio_after_a_burst_within_the_allowance_is_accepted() {
    let stt = ScriptedStt::transcripts(&["Bonjour", "Encore"]);
    let h = Harness::start(
        CallConfig::new(Arc::new(stt.clone())).audio_burst(Some(Duration::from_secs(1))),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    c.text("StartSpeaking").await;
    // The allowance at once (a VAD's pre-roll, a reconnection buffer)...
    c.audio(10).await;
    // ... then 3 s at real time (100 ms frames every 100 ms).
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.tick().await;
    for _ in 0..30 {
        tick.tick().await;
        c.audio(1).await;
    }
    c.text("StopSpeaking").await;
    c.expect_text(r#"Message {"role":"user","content":"Bonjour"}"#)
        .await;
    c.expect_text("SkipAnswer").await;
    assert_eq!(audio_bytes(&stt), 40 * 3200, "every chunk reached the STT");
    // A new turn gets a fresh allowance.
    c.text("StartSpeaking").await;
    c.audio(10).await;
    c.text("StopSpeaking").await;
    c.expect_text(r#"Message {"role":"user","content":"Encore"}"#)
        .await;
    c.close().await;
    let end = h.wait_end().await;
    assert_eq!(end.reason, EndReason::ClientClosed);
}

#[tokio::test]
async fn no_burst_setting_disables_the_check() {
    let stt = ScriptedStt::transcripts(&["Vite"]);
    let h = Harness::start(CallConfig::new(Arc::new(stt.clone())).audio_burst(None)).await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    c.text("StartSpeaking").await;
    // 20 s of audio at once, as `micdrop call --fast` sends a recording.
    for _ in 0..10 {
        c.binary(vec![0u8; TWO_SECONDS]).await;
    }
    c.text("StopSpeaking").await;
    c.expect_text(r#"Message {"role":"user","content":"Vite"}"#)
        .await;
    assert_eq!(audio_bytes(&stt), 10 * TWO_SECONDS);
}

/// An STT session that is stuck: it holds its command queue and never reads it.
#[derive(Debug)]
struct StuckStt;

impl SpeechToText for StuckStt {
    fn name(&self) -> &str {
        "stuck-stt"
    }

    fn run(&self, io: SttSessionIo) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _io = io;
            std::future::pending::<()>().await
        })
    }
}

#[tokio::test]
async fn audio_the_stt_does_not_take_is_reported_once_per_turn_not_once_per_chunk() {
    let (logs, _guard) = common::capture_logs(tracing::Level::WARN);
    let h = Harness::start(CallConfig::new(Arc::new(StuckStt)).audio_burst(None)).await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    // The STT queue holds 512 commands (StartTurn and 511 chunks): 100 more chunks are lost.
    c.text("StartSpeaking").await;
    c.audio(611).await;
    c.text("StopSpeaking").await;
    c.close().await;
    h.wait_end().await;
    let text = logs.text();
    let started = text
        .lines()
        .filter(|l| l.contains("STT session not accepting audio"))
        .count();
    let lost: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("user audio lost"))
        .collect();
    assert_eq!(started, 1, "{text}");
    assert_eq!(lost.len(), 1, "{text}");
    // StopSpeaking (EndTurn) did not fit either: it is warned about on its own.
    assert!(lost[0].contains("chunks=100"), "{}", lost[0]);
    assert!(lost[0].contains("audio_ms=10000"), "{}", lost[0]);
}
