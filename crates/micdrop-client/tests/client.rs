//! The client against a real micdrop-rs call engine on 127.0.0.1:0 (scripted providers).

mod common;

use std::sync::Arc;
use std::time::Duration;

use micdrop_client::audio::{silence, speech_like};
use micdrop_client::{
    Client, ClientErrorCode, ClientOptions, ClientState, Event, Pace, ReconnectOptions, TimedEvent,
};
use micdrop_core::agent::Agent;
use micdrop_core::call::CallConfig;
use micdrop_core::{ClientCommand, ConversationItem};
use micdrop_testkit::{ScriptedModel, ScriptedStt, ScriptedTts};
use tokio::sync::mpsc::Receiver;

fn config(transcripts: &[&str]) -> CallConfig {
    let agent = Agent::new(Arc::new(ScriptedModel::default()), "Tu es un assistant.");
    CallConfig::new(Arc::new(ScriptedStt::transcripts(transcripts)))
        .agent(agent)
        .tts(Arc::new(ScriptedTts::new()))
        .first_message("Bonjour")
        // Some tests send with `Pace::Fast`, faster than real time.
        .audio_burst(None)
}

/// Reads events until one matches; returns it and everything read before it.
async fn until(
    rx: &mut Receiver<TimedEvent>,
    mut f: impl FnMut(&Event) -> bool,
) -> (TimedEvent, Vec<Event>) {
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; saw {seen:#?}"))
            .expect("events ended");
        if f(&ev.event) {
            return (ev, seen);
        }
        seen.push(ev.event);
    }
}

fn is_message(ev: &Event, role: &str) -> Option<String> {
    match ev {
        Event::Message(item) => {
            let json = serde_json::to_value(item).unwrap();
            (json["role"] == role).then(|| item.content().unwrap_or_default().to_owned())
        }
        _ => None,
    }
}

#[tokio::test]
async fn greeting_then_turn_with_state_and_events() {
    let server = common::serve(|| config(&["Quel temps fait-il ?"]), None, vec![]).await;
    let (client, mut rx) = Client::start(ClientOptions::new(&server.url));

    let (_, before) = until(&mut rx, |e| {
        matches!(e, Event::Connected { reconnection: 0 })
    })
    .await;
    assert!(
        before.iter().all(|e| !matches!(e, Event::Error(_))),
        "{before:?}"
    );
    let (ev, _) = until(&mut rx, |e| is_message(e, "assistant").is_some()).await;
    assert_eq!(is_message(&ev.event, "assistant").unwrap(), "Bonjour");
    until(&mut rx, |e| matches!(e, Event::AssistantAudio(_))).await;
    let s = client.state();
    assert!(
        s.is_started && !s.is_processing && s.is_assistant_speaking,
        "{s:?}"
    );
    assert!(!s.is_listening);

    // The greeting's audio is short (4 bytes per char): the playback clock runs out.
    let mut watch = client.watch_state();
    tokio::time::timeout(
        Duration::from_secs(2),
        watch.wait_for(|s: &ClientState| s.is_listening),
    )
    .await
    .expect("listening after the greeting")
    .unwrap();

    assert!(client.say(&speech_like(300), Pace::Fast).await);
    let (_, seen) = until(&mut rx, |e| *e == Event::Sent(ClientCommand::StopSpeaking)).await;
    assert!(seen.contains(&Event::Sent(ClientCommand::StartSpeaking)));
    // Right after StopSpeaking the client is processing.
    let (ev, _) = until(&mut rx, |e| matches!(e, Event::StateChange { .. })).await;
    let Event::StateChange { state, prev } = ev.event else {
        unreachable!()
    };
    assert!(prev.is_user_speaking && !state.is_user_speaking && state.is_processing);

    let (ev, _) = until(&mut rx, |e| is_message(e, "user").is_some()).await;
    assert_eq!(
        is_message(&ev.event, "user").unwrap(),
        "Quel temps fait-il ?"
    );
    until(&mut rx, |e| matches!(e, Event::AssistantAudio(_))).await;
    let (ev, _) = until(&mut rx, |e| is_message(e, "assistant").is_some()).await;
    assert_eq!(
        is_message(&ev.event, "assistant").unwrap(),
        "You said: Quel temps fait-il ?"
    );
    let conv = client.state().conversation;
    assert_eq!(
        conv,
        vec![
            ConversationItem::assistant("Bonjour"),
            ConversationItem::user("Quel temps fait-il ?"),
            ConversationItem::assistant("You said: Quel temps fait-il ?"),
        ]
    );
    client.stop().await;
    let (_, _) = until(&mut rx, |e| *e == Event::Stopped).await;
}

