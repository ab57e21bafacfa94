//! Leak test: 1,000 calls dropped abruptly (no close frame), half in the middle of a user turn
//! and half while the assistant's audio streams, leave nothing behind: the runtime's tasks, the
//! process's file descriptors and the providers' open sessions return to their baseline, and no
//! panic happened.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use micdrop_core::agent::Agent;
use micdrop_core::call::CallConfig;
use micdrop_server::{ServerOptions, start};
use micdrop_testkit::{Frame, ScriptedModel, ScriptedStt, ScriptedTts, WsClient};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_abrupt_drops_leave_tasks_fds_and_sessions_at_baseline() {
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let stt = ScriptedStt::transcripts(&[]);
    // A long greeting streamed slowly: a drop lands while its audio flows.
    let tts = ScriptedTts::new()
        .with_chunk_delay(Duration::from_millis(5))
        .with_bytes_per_char(64);
    let config = CallConfig::new(Arc::new(stt.clone()))
        .agent(Agent::new(Arc::new(ScriptedModel::default()), "Test."))
        .tts(Arc::new(tts.clone()))
        .first_message("Bonjour, ceci est un message d'accueil assez long pour durer un moment.");
    let server = start(
        "127.0.0.1:0".parse().unwrap(),
        ServerOptions::with_template(config),
    )
    .await
    .unwrap();
    let url = server.ws_url("/call");

    // Baseline after one complete call (lazy statics, pools and the like are warm).
    {
        let mut c = WsClient::connect(&url).await;
        let _ = c.next().await;
        c.close().await;
    }
    let settle = || async {
        for _ in 0..500 {
            if server.active_calls() == 0 && stt.sessions_open() == 0 && tts.sessions_open() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    settle().await;
    let (tasks0, fds0) = (alive_tasks(), open_fds());

    for batch in 0..20 {
        let mut calls = Vec::new();
        for i in 0..50 {
            let url = url.clone();
            calls.push(tokio::spawn(async move {
                let mut c = WsClient::connect(&url).await;
                if (batch + i) % 2 == 0 {
                    // Mid-turn: the user is speaking.
                    c.text("StartSpeaking").await;
                    c.audio(3).await;
                } else {
                    // During the assistant's audio.
                    loop {
                        match c.next().await {
                            Frame::Binary(_) => break,
                            Frame::Text(_) => continue,
                            other => panic!("{other:?}"),
                        }
                    }
                }
                // Dropped without a close frame.
                drop(c);
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
    }
    settle().await;

    assert_eq!(server.active_calls(), 0);
    assert_eq!(stt.sessions_open(), 0, "STT sessions left open");
    assert_eq!(tts.sessions_open(), 0, "TTS sessions left open");
    let mut last = (0, 0);
    for _ in 0..100 {
        last = (alive_tasks(), open_fds());
        if last.0 <= tasks0 && last.1 <= fds0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last.0 <= tasks0,
        "tasks: {} alive, {tasks0} at baseline",
        last.0
    );
    assert!(last.1 <= fds0, "fds: {} open, {fds0} at baseline", last.1);
    assert_eq!(panics.load(Ordering::SeqCst), 0, "panics in the server");
}
