//! `micdrop serve --sim`: the whole product offline, through the real Mistral, Gladia and
//! Gradium clients talking to the in-process simulators.

use std::time::Duration;

use micdrop_server::App;
use micdrop_server::config::Config;
use micdrop_sim::SimScript;
use micdrop_testkit::{Frame, WsClient, tone_frame};

async fn app(config_toml: &str, script: &str) -> App {
    let mut config = Config::from_toml(config_toml, "test.toml").unwrap();
    config.server.listen = "127.0.0.1:0".into();
    let script = SimScript::from_toml_str(script).unwrap().zero_delay();
    App::start(config, Some(script)).await.unwrap()
}

#[tokio::test]
async fn a_spoken_conversation_through_the_real_clients() {
    let app = app(
        "[call]\nfirst_message = \"Bonjour, je vous écoute.\"\n",
        "[sim]\ntranscripts = [\"Quelle heure est-il ?\"]\n",
    )
    .await;
    let url = format!("ws://{}{}", app.server.local_addr(), app.path);
    let mut c = WsClient::connect(&url).await;
    // The greeting: its message, then its audio (real speech or tone, 16 kHz PCM, even frames).
    let (f, _) = c.next_text().await;
    assert_eq!(
        f,
        Frame::Text(r#"Message {"role":"assistant","content":"Bonjour, je vous écoute."}"#.into())
    );
    let mut greeting_audio = 0;
    while let Some(Frame::Binary(b)) = c.next_within(Duration::from_millis(500)).await {
        assert_eq!(b.len() % 2, 0);
        greeting_audio += b.len();
    }
    assert!(
        greeting_audio > 16_000,
        "greeting audio: {greeting_audio} bytes"
    );

    c.text("StartSpeaking").await;
    for i in 0..10 {
        c.binary(tone_frame(i)).await;
    }
    c.text("StopSpeaking").await;
    let (f, _) = c.next_text().await;
    assert_eq!(
        f,
        Frame::Text(r#"Message {"role":"user","content":"Quelle heure est-il ?"}"#.into())
    );
    let (f, audio_before) = c.next_text().await;
    let text = f.text().expect("assistant message").to_owned();
    assert!(
        text.starts_with(r#"Message {"role":"assistant","content":""#),
        "{text}"
    );
    let mut audio = audio_before;
    while let Some(Frame::Binary(b)) = c.next_within(Duration::from_millis(500)).await {
        audio += b.len();
    }
    assert!(audio > 8_000, "answer audio: {audio} bytes");
    c.close().await;
    let counters = app
        .sim
        .as_ref()
        .unwrap()
        .wait_idle(Duration::from_secs(3))
        .await;
    app.shutdown(Duration::from_secs(3)).await;
    // Nothing leaks: every simulator session was closed with the call.
    assert_eq!(counters.open(), 0, "{counters:?}");
    assert!(
        counters.gladia.sessions >= 1 && counters.mistral.requests >= 1,
        "{counters:?}"
    );
}

#[tokio::test]
async fn missing_keys_are_named_and_point_to_sim() {
    for var in ["MISTRAL_API_KEY", "GLADIA_API_KEY", "GRADIUM_API_KEY"] {
        if std::env::var(var).is_ok() {
            return; // a developer with real keys: nothing to check here
        }
    }
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    let err = match App::start(config, None).await {
        Ok(_) => panic!("started without keys"),
        Err(e) => e.to_string(),
    };
    for var in ["MISTRAL_API_KEY", "GLADIA_API_KEY", "GRADIUM_API_KEY"] {
        assert!(err.contains(var), "{err}");
    }
    assert!(err.contains("--sim"), "{err}");
}

#[tokio::test]
async fn a_non_eu_endpoint_is_refused_by_default() {
    let mut config = Config::from_toml(
        "[stt]\nprovider = \"gladia\"\n[stt.gladia]\nregion = \"us-west\"\n",
        "t.toml",
    )
    .unwrap();
    config.server.listen = "127.0.0.1:0".into();
    // Keys present (fake) so that only the policy can refuse it.
    let mut providers = config.providers();
    providers.point_to_simulators(
        "https://api.gladia.io",
        "wss://eu.api.gradium.ai",
        "https://api.mistral.ai",
    );
    let err = providers.check_sovereignty().unwrap_err().to_string();
    assert!(err.contains("api.gladia.io"), "{err}");
    assert!(err.contains("us-west"), "{err}");
}