#[tokio::test]
async fn token_goes_in_params_and_4401_is_final() {
    let server = common::serve(|| config(&[]), Some("s3cret"), vec![]).await;

    let (client, mut rx) = Client::start(ClientOptions::new(&server.url).bearer("s3cret"));
    let (ev, _) = until(&mut rx, |e| is_message(e, "assistant").is_some()).await;
    assert_eq!(is_message(&ev.event, "assistant").unwrap(), "Bonjour");
    client.stop().await;

    let options = ClientOptions::new(&server.url)
        .bearer("wrong")
        .reconnect(ReconnectOptions {
            delay: Duration::from_millis(20),
            ..Default::default()
        });
    let (client, mut rx) = Client::start(options);
    let (ev, _) = until(&mut rx, |e| matches!(e, Event::Closed { .. })).await;
    assert_eq!(
        ev.event,
        Event::Closed {
            code: 4401,
            reason: "Unauthorized".into()
        }
    );
    let (ev, _) = until(&mut rx, |e| matches!(e, Event::Error(_))).await;
    let Event::Error(err) = ev.event else {
        unreachable!()
    };
    assert_eq!(err.code, ClientErrorCode::Unauthorized);
    let (_, seen) = until(&mut rx, |e| *e == Event::Stopped).await;
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Connected { .. })),
        "no retry after 4401: {seen:?}"
    );
    let s = client.state();
    assert!(!s.is_started && !s.is_reconnecting);
    assert_eq!(s.error.map(|e| e.code), Some(ClientErrorCode::Unauthorized));
    client.finished().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.connections(),
        2,
        "one good call, one refused, no retry"
    );
}

#[tokio::test]
async fn reconnects_after_1011_and_resends_params() {
    // First connection closed with 1011, the second one works; the token check on both shows
    // the params are sent again.
    let server = common::serve(|| config(&[]), Some("tok"), vec![1011]).await;
    let options = ClientOptions::new(&server.url)
        .bearer("tok")
        .reconnect(ReconnectOptions {
            delay: Duration::from_millis(50),
            ..Default::default()
        });
    let (client, mut rx) = Client::start(options);
    let (ev, _) = until(&mut rx, |e| matches!(e, Event::Closed { .. })).await;
    assert!(matches!(ev.event, Event::Closed { code: 1011, .. }));
    let closed_at = ev.at;
    let (ev, seen) = until(&mut rx, |e| {
        matches!(e, Event::Connected { reconnection: 1 })
    })
    .await;
    assert!(ev.at.duration_since(closed_at) >= Duration::from_millis(50));
    assert!(seen.iter().any(|e| matches!(e,
        Event::StateChange { state, .. } if state.is_reconnecting
            && state.error.as_ref().map(|e| e.code) == Some(ClientErrorCode::InternalServer))));
    let (ev, _) = until(&mut rx, |e| is_message(e, "assistant").is_some()).await;
    assert_eq!(is_message(&ev.event, "assistant").unwrap(), "Bonjour");
    let s = client.state();
    assert!(
        s.is_started && !s.is_reconnecting && s.error.is_none(),
        "{s:?}"
    );
    assert_eq!(server.connections(), 2);
    client.stop().await;
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    // A port with nothing listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/call", listener.local_addr().unwrap());
    drop(listener);
    let options = ClientOptions::new(url).reconnect(ReconnectOptions {
        max_attempts: Some(2),
        delay: Duration::from_millis(10),
        connection_timeout: Duration::from_secs(1),
    });
    let (client, mut rx) = Client::start(options);
    let (_, seen) = until(&mut rx, |e| *e == Event::Stopped).await;
    let closes = seen
        .iter()
        .filter(|e| matches!(e, Event::Closed { code: 1006, .. }))
        .count();
    assert_eq!(closes, 3, "first try + 2 attempts: {seen:?}");
    let last_error = seen.iter().rev().find_map(|e| match e {
        Event::Error(e) => Some(e.clone()),
        _ => None,
    });
    let last_error = last_error.expect("an error");
    assert_eq!(last_error.code, ClientErrorCode::Connection);
    assert!(last_error.message.contains("gave up"), "{last_error}");
    client.finished().await;
}

