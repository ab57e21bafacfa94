//! Every line a call logs carries its call id, also the lines of the wake-ups that the call task
//! handles outside the call's span (issue #10). In a test binary of its own: a log callsite
//! first hit while another test's call runs on another thread can miss this test's subscriber.

use std::sync::Arc;
use std::time::Duration;

use micdrop_core::agent::Agent;
use micdrop_core::call::CallConfig;
use micdrop_testkit::{ScriptedModel, ScriptedStt, ScriptedTts};

mod common;
use common::{Harness, turn};

/// The call task handles its commonest wake-ups (a user audio frame, a paced burst, a write)
/// outside the call's span; the lines logged on their paths still carry the call's id: the
/// turn's latencies (logged at the first write of the answer's audio), the observer's
/// overflow (at a user audio frame), the TTS's end and failure.
#[tokio::test]
async fn every_line_of_a_call_carries_its_call_id() {
    let (logs, _guard) = common::capture_logs(tracing::Level::DEBUG);
    // Never read: it overflows at the first user audio frame.
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["Salut", "FAIL"])))
            .agent(Agent::new(Arc::new(ScriptedModel::default()), "test"))
            .tts(Arc::new(ScriptedTts::new()))
            .observer(tx)
            .call_id("call-7"),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 3).await;
    c.expect_text(r#"Message {"role":"user","content":"Salut"}"#)
        .await;
    c.expect_text(r#"Message {"role":"assistant","content":"You said: Salut"}"#)
        .await;
    while c.next_within(Duration::from_millis(300)).await.is_some() {}
    // The scripted TTS fails on this answer.
    turn(&mut c, 3).await;
    c.expect_text(r#"Message {"role":"user","content":"FAIL"}"#)
        .await;
    while c.next_within(Duration::from_millis(300)).await.is_some() {}
    c.close().await;
    h.wait_end().await;
    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("micdrop_core::call"))
        .collect();
    for wanted in [
        "turn latencies",
        "call observer is full",
        "utterance spoken",
        "TTS failed",
        "call ended",
    ] {
        assert!(lines.iter().any(|l| l.contains(wanted)), "{wanted}: {text}");
    }
    for l in &lines {
        assert!(l.contains("call{call_id=call-7"), "{l}");
    }
}
