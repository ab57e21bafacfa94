//! The scenarios shipped in `scenarios/` played against a real micdrop-rs call engine with
//! scripted providers, plus failing and refused scenarios.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use micdrop_client::Pace;
use micdrop_client::scenario::{RunOptions, Scenario, ScenarioReport, run};
use micdrop_core::agent::Agent;
use micdrop_core::call::CallConfig;
use micdrop_testkit::{ModelStep, ScriptedModel, ScriptedStt, ScriptedTts};

fn scenario(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).unwrap()
}

fn config(transcripts: &[&str], model: ScriptedModel) -> CallConfig {
    let agent = Agent::new(Arc::new(model), "Tu es un assistant.").auto_end_call(None);
    CallConfig::new(Arc::new(ScriptedStt::transcripts(transcripts)))
        .agent(agent)
        .tts(Arc::new(fast_tts(4)))
        .first_message("Bonjour")
        // Scenarios run with `Pace::Fast` send their audio faster than real time.
        .audio_burst(None)
}

/// A scripted TTS faster than real time, as real ones are.
fn fast_tts(bytes_per_char: usize) -> ScriptedTts {
    ScriptedTts::new()
        .with_chunk_delay(Duration::ZERO)
        .with_bytes_per_char(bytes_per_char)
}

async fn play(server: &common::TestServer, s: &Scenario, pace: Option<Pace>) -> ScenarioReport {
    let options = RunOptions {
        url: Some(server.url.clone()),
        record: true,
        pace,
        ..Default::default()
    };
    tokio::time::timeout(Duration::from_secs(30), run(s, options))
        .await
        .expect("scenario within 30 s")
        .unwrap()
}

#[tokio::test]
async fn smoke_scenario_passes_with_latency() {
    let server = common::serve(
        || config(&["Bonjour"], ScriptedModel::default()),
        None,
        vec![],
    )
    .await;
    let report = play(&server, &scenario("smoke"), Some(Pace::Fast)).await;
    assert!(report.passed, "{:?}", report.failures);
    assert_eq!((report.turns_sent, report.turns_answered), (1, 1));
    assert_eq!(report.turn_latencies.len(), 1);
    assert!(report.turn_latencies[0] < Duration::from_secs(2));
    assert!(!report.assistant_audio.is_empty());
    assert_eq!(report.assistant_audio.len(), report.audio_bytes.0);
    let conv = &report.final_state.conversation;
    assert_eq!(conv.len(), 3, "{conv:?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[tokio::test]
async fn barge_in_scenario_measures_the_interruption() {
    let long = "Bonjour et bienvenue sur notre service. ".repeat(10);
    let server = common::serve(
        move || {
            config(&["Stop"], ScriptedModel::default())
                .first_message(long.clone())
                .tts(Arc::new(ScriptedTts::new().with_bytes_per_char(128)))
        },
        None,
        vec![],
    )
    .await;
    let report = play(&server, &scenario("barge-in"), None).await;
    assert!(report.passed, "{:?}", report.failures);
    assert_eq!(report.barge_ins.len(), 1);
    let b = report.barge_ins[0];
    // The interrupting turn lasts 600 ms; the server cancels the greeting at once, so
    // whatever still arrives comes in the first moments (frames already in flight).
    assert!(b.audio_after < Duration::from_millis(300), "{b:?}");
    assert!(b.late_frames < 50, "{b:?}");
}

#[tokio::test]
async fn pause_scenario_passes() {
    let server = common::serve(
        || config(&["Un", "Deux"], ScriptedModel::default()).tts(Arc::new(fast_tts(64))),
        None,
        vec![],
    )
    .await;
    let report = play(&server, &scenario("pause"), Some(Pace::Fast)).await;
    assert!(report.passed, "{:?}", report.failures);
    assert!(report.final_state.conversation.len() >= 3);
}

#[tokio::test]
async fn vad_scenario_cuts_two_turns() {
    let server = common::serve(
        || config(&["Un", "Deux"], ScriptedModel::default()),
        None,
        vec![],
    )
    .await;
    let report = play(&server, &scenario("vad"), Some(Pace::Fast)).await;
    assert!(report.passed, "{:?}", report.failures);
    assert_eq!(report.turns_sent, 2);
}

#[tokio::test]
async fn end_call_and_espeak_scenarios_pass() {
    let server = common::serve(
        || {
            config(
                &["Merci, au revoir !"],
                ScriptedModel::new([ModelStep::tool("end_call", "{}")]),
            )
        },
        None,
        vec![],
    )
    .await;
    let report = play(&server, &scenario("end-call"), Some(Pace::Fast)).await;
    assert!(report.passed, "{:?}", report.failures);

    let server = common::serve(
        || config(&["Bonjour, quel temps fait-il ?"], ScriptedModel::default()),
        None,
        vec![],
    )
    .await;
    let report = play(&server, &scenario("say-fr"), Some(Pace::Fast)).await;
    assert!(report.passed, "{:?}", report.failures);
}

#[tokio::test]
async fn a_failed_expectation_fails_the_scenario() {
    let server = common::serve(
        || config(&["Bonjour"], ScriptedModel::default()),
        None,
        vec![],
    )
    .await;
    let s = Scenario::from_toml(
        r#"
        [[step]]
        expect = "message"
        role = "assistant"
        contains = "BONJOUR"
        [[step]]
        expect = "message"
        role = "assistant"
        contains = "au revoir"
        timeout_ms = 300
        [[step]]
        sleep_ms = 10000
        "#,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let report = play(&server, &s, Some(Pace::Fast)).await;
    assert!(!report.passed);
    assert_eq!(report.failures.len(), 1, "stops at the first failure");
    assert!(
        report.failures[0].starts_with(
            "step 2 (expect message): no message role=\"assistant\" contains=\"au revoir\""
        ),
        "{:?}",
        report.failures
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn refused_token_is_an_expected_close() {
    let server = common::serve(
        || config(&[], ScriptedModel::default()),
        Some("good"),
        vec![],
    )
    .await;
    let s = Scenario::from_toml(
        r#"
        params = { authorization = "Bearer bad" }
        [[step]]
        expect = "closed"
        code = 4401
        [[step]]
        expect = "error"
        "#,
    )
    .unwrap();
    let report = play(&server, &s, None).await;
    assert!(report.passed, "{:?}", report.failures);
    assert_eq!(report.errors.len(), 1);
    assert!(report.errors[0].contains("Unauthorized"));
}
