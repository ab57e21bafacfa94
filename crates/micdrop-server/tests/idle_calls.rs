//! Idle sockets do not starve real callers (issue #11, finding 2, with the on-demand provider
//! sessions of issue #10): a call holds a provider session only while it has work for it, so
//! more idle calls than the providers' concurrency plan leave the plan free for a caller who
//! speaks.

use std::time::Duration;

use micdrop_server::App;
use micdrop_server::config::Config;
use micdrop_sim::SimScript;
use micdrop_testkit::{Frame, WsClient, tone_frame};

/// The simulated plans: 4 concurrent sessions at Gladia and at Gradium.
const PLAN: usize = 4;

#[tokio::test]
async fn more_idle_calls_than_the_providers_plan_leave_it_to_a_real_caller() {
    let mut config = Config::from_toml("", "test.toml").unwrap();
    config.server.listen = "127.0.0.1:0".into();
    let script = SimScript::from_toml_str(&format!(
        "[sim]\ntranscripts = [\"Bonjour\"]\n[sim.gladia]\nmax_sessions = {PLAN}\n\
         [sim.gradium]\nmax_sessions = {PLAN}\n"
    ))
    .unwrap()
    .zero_delay();
    let app = App::start(config, Some(script)).await.unwrap();
    let url = format!("ws://{}{}", app.server.local_addr(), app.path);
    let sim = app.sim.as_ref().unwrap();

    // Twice the plan of callers who connect and say nothing.
    let mut idle = Vec::new();
    for _ in 0..2 * PLAN {
        idle.push(connect(&url).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = sim.counters();
    assert_eq!(
        c.gladia.open_sessions + c.gladia.open_connections,
        0,
        "idle calls hold no STT session: {c:?}"
    );
    assert_eq!(
        c.gradium_tts.open_connections + c.gradium_stt.open_connections,
        0,
        "idle calls hold no Gradium socket: {c:?}"
    );

    // A real caller speaks and is answered, with voice.
    let mut caller = connect(&url).await;
    caller.text("StartSpeaking").await;
    for i in 0..10 {
        caller.binary(tone_frame(i)).await;
    }
    caller.text("StopSpeaking").await;
    let (f, _) = caller.next_text().await;
    assert_eq!(
        f,
        Frame::Text(r#"Message {"role":"user","content":"Bonjour"}"#.into())
    );
    let (f, audio_before) = caller.next_text().await;
    let text = f.text().expect("assistant message").to_owned();
    assert!(
        text.starts_with(r#"Message {"role":"assistant","content":""#),
        "{text}"
    );
    let mut audio = audio_before;
    while let Some(Frame::Binary(b)) = caller.next_within(Duration::from_millis(500)).await {
        audio += b.len();
    }
    assert!(audio > 8_000, "answer audio: {audio} bytes");

    // The idle calls are still there, untouched.
    for c in &mut idle {
        assert_eq!(c.next_within(Duration::from_millis(10)).await, None);
    }
    for mut c in idle {
        c.close().await;
    }
    caller.close().await;
    app.shutdown(Duration::from_secs(3)).await;
}

/// A call without a first message: the server releases the client at once (`SkipAnswer`).
async fn connect(url: &str) -> WsClient {
    let mut c = WsClient::connect(url).await;
    assert_eq!(c.next().await, Frame::Text("SkipAnswer".into()));
    c
}
