//! `GET /metrics` after real calls through the real provider clients and the simulators
//! (`serve --sim` in process): names, labels, histogram samples; the token; `metrics = false`.
//!
//! One test function: the recorder is process-wide, so the counts below are this test's only.

use std::time::Duration;

use micdrop_server::App;
use micdrop_server::config::Config;
use micdrop_sim::SimScript;
use micdrop_testkit::{Frame, WsClient, http_get, tone_frame};

async fn start_app(config_toml: &str) -> App {
    let mut config = Config::from_toml(config_toml, "test.toml").unwrap();
    config.server.listen = "127.0.0.1:0".into();
    let script = SimScript::from_toml_str(
        "[sim]\ntranscripts = [\"Quelle heure est-il ?\"]\n\
         [sim.mistral]\nfaults = [{ kind = \"status\", status = 503, times = 1 }]\n",
    )
    .unwrap()
    .zero_delay();
    App::start(config, Some(script)).await.unwrap()
}

/// The value of the sample whose line starts with `series` (name and labels, exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_after_real_calls() {
    let app = start_app(
        "[call]\nfirst_message = \"Bonjour.\"\n[auth]\nbearer_tokens = [\"call-token\"]\n",
    )
    .await;
    let addr = app.server.local_addr();
    let url = format!("ws://{addr}{}", app.path);

    // Before any call: the build, no call in progress.
    let (status, text) = http_get(addr, "/metrics", "").await;
    assert_eq!(status, 200);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &text,
            &format!("micdrop_build_info{{version=\"{version}\"}}")
        ),
        Some(1.0),
        "{text}"
    );

    // A call with a spoken turn, hung up by the caller.
    let mut c = WsClient::connect(&url).await;
    c.text(r#"{"authorization":"Bearer call-token"}"#).await;
    c.expect_text(r#"Message {"role":"assistant","content":"Bonjour."}"#)
        .await;
    c.drain(Duration::from_millis(300)).await;
    let text = http_get(addr, "/metrics", "").await.1;
    assert_eq!(sample(&text, "micdrop_calls_active"), Some(1.0), "{text}");
    c.text("StartSpeaking").await;
    for i in 0..10 {
        c.binary(tone_frame(i)).await;
    }
    c.text("StopSpeaking").await;
    c.expect_text(r#"Message {"role":"user","content":"Quelle heure est-il ?"}"#)
        .await;
    let (f, _) = c.next_text().await;
    assert!(
        f.text()
            .unwrap_or("")
            .starts_with(r#"Message {"role":"assistant""#),
        "{f:?}"
    );
    c.drain(Duration::from_millis(300)).await;
    c.close().await;

    // A call with a wrong token: refused (4401), counted as rejected.
    let mut bad = WsClient::connect(&url).await;
    bad.text(r#"{"authorization":"Bearer wrong"}"#).await;
    assert_eq!(bad.next().await, Frame::Close(4401, "Unauthorized".into()));

    // Both counted once the calls are over.
    let mut text = String::new();
    for _ in 0..200 {
        text = http_get(addr, "/metrics", "").await.1;
        if sample(&text, "micdrop_calls_active") == Some(0.0)
            && sample(&text, "micdrop_calls_total{outcome=\"client_closed\"}").is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sample(&text, "micdrop_calls_active"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "micdrop_calls_total{outcome=\"client_closed\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "micdrop_calls_total{outcome=\"rejected\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE micdrop_call_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "micdrop_call_duration_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "micdrop_call_duration_seconds_bucket{le=\"+Inf\"}"),
        Some(1.0),
        "{text}"
    );
    // The providers: the model's first attempt got a 503 and was retried; STT and TTS
    // sessions were opened through the real clients.
    assert_eq!(
        sample(
            &text,
            r#"micdrop_provider_requests_total{provider="mistral",kind="llm"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"micdrop_provider_errors_total{provider="mistral",kind="llm"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"micdrop_provider_retries_total{provider="mistral",kind="llm"}"#
        ),
        Some(1.0),
        "{text}"
    );
    for series in [
        r#"micdrop_provider_requests_total{provider="gladia",kind="stt"}"#,
        r#"micdrop_provider_requests_total{provider="gradium",kind="tts"}"#,
    ] {
        assert!(
            sample(&text, series).unwrap_or(0.0) >= 1.0,
            "{series}: {text}"
        );
    }
    let secs = sample(&text, "micdrop_call_duration_seconds_sum").unwrap();
    assert!(secs > 0.0 && secs < 60.0, "{secs}");
    app.shutdown(Duration::from_secs(3)).await;

    // A token protects /metrics; `metrics = false` removes it.
    let app = start_app("[telemetry]\nmetrics_token = \"scrape-me\"\n").await;
    let addr = app.server.local_addr();
    assert_eq!(http_get(addr, "/metrics", "").await.0, 401);
    assert_eq!(
        http_get(addr, "/metrics", "Authorization: Bearer wrong\r\n")
            .await
            .0,
        401
    );
    let (status, text) = http_get(addr, "/metrics", "Authorization: Bearer scrape-me\r\n").await;
    assert_eq!(status, 200);
    assert!(text.contains("micdrop_calls_total"), "{text}");
    app.shutdown(Duration::from_secs(3)).await;
    let app = start_app("[telemetry]\nmetrics = false\n").await;
    assert_eq!(
        http_get(app.server.local_addr(), "/metrics", "").await.0,
        404
    );
    assert_eq!(
        http_get(app.server.local_addr(), "/readyz", "").await.0,
        200
    );
    app.shutdown(Duration::from_secs(3)).await;
}
