//! Timing knobs (real delays, not zero-delay mode) and script-wide options.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use futures::{SinkExt, StreamExt};
use micdrop_sim::{Fault, Service, SimHandle, SimScript, Simulators};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn start_timed(toml: &str) -> SimHandle {
    Simulators::start("127.0.0.1:0".parse().unwrap(), script(toml))
        .await
        .unwrap()
}

#[tokio::test]
async fn mistral_time_to_first_token_and_inter_token_delay() {
    let sim = start_timed("[sim.mistral]\nttft_ms = 150\ninter_token_ms = 20").await;
    let t0 = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/chat/completions", sim.mistral_base_url()))
        .bearer_auth("k")
        .json(&json!({"model": "mistral-small-latest", "stream": true,
            "messages": [{"role": "user", "content": "un deux trois quatre cinq"}]}))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut buf = String::new();
    let mut times = Vec::new();
    while let Some(b) = stream.next().await {
        buf.push_str(std::str::from_utf8(&b.unwrap()).unwrap());
        while let Some(i) = buf.find("\n\n") {
            let ev = buf[..i].to_string();
            buf.drain(..i + 2);
            times.push((t0.elapsed(), ev));
        }
    }
    assert!(
        times[0].0 < Duration::from_millis(120),
        "role chunk comes at once"
    );
    assert!(
        times[1].0 >= Duration::from_millis(150),
        "first token after TTFT: {:?}",
        times[1].0
    );
    let n = times.len() - 2; // content chunks (role chunk and [DONE] excluded)
    let last = times[times.len() - 2].0;
    assert!(
        last >= Duration::from_millis(150 + 20 * (n as u64 - 1)),
        "{last:?} for {n} tokens"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn gladia_final_comes_final_delay_after_speech_end() {
    let sim =
        start_timed("[sim]\ntranscripts = [\"Bonjour\"]\n[sim.gladia]\nfinal_delay_ms = 250").await;
    let r: Value = reqwest::Client::new()
        .post(format!("{}/v2/live", sim.gladia_base_url()))
        .header("x-gladia-key", "k")
        .json(&json!({"endpointing": 0.2, "messages_config": {"receive_acknowledgments": false}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ws = connect(r["url"].as_str().unwrap(), &[]).await;
    let mut audio = speech(16000, 0.6);
    audio.extend(silence(16000, 0.5));
    for c in chunks(&audio, 16000, 100) {
        ws.send(Message::Binary(c.into())).await.unwrap();
    }
    let mut end_at = None;
    loop {
        let m = next_json(&mut ws).await;
        if m["type"] == "speech_end" {
            end_at = Some(Instant::now());
        }
        if m["type"] == "transcript" {
            let waited = end_at.expect("speech_end first").elapsed();
            assert!(
                waited >= Duration::from_millis(230),
                "final after {waited:?}"
            );
            assert_eq!(m["data"]["utterance"]["text"], " Bonjour");
            break;
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn gradium_tts_first_audio_and_pacing() {
    let sim = start_timed(
        "[sim]\ntts_engine = \"tone\"\n[sim.gradium]\nready_delay_ms = 50\ntts_first_audio_ms = 150\ntts_realtime_factor = 0.5",
    )
    .await;
    let mut ws = connect(
        &format!("{}/speech/tts", sim.gradium_base_url()),
        &[("x-api-key", "k")],
    )
    .await;
    let t0 = Instant::now();
    send_json(
        &mut ws,
        json!({"type": "setup", "voice_id": "v", "output_format": "pcm_16000"}),
    )
    .await;
    send_json(
        &mut ws,
        json!({"type": "text", "text": "Bonjour tout le monde."}),
    )
    .await;
    send_json(&mut ws, json!({"type": "end_of_stream"})).await;
    let ready = next_json(&mut ws).await;
    assert_eq!(ready["type"], "ready");
    assert!(t0.elapsed() >= Duration::from_millis(50));
    let mut first = None;
    let mut frames = 0;
    loop {
        let m = next_json(&mut ws).await;
        if m["type"] == "audio" {
            first.get_or_insert_with(|| t0.elapsed());
            frames += 1;
        }
        if m["type"] == "end_of_stream" {
            break;
        }
    }
    let first = first.unwrap();
    let total = t0.elapsed();
    assert!(
        first >= Duration::from_millis(150),
        "first audio at {first:?}"
    );
    let audio_s = frames as f64 * 0.08;
    let min = Duration::from_secs_f64(0.15 + 0.5 * (audio_s - 0.08));
    assert!(
        total >= min,
        "{total:?} for {audio_s} s of audio at RTF 0.5"
    );
    assert!(
        total < Duration::from_secs_f64(0.5 + audio_s),
        "faster than real time: {total:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn gradium_stt_flush_waits_the_final_delay() {
    let sim = start_timed("[sim]\ntranscripts = [\"Oui\"]\n[sim.gradium]\nstt_final_delay_ms = 200\nready_delay_ms = 0").await;
    let mut ws = connect(
        &format!("{}/speech/asr", sim.gradium_base_url()),
        &[("x-api-key", "k")],
    )
    .await;
    send_json(&mut ws, json!({"type": "setup", "input_format": "pcm"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    for c in chunks(&speech(24000, 0.5), 24000, 80) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(c);
        send_json(&mut ws, json!({"type": "audio", "audio": b64})).await;
    }
    let t0 = Instant::now();
    send_json(&mut ws, json!({"type": "flush", "flush_id": "1"})).await;
    let mut words = Vec::new();
    loop {
        let m = next_json(&mut ws).await;
        if m["type"] == "text" {
            words.push(m["text"].clone());
        }
        if m["type"] == "flushed" {
            break;
        }
    }
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert_eq!(words, [json!("Oui")]);
    sim.shutdown().await;
}

#[tokio::test]
async fn global_transcript_scope_continues_across_sessions() {
    let sim = start(script(
        "[sim]\ntranscript_scope = \"global\"\ntranscripts = [\"Un\", \"Deux\"]",
    ))
    .await;
    let mut heard = Vec::new();
    for _ in 0..2 {
        let mut ws = connect(
            &format!("{}/speech/asr", sim.gradium_base_url()),
            &[("x-api-key", "k")],
        )
        .await;
        send_json(
            &mut ws,
            json!({"type": "setup", "input_format": "pcm_16000"}),
        )
        .await;
        next_json(&mut ws).await;
        for c in chunks(&speech(16000, 0.5), 16000, 80) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(c);
            send_json(&mut ws, json!({"type": "audio", "audio": b64})).await;
        }
        send_json(&mut ws, json!({"type": "end_of_stream"})).await;
        let (msgs, _) = read_until_close(&mut ws).await;
        heard.extend(
            msgs.iter()
                .filter(|m| m["type"] == "text")
                .map(|m| m["text"].clone()),
        );
    }
    assert_eq!(heard, [json!("Un"), json!("Deux")]);
    sim.shutdown().await;
}

#[tokio::test]
async fn stt_close_fault_after_ready() {
    let sim = start(SimScript::default()).await;
    sim.push_fault(Service::GradiumStt, Fault::close(1, 1011));
    let mut ws = connect(
        &format!("{}/speech/asr", sim.gradium_base_url()),
        &[("x-api-key", "k")],
    )
    .await;
    send_json(&mut ws, json!({"type": "setup", "input_format": "pcm"})).await;
    send_json(&mut ws, json!({"type": "audio", "audio": base64::engine::general_purpose::STANDARD.encode(silence(24000, 0.2))})).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(types(&msgs), ["ready"]);
    assert_eq!(code, Some(1011));
    assert_eq!(sim.wait_idle(Duration::from_secs(2)).await.open(), 0);
    let _ = ws.close(None).await;
    sim.shutdown().await;
}
