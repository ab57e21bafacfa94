use super::*;

#[test]
fn init_body_defaults_and_passthrough() {
    let mut c = GladiaConfig {
        languages: vec!["fr".into()],
        endpointing: Some(0.1),
        custom_vocabulary: vec!["Micdrop".into()],
        ..Default::default()
    };
    c.settings.insert(
        "messages_config".into(),
        json!({"receive_acknowledgments": false, "receive_speech_events": true}),
    );
    c.settings
        .insert("pre_processing".into(), json!({"audio_enhancer": true}));
    let b = init_body(&c);
    assert_eq!(b["encoding"], "wav/pcm");
    assert_eq!(b["sample_rate"], 16_000);
    assert_eq!(b["bit_depth"], 16);
    assert_eq!(b["channels"], 1);
    assert_eq!(b["language_config"]["languages"], json!(["fr"]));
    assert_eq!(b["endpointing"], 0.1);
    assert_eq!(
        b["realtime_processing"]["custom_vocabulary_config"]["vocabulary"],
        json!(["Micdrop"])
    );
    assert_eq!(b["pre_processing"]["audio_enhancer"], true);
    // Passthrough merges, but acknowledgments stay on (replay and liveness need them).
    assert_eq!(b["messages_config"]["receive_speech_events"], true);
    assert_eq!(b["messages_config"]["receive_acknowledgments"], true);
    assert_eq!(b["messages_config"]["receive_final_transcripts"], true);
}

#[test]
fn parses_final_transcripts_of_the_samples() {
    // G-TR-FINAL-1: leading spaces, integer confidence, id with underscore.
    let m = parse_message(
        r#"{"type":"transcript","session_id":"de0a341d-c69f-4e15-a649-7b3f49e211f0","created_at":"2024-10-10T14:35:28.387Z","data":{"id":"00_00000000","is_final":true,"utterance":{"text":" Hello world","start":0.188,"end":1.284,"language":"en","confidence":1,"channel":0,"words":[{"word":" Hello","start":0.188,"end":0.735,"confidence":1},{"word":" world","start":0.736,"end":1.284,"confidence":1}]}}}"#,
    )
    .unwrap();
    assert_eq!(
        m,
        ServerMessage::Transcript {
            id: "00_00000000".into(),
            is_final: true,
            text: " Hello world".into(),
            end: Some(1.284)
        }
    );
    // G-TR-FINAL-2: session_id first, id with a dash.
    let m = parse_message(
        r#"{"session_id": "550e8400-e29b-41d4-a716-446655440000", "created_at": "2025-09-19T12:34:10Z", "type": "transcript", "data": {"id": "00-00000011", "is_final": true, "utterance": {"start": 0.0, "end": 0.48, "confidence": 0.91, "channel": 0, "words": [{"word": "Hello", "start": 0.0, "end": 0.35, "confidence": 0.91}, {"word": "world", "start": 0.36, "end": 0.48, "confidence": 0.91}], "text": "Hello world.", "language": "en"}}}"#,
    )
    .unwrap();
    assert!(
        matches!(m, ServerMessage::Transcript { ref text, is_final: true, .. } if text == "Hello world.")
    );
    // G-TR-FINAL-3 (comments removed): no is_final, no words, no confidence → a final.
    let m = parse_message(
        r#"{"type":"transcript","session_id":"de70f43f-3041-46e0-892c-8e7f53800a22","created_at":"2025-04-09T08:44:19.693Z","data":{"id":"01_00000000","utterance":{"text":"And this is Maxime, nice to meet you, I am the second speaker.","start":3.468,"end":6.132,"language":"en","channel":1}}}"#,
    )
    .unwrap();
    assert!(
        matches!(m, ServerMessage::Transcript { is_final: true, end: Some(e), .. } if (e - 6.132).abs() < 1e-9)
    );
    // A partial (no official sample: the documented shape with is_final false).
    let m = parse_message(
        r#"{"type":"transcript","data":{"id":"00-00000012","is_final":false,"utterance":{"text":" Bon","start":1.0,"end":1.2}}}"#,
    )
    .unwrap();
    assert!(matches!(
        m,
        ServerMessage::Transcript {
            is_final: false,
            ..
        }
    ));
}

