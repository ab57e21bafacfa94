//! The fault kinds not covered in the per-service files, one service each.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use futures::SinkExt;
use micdrop_sim::{Fault, FaultKind, Service, SimScript};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn gladia_session(sim: &micdrop_sim::SimHandle) -> Ws {
    let r: Value = reqwest::Client::new()
        .post(format!("{}/v2/live", sim.gladia_base_url()))
        .header("x-gladia-key", "k")
        .json(&json!({"messages_config": {"receive_lifecycle_events": true}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    connect(r["url"].as_str().unwrap(), &[]).await
}

#[tokio::test]
async fn gladia_hang_malformed_and_drop() {
    let sim = start(SimScript::default()).await;
    // Hang: the init request is never answered.
    sim.push_fault(Service::Gladia, Fault::new(FaultKind::Hang));
    let r = reqwest::Client::new()
        .post(format!("{}/v2/live", sim.gladia_base_url()))
        .header("x-gladia-key", "k")
        .json(&json!({}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    // Malformed: the second message (the first ack) is broken JSON.
    sim.push_fault(Service::Gladia, Fault::malformed(1));
    let mut ws = gladia_session(&sim).await;
    ws.send(Message::Binary(silence(16000, 0.1).into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "start_session");
    match next(&mut ws).await {
        Event::Text(t) => assert!(serde_json::from_str::<Value>(&t).is_err()),
        other => panic!("expected malformed JSON, got {other:?}"),
    }
    // The session goes on after it.
    ws.send(Message::Binary(silence(16000, 0.1).into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "audio_chunk");
    drop(ws);
    // Drop after 1 message: start_session, then the TCP connection is cut.
    sim.push_fault(Service::Gladia, Fault::drop_after(1));
    let mut ws = gladia_session(&sim).await;
    ws.send(Message::Binary(silence(16000, 0.1).into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "start_session");
    assert!(matches!(next(&mut ws).await, Event::Gone));
    assert_eq!(sim.counters().gladia.faults, 3);
    let c = wait_until(&sim, |c| c.gladia.open_connections == 0).await;
    assert_eq!(c.gladia.open_connections, 0);
    assert_eq!(
        c.gladia.open_sessions, 2,
        "dropped sessions wait for a reconnection"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn gradium_stt_malformed_and_drop_mid_utterance() {
    let sim = start(script("[sim]\ntranscripts = [\"Oui\"]")).await;
    let url = format!("{}/speech/asr", sim.gradium_base_url());
    sim.push_fault(Service::GradiumStt, Fault::malformed(0));
    let mut ws = connect(&url, &[("x-api-key", "k")]).await;
    send_json(
        &mut ws,
        json!({"type": "setup", "input_format": "pcm_16000"}),
    )
    .await;
    assert!(
        matches!(next(&mut ws).await, Event::Text(_)),
        "ready is malformed"
    );
    drop(ws);
    sim.push_fault(Service::GradiumStt, Fault::new(FaultKind::DropMidUtterance));
    let mut ws = connect(&url, &[("x-api-key", "k")]).await;
    send_json(
        &mut ws,
        json!({"type": "setup", "input_format": "pcm_16000"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    for c in chunks(&speech(16000, 1.0), 16000, 80) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(c);
        if ws
            .send(Message::Text(
                json!({"type": "audio", "audio": b64}).to_string().into(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut steps = 0;
    loop {
        match next(&mut ws).await {
            Event::Json(m) => steps += (m["type"] == "step") as usize,
            Event::Gone => break,
            other => panic!("expected a drop, got {other:?}"),
        }
    }
    assert!(
        (2..12).contains(&steps),
        "cut after some speech: {steps} steps"
    );
    assert_eq!(sim.wait_idle(Duration::from_secs(2)).await.open(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn gradium_tts_close_with_code() {
    let sim = start(script("[sim]\ntts_engine = \"tone\"")).await;
    sim.push_fault(Service::GradiumTts, Fault::close(3, 1011));
    let mut ws = connect(
        &format!("{}/speech/tts", sim.gradium_base_url()),
        &[("x-api-key", "k")],
    )
    .await;
    send_json(
        &mut ws,
        json!({"type": "setup", "voice_id": "v", "output_format": "pcm_16000"}),
    )
    .await;
    send_json(
        &mut ws,
        json!({"type": "text", "text": "Une phrase assez longue pour parler."}),
    )
    .await;
    send_json(&mut ws, json!({"type": "end_of_stream"})).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0]["type"], "ready");
    assert_eq!(code, Some(1011));
    sim.shutdown().await;
}
