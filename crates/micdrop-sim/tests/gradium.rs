//! Gradium TTS and STT simulators against a real WebSocket client.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use micdrop_sim::{Fault, FaultKind, Service, SimScript};
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const KEY: (&str, &str) = ("x-api-key", "gd_test");

fn tone_script(extra: &str) -> SimScript {
    script(&format!("[sim]\ntts_engine = \"tone\"\n{extra}"))
}

async fn tts(sim: &micdrop_sim::SimHandle) -> Ws {
    connect(&format!("{}/speech/tts", sim.gradium_base_url()), &[KEY]).await
}

async fn stt(sim: &micdrop_sim::SimHandle) -> Ws {
    connect(&format!("{}/speech/asr", sim.gradium_base_url()), &[KEY]).await
}

fn audio_bytes(msgs: &[Value]) -> Vec<u8> {
    msgs.iter()
        .filter(|m| m["type"] == "audio")
        .flat_map(|m| B64.decode(m["audio"].as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn tts_speaks_in_the_requested_format_then_closes() {
    let sim = start(tone_script("")).await;
    for (format, rate) in [
        ("pcm_16000", 16000u32),
        ("pcm_24000", 24000),
        ("pcm", 48000),
    ] {
        let mut ws = tts(&sim).await;
        send_json(&mut ws, json!({"type": "setup", "model_name": "default", "voice_id": "YTpq7expH9539ERJ", "output_format": format})).await;
        send_json(&mut ws, json!({"type": "text", "text": "Bonjour, "})).await;
        send_json(
            &mut ws,
            json!({"type": "text", "text": "comment allez-vous ?"}),
        )
        .await;
        send_json(&mut ws, json!({"type": "end_of_stream"})).await;
        let (msgs, code) = read_until_close(&mut ws).await;
        assert_eq!(code, Some(1000), "{format}");
        let ready = &msgs[0];
        assert_eq!(ready["type"], "ready");
        assert_eq!(ready["sample_rate"], rate);
        let frame = rate as usize * 8 / 100;
        assert_eq!(ready["frame_size"], frame);
        assert!(ready["request_id"].is_string());
        assert_eq!(msgs.last().unwrap()["type"], "end_of_stream");
        let audio: Vec<&Value> = msgs.iter().filter(|m| m["type"] == "audio").collect();
        assert!(!audio.is_empty());
        for (i, a) in audio.iter().enumerate() {
            assert_eq!(
                B64.decode(a["audio"].as_str().unwrap()).unwrap().len(),
                frame * 2,
                "80 ms frames"
            );
            assert!((a["start_s"].as_f64().unwrap() - i as f64 * 0.08).abs() < 1e-6);
            assert_eq!(a["stream_id"], 0);
            assert!(a.get("client_req_id").is_none());
        }
        let words: Vec<&str> = msgs
            .iter()
            .filter(|m| m["type"] == "text")
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        assert_eq!(words, ["Bonjour,", "comment", "allez-vous", "?"]);
        // Tone duration follows the text: 4 words ≈ 1.3 s.
        let secs = audio.len() as f64 * 0.08;
        assert!((1.0..2.0).contains(&secs), "{secs}");
        let pcm = audio_bytes(&msgs);
        let energy = pcm
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]).unsigned_abs() as u64)
            .sum::<u64>();
        assert!(energy > 0);
    }
    assert_eq!(sim.wait_idle(Duration::from_secs(2)).await.open(), 0);
    assert_eq!(sim.counters().gradium_tts.sessions, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn tts_holds_the_tail_until_flush() {
    let sim = start(tone_script("")).await;
    let mut ws = tts(&sim).await;
    send_json(
        &mut ws,
        json!({"type": "setup", "voice_id": "v1", "output_format": "pcm_16000"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    send_json(&mut ws, json!({"type": "text", "text": "Un deux "})).await;
    // Two words are within the look-ahead: nothing is spoken yet.
    let early = tokio::time::timeout(Duration::from_millis(300), next(&mut ws)).await;
    assert!(early.is_err(), "no audio before flush: {early:?}");
    send_json(&mut ws, json!({"type": "text", "text": "<flush> "})).await;
    let m = next_json(&mut ws).await;
    assert_eq!(m["type"], "text");
    assert_eq!(m["text"], "Un");
    send_json(&mut ws, json!({"type": "end_of_stream"})).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(1000));
    assert_eq!(msgs.last().unwrap()["type"], "end_of_stream");
    sim.shutdown().await;
}

#[tokio::test]
async fn tts_multiplexes_requests_by_client_req_id() {
    let sim = start(tone_script("")).await;
    let mut ws = tts(&sim).await;
    for id in ["a", "b"] {
        send_json(&mut ws, json!({"type": "setup", "voice_id": "v1", "output_format": "pcm_24000",
            "client_req_id": id, "close_ws_on_eos": false, "json_config": "{\"padding_bonus\": 0}"})).await;
    }
    send_json(
        &mut ws,
        json!({"type": "text", "text": "Première phrase.", "client_req_id": "a"}),
    )
    .await;
    send_json(
        &mut ws,
        json!({"type": "text", "text": "Seconde phrase.", "client_req_id": "b"}),
    )
    .await;
    send_json(
        &mut ws,
        json!({"type": "end_of_stream", "client_req_id": "b"}),
    )
    .await;
    send_json(
        &mut ws,
        json!({"type": "end_of_stream", "client_req_id": "a"}),
    )
    .await;
    let mut eos = Vec::new();
    let mut msgs = Vec::new();
    while eos.len() < 2 {
        let m = next_json(&mut ws).await;
        assert!(
            m["client_req_id"] == "a" || m["client_req_id"] == "b",
            "{m}"
        );
        if m["type"] == "end_of_stream" {
            eos.push(m["client_req_id"].as_str().unwrap().to_string());
        }
        msgs.push(m);
    }
    eos.sort();
    assert_eq!(eos, ["a", "b"]);
    for id in ["a", "b"] {
        let mine: Vec<&Value> = msgs.iter().filter(|m| m["client_req_id"] == id).collect();
        assert_eq!(mine[0]["type"], "ready");
        assert!(mine.iter().any(|m| m["type"] == "audio"));
    }
    // The socket stays open (close_ws_on_eos false) for another request.
    send_json(&mut ws, json!({"type": "setup", "voice_id": "v1", "output_format": "pcm_24000", "client_req_id": "c", "close_ws_on_eos": true})).await;
    send_json(
        &mut ws,
        json!({"type": "text", "text": "Encore.", "client_req_id": "c"}),
    )
    .await;
    send_json(
        &mut ws,
        json!({"type": "end_of_stream", "client_req_id": "c"}),
    )
    .await;
    let (rest, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(1000));
    assert_eq!(rest.last().unwrap()["type"], "end_of_stream");
    sim.shutdown().await;
}

#[tokio::test]
async fn tts_errors_and_close_codes() {
    let sim = start(tone_script(
        "[sim.gradium]\nmax_sessions = 1\napi_key = \"gd_test\"",
    ))
    .await;
    let url = format!("{}/speech/tts", sim.gradium_base_url());
    // Bad key: upgrade succeeds, then error 1008 and close 1008.
    let mut ws = connect(&url, &[("x-api-key", "gd_wrong")]).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(
        msgs,
        [json!({"type": "error", "message": "API key is revoked or expired", "code": 1008})]
    );
    assert_eq!(code, Some(1008));
    // Text before setup.
    sim.wait_idle(Duration::from_secs(2)).await;
    let mut ws = tts(&sim).await;
    send_json(&mut ws, json!({"type": "text", "text": "hi"})).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(msgs[0]["code"], 1002);
    assert_eq!(code, Some(1002));
    // Bad format.
    sim.wait_idle(Duration::from_secs(2)).await;
    let mut ws = tts(&sim).await;
    send_json(
        &mut ws,
        json!({"type": "setup", "voice_id": "v", "output_format": "mp3"}),
    )
    .await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(msgs[0]["type"], "error");
    assert_eq!(code, Some(1008));
    // The `default` voice id does not exist.
    sim.wait_idle(Duration::from_secs(2)).await;
    let mut ws = tts(&sim).await;
    send_json(
        &mut ws,
        json!({"type": "setup", "voice_id": "default", "output_format": "pcm"}),
    )
    .await;
    let (_, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(1011));
    // Concurrency: a second socket while one is open.
    sim.wait_idle(Duration::from_secs(2)).await;
    let _first = tts(&sim).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = tts(&sim).await;
    let (msgs, code) = read_until_close(&mut second).await;
    assert_eq!(msgs[0]["code"], 1008);
    assert_eq!(code, Some(1008));
    drop(_first);
    assert_eq!(sim.wait_idle(Duration::from_secs(2)).await.open(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn tts_faults_status_drop_and_hang() {
    let sim = start(tone_script("")).await;
    sim.push_fault(Service::GradiumTts, Fault::status(503));
    let r =
        tokio_tungstenite::connect_async(format!("{}/speech/tts", sim.gradium_base_url())).await;
    assert!(r.is_err(), "upgrade refused with 503");
    sim.push_fault(Service::GradiumTts, Fault::new(FaultKind::DropMidUtterance));
    let mut ws = tts(&sim).await;
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
    let mut saw_audio = false;
    loop {
        match next(&mut ws).await {
            Event::Json(m) => saw_audio |= m["type"] == "audio",
            Event::Gone => break,
            other => panic!("expected a drop, got {other:?}"),
        }
    }
    assert!(saw_audio);
    sim.push_fault(Service::GradiumTts, Fault::new(FaultKind::Hang));
    let mut ws = tts(&sim).await;
    send_json(
        &mut ws,
        json!({"type": "setup", "voice_id": "v", "output_format": "pcm_16000"}),
    )
    .await;
    let r = tokio::time::timeout(Duration::from_millis(300), next(&mut ws)).await;
    assert!(r.is_err(), "no ready from a hung server");
    drop(ws);
    assert_eq!(sim.wait_idle(Duration::from_secs(2)).await.open(), 0);
    assert_eq!(sim.counters().gradium_tts.faults, 3);
    sim.shutdown().await;
}

async fn stt_setup(ws: &mut Ws, format: &str) -> Value {
    send_json(
        ws,
        json!({"type": "setup", "model_name": "default", "input_format": format,
        "json_config": {"language": "fr", "delay_in_frames": 8}}),
    )
    .await;
    next_json(ws).await
}

async fn send_stt_audio(ws: &mut Ws, audio: &[u8], rate: u32) {
    for c in chunks(audio, rate, 80) {
        send_json(ws, json!({"type": "audio", "audio": B64.encode(c)})).await;
    }
}

#[tokio::test]
async fn stt_streams_words_steps_and_flushes() {
    let sim = start(script(
        "[sim]\ntranscripts = [\"Bonjour tout le monde\", \"Deuxième\"]",
    ))
    .await;
    let mut ws = stt(&sim).await;
    let ready = stt_setup(&mut ws, "pcm_16000").await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["sample_rate"], 24000);
    assert_eq!(ready["frame_size"], 1920);
    assert_eq!(ready["delay_in_frames"], 8);
    let mut audio = speech(16000, 1.2);
    audio.extend(silence(16000, 1.2));
    send_stt_audio(&mut ws, &audio, 16000).await;
    send_json(&mut ws, json!({"type": "flush", "flush_id": 7})).await;
    let mut msgs = Vec::new();
    loop {
        let m = next_json(&mut ws).await;
        let done = m["type"] == "flushed";
        msgs.push(m);
        if done {
            break;
        }
    }
    assert_eq!(
        msgs.last().unwrap(),
        &json!({"type": "flushed", "flush_id": 7})
    );
    let steps: Vec<&Value> = msgs.iter().filter(|m| m["type"] == "step").collect();
    assert_eq!(steps.len(), 30, "one step per 80 ms");
    assert_eq!(steps[0]["step_duration_s"], 0.08);
    let horizons: Vec<f64> = steps[0]["vad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["horizon_s"].as_f64().unwrap())
        .collect();
    assert_eq!(horizons, [0.5, 1.0, 2.0, 3.0]);
    let p2 = |s: &Value| s["vad"][2]["inactivity_prob"].as_f64().unwrap();
    assert!(p2(steps[10]) < 0.5, "speaking");
    assert!(p2(steps[29]) > 0.5, "turn over");
    let words: Vec<&str> = msgs
        .iter()
        .filter(|m| m["type"] == "text")
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(words, ["Bonjour", "tout", "le", "monde"]);
    let last_text = msgs.iter().rposition(|m| m["type"] == "text").unwrap();
    assert_eq!(
        msgs[last_text + 1]["type"],
        "end_text",
        "end_text right after the last word"
    );
    let stop = msgs[last_text + 1]["stop_s"].as_f64().unwrap();
    assert!((stop - 1.2).abs() < 0.05, "{stop}");
    // Text arrives before the step that ends the segment is far past: words come during speech.
    let first_text = msgs.iter().position(|m| m["type"] == "text").unwrap();
    let steps_before = msgs[..first_text]
        .iter()
        .filter(|m| m["type"] == "step")
        .count();
    assert!(
        steps_before < 15,
        "first word while speaking ({steps_before} steps)"
    );
    // Second utterance, flushed while still speaking, then end of stream.
    send_stt_audio(&mut ws, &speech(16000, 0.5), 16000).await;
    send_json(&mut ws, json!({"type": "flush", "flush_id": "x"})).await;
    let mut words = Vec::new();
    loop {
        let m = next_json(&mut ws).await;
        if m["type"] == "text" {
            words.push(m["text"].as_str().unwrap().to_string());
        }
        if m["type"] == "flushed" {
            assert_eq!(m["flush_id"], "x");
            break;
        }
    }
    assert_eq!(words, ["Deuxième"]);
    send_json(&mut ws, json!({"type": "end_of_stream"})).await;
    let (rest, code) = read_until_close(&mut ws).await;
    assert_eq!(rest.last().unwrap()["type"], "end_of_stream");
    assert_eq!(code, Some(1000));
    assert_eq!(sim.wait_idle(Duration::from_secs(2)).await.open(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn stt_rejects_bad_setup_and_audio_before_setup() {
    let sim = start(SimScript::default()).await;
    let mut ws = stt(&sim).await;
    send_json(&mut ws, json!({"type": "audio", "audio": ""})).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(msgs[0]["type"], "error");
    assert_eq!(code, Some(1002));
    let mut ws = stt(&sim).await;
    send_json(
        &mut ws,
        json!({"type": "setup", "input_format": "pcm", "json_config": {"delay_in_frames": 9}}),
    )
    .await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert!(
        msgs[0]["message"]
            .as_str()
            .unwrap()
            .contains("delay_in_frames")
    );
    assert_eq!(code, Some(1008));
    sim.shutdown().await;
}

#[tokio::test]
async fn tts_auto_engine_speaks_real_speech_when_espeak_is_installed() {
    // `auto`: espeak-ng when installed (this machine's test script installs it), else the tone.
    let sim = start(SimScript::default()).await;
    let mut ws = tts(&sim).await;
    send_json(
        &mut ws,
        json!({"type": "setup", "voice_id": "v", "output_format": "pcm_16000",
        "json_config": {"rewrite_rules": "fr"}}),
    )
    .await;
    send_json(
        &mut ws,
        json!({"type": "text", "text": "Bonjour, il est midi."}),
    )
    .await;
    send_json(&mut ws, json!({"type": "end_of_stream"})).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(1000));
    let pcm = audio_bytes(&msgs);
    assert_eq!(pcm.len() % 2560, 0);
    let samples: Vec<i16> = pcm
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let secs = samples.len() as f64 / 16000.0;
    assert!((0.6..4.0).contains(&secs), "{secs} s for four words");
    let rms =
        (samples.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / samples.len() as f64).sqrt();
    assert!(rms > 300.0, "audible: rms {rms}");
    sim.shutdown().await;
}

#[tokio::test]
async fn tts_auto_falls_back_to_the_tone_and_espeak_engine_reports_errors() {
    // An espeak voice that does not exist: `auto` still speaks (tone), `espeak` fails with 1011
    // when espeak-ng is installed (and when it is not).
    for (engine, ok) in [("auto", true), ("espeak", false)] {
        let sim = start(script(&format!(
            "[sim]\ntts_engine = \"{engine}\"\n[sim.gradium]\nvoices = {{ v = \"zz\" }}"
        )))
        .await;
        let mut ws = tts(&sim).await;
        send_json(
            &mut ws,
            json!({"type": "setup", "voice_id": "v", "output_format": "pcm_16000"}),
        )
        .await;
        send_json(&mut ws, json!({"type": "text", "text": "Bonjour."})).await;
        send_json(&mut ws, json!({"type": "end_of_stream"})).await;
        let (msgs, code) = read_until_close(&mut ws).await;
        if ok {
            assert_eq!(code, Some(1000), "{engine}");
            assert!(!audio_bytes(&msgs).is_empty());
        } else {
            assert_eq!(code, Some(1011), "{engine}");
            assert_eq!(msgs.last().unwrap()["type"], "error");
        }
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn session_cap_sends_error_1008_and_closes() {
    let sim = start(script("[sim.gradium]\nmax_session_ms = 200")).await;
    for path in ["tts", "asr"] {
        let mut ws = connect(&format!("{}/speech/{path}", sim.gradium_base_url()), &[KEY]).await;
        let t0 = std::time::Instant::now();
        let (msgs, code) = read_until_close(&mut ws).await;
        assert!(t0.elapsed() >= Duration::from_millis(150), "{path}");
        assert_eq!(
            msgs,
            [json!({"type": "error", "message": "Maximum session duration reached", "code": 1008})],
            "{path}"
        );
        assert_eq!(code, Some(1008), "{path}");
    }
    assert_eq!(sim.wait_idle(Duration::from_secs(2)).await.open(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn one_shot_http_tts_streams_ndjson_or_raw_audio_and_errors_in_plain_text() {
    let sim = start(tone_script("")).await;
    let url = format!("http://{}/api/post/speech/tts", sim.addr());
    let client = reqwest::Client::new();
    let body =
        json!({"text": "Bonjour tout le monde", "voice_id": "v", "output_format": "pcm_16000"});
    let r = client
        .post(&url)
        .header("x-api-key", "k")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "ready");
    assert_eq!(lines.last().unwrap()["type"], "end_of_stream");
    assert_eq!(lines.iter().filter(|l| l["type"] == "text").count(), 4);
    let decoded: usize = audio_bytes(&lines).len();
    let mut raw_body = body.clone();
    raw_body["only_audio"] = json!(true);
    let r = client
        .post(&url)
        .header("x-api-key", "k")
        .json(&raw_body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "audio/pcm");
    assert_eq!(
        r.bytes().await.unwrap().len(),
        decoded,
        "same audio both ways"
    );
    let r = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.text().await.unwrap(),
        "error from server 1008: API key is revoked or expired"
    );
    sim.push_fault(Service::GradiumTts, Fault::status(503));
    assert_eq!(
        client
            .post(&url)
            .header("x-api-key", "k")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn stt_a_pause_inside_a_turn_keeps_one_script_entry() {
    let sim = start(script(
        "[sim]\ntranscripts = [\"Bonjour tout le monde\", \"Merci\"]",
    ))
    .await;
    let mut ws = stt(&sim).await;
    stt_setup(&mut ws, "pcm_16000").await;
    let mut audio = speech(16000, 0.6);
    audio.extend(silence(16000, 0.3));
    audio.extend(speech(16000, 0.6));
    audio.extend(silence(16000, 1.2));
    audio.extend(speech(16000, 0.5));
    audio.extend(silence(16000, 1.2));
    send_stt_audio(&mut ws, &audio, 16000).await;
    send_json(&mut ws, json!({"type": "end_of_stream"})).await;
    let (msgs, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(1000));
    let seq: Vec<String> = msgs
        .iter()
        .filter(|m| m["type"] == "text" || m["type"] == "end_text")
        .map(|m| {
            m["text"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| "|".into())
        })
        .collect();
    assert_eq!(seq, ["Bonjour", "tout", "le", "monde", "|", "Merci", "|"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn stt_may_send_the_last_words_after_flushed() {
    let sim = start(script(
        "[sim]\ntranscripts = [\"Bonjour tout le monde\"]\n[sim.gradium]\nstt_words_after_flushed = 2",
    ))
    .await;
    let mut ws = stt(&sim).await;
    stt_setup(&mut ws, "pcm_16000").await;
    let mut audio = speech(16000, 1.2);
    audio.extend(silence(16000, 0.2));
    send_stt_audio(&mut ws, &audio, 16000).await;
    send_json(&mut ws, json!({"type": "flush", "flush_id": 3})).await;
    let mut order = Vec::new();
    loop {
        let m = next_json(&mut ws).await;
        match m["type"].as_str().unwrap() {
            "text" => order.push(m["text"].as_str().unwrap().to_owned()),
            "flushed" => order.push("<flushed>".into()),
            "end_text" => {
                order.push("<end_text>".into());
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        order,
        ["Bonjour", "tout", "<flushed>", "le", "monde", "<end_text>"]
    );
    sim.shutdown().await;
}