#[test]
fn parses_acks_and_lifecycle_of_the_samples() {
    // G-ACK-AUDIO: inclusive-looking [0, 4095] is read as "bytes so far".
    let m = parse_message(
        r#"{"session_id": "550e8400-e29b-41d4-a716-446655440000", "created_at": "2025-09-19T12:34:56Z", "type": "audio_chunk", "acknowledged": true, "error": null, "data": {"byte_range": [0, 4095], "time_range": [0.0, 0.256]}}"#,
    )
    .unwrap();
    assert_eq!(
        m,
        ServerMessage::AudioAck {
            acknowledged: true,
            byte_end: Some(4095),
            error: None
        }
    );
    // G-ACK-STOP-1 rejected: error object.
    let m = parse_message(
        r#"{"session_id": "550e8400-e29b-41d4-a716-446655440000", "created_at": "2025-09-19T12:35:12Z", "type": "stop_recording", "acknowledged": false, "error": {"status_code": 409, "exception": "ConflictError", "message": "Recording already stopped"}, "data": {}}"#,
    )
    .unwrap();
    assert_eq!(m, ServerMessage::Other("stop_recording".into()));
    // A refused audio chunk with the SDK's {message} error and data null.
    let m = parse_message(
        r#"{"type":"audio_chunk","acknowledged":false,"error":{"message":"Unsupported sample rate"},"data":null}"#,
    )
    .unwrap();
    assert_eq!(
        m,
        ServerMessage::AudioAck {
            acknowledged: false,
            byte_end: None,
            error: Some("Unsupported sample rate".into())
        }
    );
    for (text, expected) in [
        (
            r#"{"session_id": "550e8400-e29b-41d4-a716-446655440000", "created_at": "2025-09-19T12:36:05Z", "type": "end_session"}"#,
            ServerMessage::SessionOver,
        ),
        (
            r#"{"session_id": "550e8400-e29b-41d4-a716-446655440000", "created_at": "2025-09-19T12:36:00Z", "type": "end_recording", "data": {"reason": "user_request", "received_total_bytes": 1048576}}"#,
            ServerMessage::Other("end_recording".into()),
        ),
        (
            r#"{"session_id": "550e8400-e29b-41d4-a716-446655440000", "created_at": "2025-09-19T12:34:06Z", "type": "speech_start", "data": {"time": 1.24, "channel": 0}}"#,
            ServerMessage::Other("speech_start".into()),
        ),
        (
            r#"{"session_id": "550e8400-e29b-41d4-a716-446655440000", "created_at": "2025-09-19T12:45:00Z", "type": "post_final_transcript", "data": {"metadata": {"audio_duration": 123.45, "number_of_distinct_channels": 1, "billing_time": 120.0, "transcription_time": 3.2}, "transcription": {"full_transcript": "hello world"}}}"#,
            ServerMessage::Other("post_final_transcript".into()),
        ),
    ] {
        assert_eq!(parse_message(text).unwrap(), expected);
    }
    assert!(parse_message("not json").is_err());
}

#[test]
fn deep_merge_replaces_leaves_and_merges_objects() {
    let mut a = json!({"a": {"b": 1, "c": 2}, "d": [1]});
    deep_merge(&mut a, &json!({"a": {"c": 3, "e": 4}, "d": [2]}));
    assert_eq!(a, json!({"a": {"b": 1, "c": 3, "e": 4}, "d": [2]}));
}

