//! Gladia live v2 simulator against real HTTP and WebSocket clients.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use futures::SinkExt;
use micdrop_sim::{Fault, FaultKind, Service, SimScript};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const RATE: u32 = 16000;

async fn init(base: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v2/live?region=eu-west"))
        .header("X-Gladia-Key", "test-key")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn config(partials: bool) -> Value {
    json!({
        "encoding": "wav/pcm", "bit_depth": 16, "sample_rate": RATE, "channels": 1,
        "endpointing": 0.3, "maximum_duration_without_endpointing": 15,
        "language_config": {"languages": ["fr"], "code_switching": false},
        "messages_config": {
            "receive_partial_transcripts": partials, "receive_final_transcripts": true,
            "receive_speech_events": true, "receive_acknowledgments": true,
            "receive_post_processing_events": true, "receive_lifecycle_events": true,
            "receive_errors": true,
        },
    })
}

async fn open(base: &str, body: Value) -> (Value, Ws) {
    let r = init(base, body).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let ws = connect(v["url"].as_str().unwrap(), &[]).await;
    (v, ws)
}

async fn send_audio(ws: &mut Ws, audio: &[u8]) {
    for c in chunks(audio, RATE, 100) {
        ws.send(Message::Binary(c.into())).await.unwrap();
    }
}

/// One user turn: 1 s of speech then 1 s of silence (more than the 0.8 s turn gap).
fn utterance() -> Vec<u8> {
    let mut a = speech(RATE, 1.0);
    a.extend(silence(RATE, 1.0));
    a
}

#[tokio::test]
async fn init_returns_id_created_at_and_a_session_url() {
    let sim = start(SimScript::default()).await;
    let r = init(&sim.gladia_base_url(), config(false)).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("x-aipi-call-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v.as_object().unwrap().len(), 3);
    assert!(uuid_like(v["id"].as_str().unwrap()));
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
    let url = v["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("ws://{}/v2/live?token=", sim.addr())),
        "{url}"
    );
    assert_eq!(sim.counters().gladia.open_sessions, 1);
    sim.shutdown().await;
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|&c| c == '-').count() == 4
}

#[tokio::test]
async fn init_errors_401_400_429() {
    let sim = start(script("[sim.gladia]\nmax_sessions = 1")).await;
    let base = sim.gladia_base_url();
    let r = reqwest::Client::new()
        .post(format!("{base}/v2/live"))
        .json(&config(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert!(b["message"].is_string() && b["request_id"].as_str().unwrap().starts_with("G-"));
    let r = init(&base, json!({"sample_rate": 22050, "languge": "fr"})).await;
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    let errs: Vec<&str> = b["validation_errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        errs.iter()
            .any(|e| e.starts_with("sample_rate must be one of")),
        "{errs:?}"
    );
    assert!(
        errs.contains(&"property languge should not exist"),
        "{errs:?}"
    );
    let r = init(
        &base,
        json!({"messages_config": {"receive_partial_transcripts": "yes"}}),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(init(&base, json!({})).await.status(), 201);
    let r = init(&base, json!({})).await;
    assert_eq!(r.status(), 429, "over the concurrency limit");
    assert_eq!(sim.counters().gladia.rejected, 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn partials_and_final_share_the_utterance_id_in_spec_order() {
    let sim = start(script(
        "[sim]\ntranscripts = [\"Bonjour tout le monde\", \"Quelle heure est-il ?\"]",
    ))
    .await;
    let (init, mut ws) = open(&sim.gladia_base_url(), config(true)).await;
    send_audio(&mut ws, &utterance()).await;
    send_audio(&mut ws, &utterance()).await;
    send_json(&mut ws, json!({"type": "stop_recording"})).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(1000));
    for m in &msgs {
        assert_eq!(m["session_id"], init["id"]);
        assert!(m["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let t = types(&msgs);
    assert_eq!(t[0], "start_session");
    assert_eq!(t[1], "start_recording");
    let non_ack: Vec<&str> = t
        .iter()
        .map(String::as_str)
        .filter(|t| *t != "audio_chunk")
        .collect();
    let firsts: Vec<&str> = non_ack
        .iter()
        .copied()
        .filter(|t| *t != "transcript")
        .collect();
    assert_eq!(
        firsts,
        [
            "start_session",
            "start_recording",
            "speech_start",
            "speech_end",
            "speech_start",
            "speech_end",
            "stop_recording",
            "end_recording",
            "post_transcript",
            "post_final_transcript",
            "end_session"
        ]
    );
    let transcripts: Vec<&Value> = msgs.iter().filter(|m| m["type"] == "transcript").collect();
    let finals: Vec<&Value> = transcripts
        .iter()
        .copied()
        .filter(|m| m["data"]["is_final"] == true)
        .collect();
    assert_eq!(finals.len(), 2);
    assert_eq!(
        finals[0]["data"]["utterance"]["text"],
        " Bonjour tout le monde"
    );
    assert_eq!(
        finals[1]["data"]["utterance"]["text"],
        " Quelle heure est-il ?"
    );
    assert_ne!(finals[0]["data"]["id"], finals[1]["data"]["id"]);
    let u = &finals[0]["data"]["utterance"];
    assert_eq!(u["language"], "fr");
    assert_eq!(u["channel"], 0);
    assert_eq!(u["words"].as_array().unwrap().len(), 4);
    assert!((u["start"].as_f64().unwrap() - 0.0).abs() < 0.05, "{u}");
    assert!((u["end"].as_f64().unwrap() - 1.0).abs() < 0.05, "{u}");
    // Partials precede their final and share its id; text grows.
    for f in &finals {
        let id = &f["data"]["id"];
        let partials: Vec<&Value> = transcripts
            .iter()
            .copied()
            .filter(|m| &m["data"]["id"] == id && m["data"]["is_final"] == false)
            .collect();
        assert!(!partials.is_empty(), "partials for {id}");
        let lens: Vec<usize> = partials
            .iter()
            .map(|p| p["data"]["utterance"]["text"].as_str().unwrap().len())
            .collect();
        assert!(lens.windows(2).all(|w| w[0] <= w[1]), "{lens:?}");
    }
    // speech_end comes before the final of its utterance.
    let pos = |pred: &dyn Fn(&Value) -> bool| msgs.iter().position(pred).unwrap();
    assert!(pos(&|m| m["type"] == "speech_end") < pos(&|m| m["data"]["is_final"] == true));
    // Acks: contiguous exclusive byte ranges, times from the format.
    let acks: Vec<&Value> = msgs.iter().filter(|m| m["type"] == "audio_chunk").collect();
    assert_eq!(acks.len(), 40);
    let mut prev = 0;
    for a in &acks {
        assert_eq!(a["acknowledged"], true);
        assert_eq!(a["error"], Value::Null);
        let r = a["data"]["byte_range"].as_array().unwrap();
        assert_eq!(r[0].as_u64().unwrap(), prev);
        prev = r[1].as_u64().unwrap();
    }
    assert_eq!(prev, 2 * 4 * RATE as u64);
    assert_eq!(acks[0]["data"]["time_range"], json!([0.0, 0.1]));
    let stop = &msgs[t.iter().position(|t| t == "stop_recording").unwrap()];
    assert_eq!(stop["acknowledged"], true);
    assert_eq!(stop["data"]["recording_duration"], 4.0);
    let post = msgs
        .iter()
        .find(|m| m["type"] == "post_final_transcript")
        .unwrap();
    assert_eq!(
        post["data"]["transcription"]["full_transcript"],
        "Bonjour tout le monde Quelle heure est-il ?"
    );
    assert_eq!(sim.wait_idle(Duration::from_secs(2)).await.open(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn messages_config_gates_messages_and_script_runs_out_politely() {
    let sim = start(script("[sim]\ntranscripts = [\"Bonjour\"]")).await;
    let body = json!({"endpointing": 0.2, "messages_config": {
        "receive_partial_transcripts": false, "receive_final_transcripts": true,
        "receive_speech_events": false, "receive_acknowledgments": false,
        "receive_post_processing_events": false, "receive_lifecycle_events": false}});
    let (_, mut ws) = open(&sim.gladia_base_url(), body).await;
    // JSON base64 audio_chunk form.
    for c in chunks(&utterance(), RATE, 100)
        .into_iter()
        .chain(chunks(&utterance(), RATE, 100))
    {
        let b64 = base64::engine::general_purpose::STANDARD.encode(c);
        send_json(
            &mut ws,
            json!({"type": "audio_chunk", "data": {"chunk": b64}}),
        )
        .await;
    }
    send_json(&mut ws, json!({"type": "stop_recording"})).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(1000));
    assert_eq!(types(&msgs), ["transcript", "transcript"]);
    assert_eq!(msgs[0]["data"]["utterance"]["text"], " Bonjour");
    assert_eq!(
        msgs[1]["data"]["utterance"]["text"],
        " (1.0 seconds of speech)"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn stop_flushes_the_open_utterance_and_reconnect_after_end_gets_4403() {
    let sim = start(script("[sim]\ntranscripts = [\"Salut\"]")).await;
    let (init, mut ws) = open(&sim.gladia_base_url(), config(false)).await;
    send_audio(&mut ws, &speech(RATE, 0.8)).await;
    send_json(&mut ws, json!({"type": "stop_recording"})).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(1000));
    let fin = msgs
        .iter()
        .find(|m| m["type"] == "transcript")
        .expect("final on stop");
    assert_eq!(fin["data"]["utterance"]["text"], " Salut");
    assert_eq!(
        sim.wait_idle(Duration::from_secs(2))
            .await
            .gladia
            .open_sessions,
        0
    );
    let mut ws = connect(init["url"].as_str().unwrap(), &[]).await;
    let (_, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(4403));
    sim.shutdown().await;
}

#[tokio::test]
async fn drop_mid_utterance_then_resume_on_the_same_url() {
    let sim = start(script("[sim]\ntranscripts = [\"Une phrase\"]")).await;
    sim.push_fault(Service::Gladia, Fault::new(FaultKind::DropMidUtterance));
    let (init, mut ws) = open(&sim.gladia_base_url(), config(false)).await;
    let audio = utterance();
    let parts = chunks(&audio, RATE, 100);
    let mut acked = 0u64;
    let mut dropped_at = None;
    for (i, c) in parts.iter().enumerate() {
        if ws.send(Message::Binary(c.clone().into())).await.is_err() {
            dropped_at = Some(i);
            break;
        }
    }
    loop {
        match next(&mut ws).await {
            Event::Json(m) if m["type"] == "audio_chunk" => {
                acked = m["data"]["byte_range"][1].as_u64().unwrap();
            }
            Event::Json(_) => {}
            Event::Gone => break,
            other => panic!("expected an abrupt drop, got {other:?}"),
        }
    }
    let _ = dropped_at;
    assert!(acked > 0 && acked < audio.len() as u64, "acked {acked}");
    // Reconnect and replay the un-acknowledged audio.
    let mut ws = connect(init["url"].as_str().unwrap(), &[]).await;
    send_audio(&mut ws, &audio[acked as usize..]).await;
    send_json(&mut ws, json!({"type": "stop_recording"})).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(1000));
    let finals: Vec<&Value> = msgs.iter().filter(|m| m["type"] == "transcript").collect();
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0]["data"]["utterance"]["text"], " Une phrase");
    let first_ack = msgs.iter().find(|m| m["type"] == "audio_chunk").unwrap();
    // The session kept its byte counter (at least what the client saw acknowledged; an abrupt
    // drop may lose the last acks in flight).
    assert!(first_ack["data"]["byte_range"][0].as_u64().unwrap() >= acked);
    let c = sim.wait_idle(Duration::from_secs(2)).await;
    assert_eq!(c.gladia.connections, 2);
    assert_eq!(c.gladia.faults, 1);
    assert_eq!(c.open(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn close_fault_and_init_status_fault() {
    let sim = start(SimScript::default()).await;
    sim.push_fault(Service::Gladia, Fault::status(503));
    sim.push_fault(Service::Gladia, Fault::close(2, 1011));
    assert_eq!(
        init(&sim.gladia_base_url(), config(false)).await.status(),
        503
    );
    let (_, mut ws) = open(&sim.gladia_base_url(), config(false)).await;
    send_audio(&mut ws, &silence(RATE, 0.5)).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(
        types(&msgs),
        ["start_session", "start_recording"],
        "closed after 2 messages"
    );
    assert_eq!(code, Some(1011));
    sim.shutdown().await;
}

#[tokio::test]
async fn idle_timeout_closes_and_ends_the_session() {
    let sim = start(script("[sim.gladia]\nidle_timeout_ms = 200")).await;
    let (_, mut ws) = open(&sim.gladia_base_url(), config(false)).await;
    let (_, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(1000));
    let c = sim.wait_idle(Duration::from_secs(2)).await;
    assert_eq!(c.gladia.open_sessions, 0);
    // A session nobody connects to expires too.
    let r = init(&sim.gladia_base_url(), json!({})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(sim.counters().gladia.open_sessions, 1);
    assert_eq!(sim.wait_idle(Duration::from_secs(2)).await.open(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn oversized_frame_and_second_stop() {
    let sim = start(SimScript::default()).await;
    let (_, mut ws) = open(&sim.gladia_base_url(), config(false)).await;
    ws.send(Message::Binary(vec![0u8; 1024 * 1024 + 2].into()))
        .await
        .unwrap();
    let (_, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(1009));
    sim.shutdown().await;
}

#[tokio::test]
async fn client_close_1000_ends_the_session_other_closes_keep_it() {
    let sim = start(SimScript::default()).await;
    let (init, mut ws) = open(&sim.gladia_base_url(), config(false)).await;
    send_audio(&mut ws, &silence(RATE, 0.2)).await;
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away,
        reason: "".into(),
    }))
    .await
    .unwrap();
    drop(ws);
    let c = sim.wait_idle(Duration::from_millis(300)).await;
    assert_eq!(
        c.gladia.open_sessions, 1,
        "1001: the session waits for a reconnection"
    );
    let mut ws = connect(init["url"].as_str().unwrap(), &[]).await;
    send_audio(&mut ws, &silence(RATE, 0.2)).await;
    ws.close(None).await.unwrap(); // no code
    drop(ws);
    assert_eq!(
        sim.wait_idle(Duration::from_millis(300))
            .await
            .gladia
            .open_sessions,
        1
    );
    let mut ws = connect(init["url"].as_str().unwrap(), &[]).await;
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .unwrap();
    drop(ws);
    assert_eq!(
        sim.wait_idle(Duration::from_secs(2)).await.open(),
        0,
        "1000 ends the recording"
    );
    let mut ws = connect(init["url"].as_str().unwrap(), &[]).await;
    let (_, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(4403));
    sim.shutdown().await;
}

fn turn_with_pause() -> Vec<u8> {
    let mut a = speech(RATE, 0.6);
    a.extend(silence(RATE, 0.3));
    a.extend(speech(RATE, 0.6));
    a.extend(silence(RATE, 1.0));
    a
}

#[tokio::test]
async fn a_pause_inside_a_turn_keeps_one_script_entry_and_one_final() {
    let sim = start(script(
        "[sim]\ntranscripts = [\"Bonjour, quelle heure est-il ?\", \"Merci\"]",
    ))
    .await;
    let (_, mut ws) = open(&sim.gladia_base_url(), config(false)).await;
    send_audio(&mut ws, &turn_with_pause()).await;
    send_audio(&mut ws, &utterance()).await;
    send_json(&mut ws, json!({"type": "stop_recording"})).await;
    let (msgs, _) = read_until_close(&mut ws).await;
    let t: Vec<String> = types(&msgs)
        .into_iter()
        .filter(|t| t != "audio_chunk")
        .collect();
    let speech: Vec<&str> = t
        .iter()
        .map(String::as_str)
        .filter(|t| t.starts_with("speech") || *t == "transcript")
        .collect();
    assert_eq!(
        speech,
        [
            "speech_start",
            "speech_end",
            "speech_start",
            "speech_end",
            "transcript",
            "speech_start",
            "speech_end",
            "transcript"
        ]
    );
    let finals: Vec<&Value> = msgs.iter().filter(|m| m["type"] == "transcript").collect();
    assert_eq!(
        finals[0]["data"]["utterance"]["text"],
        " Bonjour, quelle heure est-il ?"
    );
    assert!((finals[0]["data"]["utterance"]["end"].as_f64().unwrap() - 1.5).abs() < 0.05);
    assert_eq!(finals[1]["data"]["utterance"]["text"], " Merci");
    sim.shutdown().await;
}

#[tokio::test]
async fn turn_gap_zero_makes_every_utterance_a_turn() {
    let sim = start(script(
        "[sim]\nturn_gap_ms = 0\ntranscripts = [\"Bonjour,\", \"quelle heure est-il ?\"]",
    ))
    .await;
    let (_, mut ws) = open(&sim.gladia_base_url(), config(false)).await;
    send_audio(&mut ws, &turn_with_pause()).await;
    send_json(&mut ws, json!({"type": "stop_recording"})).await;
    let (msgs, _) = read_until_close(&mut ws).await;
    let texts: Vec<&str> = msgs
        .iter()
        .filter(|m| m["type"] == "transcript")
        .map(|m| m["data"]["utterance"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, [" Bonjour,", " quelle heure est-il ?"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_final_comes_when_the_client_stops_streaming() {
    let sim = start(script("[sim]\ntranscripts = [\"Oui\"]\nturn_idle_ms = 150")).await;
    let (_, mut ws) = open(&sim.gladia_base_url(), config(false)).await;
    // The turn's end: 0.3 s of silence only (less than the turn gap), then nothing.
    let mut a = speech(RATE, 0.6);
    a.extend(silence(RATE, 0.4));
    send_audio(&mut ws, &a).await;
    let t0 = std::time::Instant::now();
    loop {
        let m = next_json(&mut ws).await;
        if m["type"] == "transcript" {
            assert_eq!(m["data"]["utterance"]["text"], " Oui");
            break;
        }
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(120),
        "{:?}",
        t0.elapsed()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn result_lookup_while_connected_and_after_the_end() {
    let sim = start(script("[sim]\ntranscripts = [\"Salut\"]")).await;
    let (init, mut ws) = open(&sim.gladia_base_url(), config(false)).await;
    send_audio(&mut ws, &utterance()).await;
    let url = format!(
        "{}/v2/live/{}",
        sim.gladia_base_url(),
        init["id"].as_str().unwrap()
    );
    let get = || async {
        tokio::time::timeout(Duration::from_secs(2), reqwest::get(&url))
            .await
            .expect("answered while the socket is open")
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    assert_eq!(get().await["status"], "processing");
    send_json(&mut ws, json!({"type": "stop_recording"})).await;
    read_until_close(&mut ws).await;
    sim.wait_idle(Duration::from_secs(2)).await;
    let done = get().await;
    assert_eq!(done["status"], "done");
    assert_eq!(done["result"]["transcription"]["full_transcript"], "Salut");
    sim.shutdown().await;
}

#[tokio::test]
async fn strict_mode_closes_an_utterance_only_after_enough_trailing_silence() {
    let sim = start(script(
        "[sim]\ntranscripts = [\"Oui\"]\nturn_idle_ms = 50\n[sim.gladia]\nstrict_end_silence_ms = 1000",
    ))
    .await;
    let (_, mut ws) = open(&sim.gladia_base_url(), config(false)).await;
    // 0.6 s of speech, 0.5 s of silence, then the client stops streaming for a while: the
    // default mode would send the final now (see the test above); strict mode waits for audio.
    let mut a = speech(RATE, 0.6);
    a.extend(silence(RATE, 0.5));
    send_audio(&mut ws, &a).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Then 100 ms chunks of silence: the final follows the chunk that completes 1 s of silence
    // after the speech (byte 51,200 = 1.6 s of audio), not one before.
    send_audio(&mut ws, &silence(RATE, 0.5)).await;
    let mut last_ack = 0;
    loop {
        let m = next_json(&mut ws).await;
        match m["type"].as_str() {
            Some("audio_chunk") => last_ack = m["data"]["byte_range"][1].as_u64().unwrap(),
            Some("transcript") => {
                assert_eq!(m["data"]["utterance"]["text"], " Oui");
                assert_eq!(m["data"]["utterance"]["end"], 0.6);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(last_ack, 51_200, "final after 1 s of trailing silence");
    sim.shutdown().await;
}