#[tokio::test]
async fn vad_cuts_a_continuous_source_into_a_turn() {
    let server = common::serve(|| config(&["Salut"]), None, vec![]).await;
    let (client, mut rx) = Client::start(ClientOptions::new(&server.url));
    until(&mut rx, |e| matches!(e, Event::AssistantAudio(_))).await;
    let mut pcm = silence(300);
    pcm.extend(speech_like(700));
    pcm.extend(silence(900));
    assert!(client.feed_paced(&pcm, Pace::Fast).await);
    let (_, seen) = until(&mut rx, |e| *e == Event::Sent(ClientCommand::StopSpeaking)).await;
    assert_eq!(
        seen.iter()
            .filter(|e| **e == Event::Sent(ClientCommand::StartSpeaking))
            .count(),
        1
    );
    let (ev, _) = until(&mut rx, |e| is_message(e, "user").is_some()).await;
    assert_eq!(is_message(&ev.event, "user").unwrap(), "Salut");
    client.stop().await;
}

/// Audio that has already arrived (waiting in the socket) when the user starts speaking is taken
/// in before the `StartSpeaking`: only frames that arrive after it are late. The bench's barge-in
/// figures count those; before, a command went first and the rest of a burst already received
/// counted as late.
#[tokio::test(flavor = "current_thread")]
async fn frames_received_before_start_speaking_are_taken_in_first() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    // The server on its own thread: it writes while this test's only thread is blocked.
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            wait_go.recv().unwrap();
            for _ in 0..5 {
                ws.feed(Message::Binary(vec![0u8; 3200].into()))
                    .await
                    .unwrap();
            }
            ws.flush().await.unwrap();
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        });
    });
    let (client, mut rx) = Client::start(ClientOptions::new(format!("ws://{addr}/")));
    until(&mut rx, |e| matches!(e, Event::Connected { .. })).await;
    go.send(()).unwrap();
    // Block the runtime's only thread: the client task cannot read while the five frames land
    // in its socket; then the user starts speaking.
    std::thread::sleep(Duration::from_millis(300));
    assert!(client.start_speaking().await);
    let (_, seen) = until(&mut rx, |e| *e == Event::Sent(ClientCommand::StartSpeaking)).await;
    let heard = seen
        .iter()
        .filter(|e| matches!(e, Event::AssistantAudio(_)))
        .count();
    assert_eq!(heard, 5, "{seen:?}");
    client.stop().await;
    server.join().unwrap();
}

#[tokio::test]
async fn barge_in_stops_playback_and_pause_sends_mute() {
    // A long greeting streamed slowly: the user interrupts it.
    let long = "Bonjour et bienvenue. ".repeat(20);
    let server = common::serve(
        move || {
            config(&["Stop"]).first_message(long.clone()).tts(Arc::new(
                ScriptedTts::new()
                    .with_chunk_delay(Duration::from_millis(2))
                    .with_bytes_per_char(64),
            ))
        },
        None,
        vec![],
    )
    .await;
    let (client, mut rx) = Client::start(ClientOptions::new(&server.url));
    until(&mut rx, |e| matches!(e, Event::AssistantAudio(_))).await;
    assert!(client.state().is_assistant_speaking);
    assert!(client.start_speaking().await);
    until(&mut rx, |e| *e == Event::Sent(ClientCommand::StartSpeaking)).await;
    let s = client.state();
    assert!(s.is_user_speaking && !s.is_assistant_speaking, "{s:?}");
    // While the user speaks, whatever audio still arrives is dropped, never played.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        client
            .send_audio(micdrop_client::audio::to_bytes(&speech_like(100)))
            .await
    );
    assert!(client.stop_speaking().await);
    let (_, seen) = until(&mut rx, |e| *e == Event::Sent(ClientCommand::StopSpeaking)).await;
    assert!(
        !seen.iter().any(|e| matches!(e, Event::AssistantAudio(_))),
        "{seen:?}"
    );
    let late = seen
        .iter()
        .filter(|e| matches!(e, Event::AssistantAudioDropped(_)))
        .count();
    // The server cancels at once: at most a few frames were already in flight.
    assert!(late < 20, "{late} frames after StartSpeaking");

    // Pause: Mute is sent, processing and playback stop.
    until(&mut rx, |e| matches!(e, Event::AssistantAudio(_))).await;
    assert!(client.pause().await);
    let (_, _) = until(&mut rx, |e| *e == Event::Sent(ClientCommand::Mute)).await;
    let s = client.state();
    assert!(
        s.is_paused && !s.is_processing && !s.is_assistant_speaking,
        "{s:?}"
    );
    // Paused: speech is not sent.
    assert!(client.say(&speech_like(200), Pace::Fast).await);
    assert!(client.resume().await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut sent_while_paused = 0;
    while let Ok(ev) = rx.try_recv() {
        if matches!(ev.event, Event::Sent(ClientCommand::StartSpeaking)) {
            sent_while_paused += 1;
        }
    }
    assert_eq!(sent_while_paused, 0);
    assert!(!client.state().is_paused);
    client.stop().await;
}