#[tokio::test]
async fn a_session_on_a_foreign_host_is_refused_under_the_eu_policy() {
    use crate::testutil::{RawServer, json_response};
    use micdrop_core::stt::{SttCommand, SttEvent, SttSessionIo};
    let server = RawServer::start(vec![vec![json_response(
        201,
        r#"{"id":"abc","created_at":"2026-01-01T00:00:00Z","url":"wss://us-west.example.com/v2/live?token=abc"}"#,
    )]])
    .await;
    let c = GladiaConfig {
        base_url: Some(server.url()),
        retry_delay_ms: 1,
        // Opened when the session starts (on demand is the default since #10).
        on_demand: false,
        ..Default::default()
    };
    let stt = GladiaStt::new(c, ApiKey::new("k"))
        .unwrap()
        .with_session_host_policy(crate::config::SovereigntyConfig::default());
    let (tx, crx) = tokio::sync::mpsc::channel(16);
    let (etx, mut rx) = tokio::sync::mpsc::channel(16);
    let _task = tokio::spawn(stt.run(SttSessionIo {
        commands: crx,
        events: etx,
    }));
    // The session connects as soon as it starts: the refusal comes without any turn.
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    match ev {
        SttEvent::Failed { error, .. } => {
            assert!(error.to_string().contains("us-west.example.com"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.request_count(), 1, "not retried");
    // The next turn tries again (and is refused again).
    tx.send(SttCommand::StartTurn).await.unwrap();
    tx.send(SttCommand::Audio(Bytes::from_static(&[0; 320])))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev, SttEvent::Failed { ref pending, .. } if pending.len() == 1),
        "{ev:?}"
    );
    assert_eq!(server.request_count(), 2);
}

#[test]
fn gladia_session_hosts_are_accepted_under_the_eu_policy() {
    use super::session::session_host_allowed;
    let eu = crate::config::SovereigntyConfig::default();
    assert!(session_host_allowed(&eu, "api.gladia.io"));
    assert!(session_host_allowed(&eu, "eu-west.api.gladia.io"));
    assert!(session_host_allowed(&eu, "WS-EU.Gladia.IO."));
    assert!(session_host_allowed(&eu, "127.0.0.1"));
    assert!(!session_host_allowed(&eu, "us-west.example.com"));
    assert!(!session_host_allowed(&eu, "gladia.io.evil.example"));
    assert!(!session_host_allowed(&eu, "notgladia.io"));
}

#[test]
fn acknowledged_bytes_are_rounded_to_whole_samples() {
    use super::session::whole_samples;
    assert_eq!(whole_samples(0), 0);
    assert_eq!(whole_samples(3201), 3200);
    assert_eq!(whole_samples(3200), 3200);
}

#[test]
fn french_is_the_default_language() {
    let b = init_body(&GladiaConfig::default());
    assert_eq!(b["language_config"]["languages"], json!(["fr"]));
}

#[test]
fn the_silence_feed_reaches_one_second_within_three_and_stops_at_the_maximum() {
    use super::session::SilenceFeed;
    let t0 = tokio::time::Instant::now();
    let ms = Duration::from_millis;
    let mut f = SilenceFeed::after_burst(ms(300), ms(2000), t0);
    assert_eq!(f.next_at(), Some(t0 + FEED_AFTER));
    assert_eq!(
        f.due(t0 + ms(100)),
        None,
        "the fast path gets its chance first"
    );
    // Woken at each due time: 100 ms of silence per 100 ms.
    let mut one_second_at = None;
    while let Some(at) = f.next_at() {
        assert_eq!(f.due(at), Some(ms(100)));
        if f.sent() >= ms(1000) && one_second_at.is_none() {
            one_second_at = Some(at - t0);
        }
    }
    assert_eq!(f.sent(), ms(2000), "up to 2 s in total");
    let one = one_second_at.unwrap();
    assert!(one <= ms(1100), "1 s in total after {one:?}");
    // A late wake-up catches up with real time; the last step is cut to the maximum.
    let mut f = SilenceFeed::after_burst(ms(250), ms(1000), t0);
    let late = t0 + ms(5000);
    let mut steps = Vec::new();
    while let Some(s) = f.due(late) {
        steps.push(s.as_millis());
    }
    assert_eq!(steps, [100, 100, 100, 100, 100, 100, 100, 50]);
    assert_eq!(f.sent(), ms(1000));
    // A final stops it; a maximum not above the burst never feeds.
    let mut f = SilenceFeed::after_burst(ms(300), ms(2000), t0);
    f.stop();
    assert_eq!(f.due(late), None);
    let f = SilenceFeed::after_burst(ms(300), ms(300), t0);
    assert_eq!(f.next_at(), None);
}
