//! Traces over OTLP/HTTP after real calls through the real provider clients and the simulators
//! (`serve --sim` in process), received by a small OTLP/HTTP receiver that decodes the protobuf
//! export (`ExportTraceServiceRequest`) like a collector does.
//!
//! One test function: the trace layer is process-wide (as in `micdrop serve`), so the phases
//! run one after the other: spans exported and their tree; nothing exported without
//! `otlp_endpoint`; a collector that never answers does not hurt the call.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::routing::post;
use micdrop_server::App;
use micdrop_server::config::Config;
use micdrop_sim::SimScript;
use micdrop_testkit::{Frame, WsClient, tone_frame};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const TRANSCRIPT: &str = "Quelle heure est-il ?";
const CALL_TOKEN: &str = "call-token-7f3a";
const SECRETS: &[&str] = &[
    CALL_TOKEN,
    "sim-mistral-key",
    "sim-gladia-key",
    "sim-gradium-key",
];

/// What the receiver got: the raw bodies and the decoded requests.
#[derive(Default)]
struct Received {
    bodies: Vec<Bytes>,
    requests: Vec<ExportTraceServiceRequest>,
}

type Shared = Arc<Mutex<Received>>;

/// A minimal OTLP/HTTP trace receiver: `POST /v1/traces` with a protobuf body.
async fn receiver() -> (SocketAddr, Shared) {
    async fn traces(State(got): State<Shared>, body: Bytes) -> impl axum::response::IntoResponse {
        let request = ExportTraceServiceRequest::decode(body.clone()).expect("a valid export");
        let mut got = got.lock().unwrap();
        got.bodies.push(body);
        got.requests.push(request);
        (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
    }
    let got = Shared::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, got)
}

async fn start_app(telemetry: &str) -> App {
    let script = SimScript::from_toml_str(&format!("[sim]\ntranscripts = [\"{TRANSCRIPT}\"]\n"))
        .unwrap()
        .zero_delay();
    start_app_with(telemetry, script).await
}

async fn start_app_with(telemetry: &str, script: SimScript) -> App {
    let toml = format!(
        "[call]\nfirst_message = \"Bonjour.\"\n[auth]\nbearer_tokens = [\"{CALL_TOKEN}\"]\n\
         [telemetry]\n{telemetry}\n"
    );
    let mut config = Config::from_toml(&toml, "test.toml").unwrap();
    config.server.listen = "127.0.0.1:0".into();
    App::start(config, Some(script)).await.unwrap()
}

/// A call: the first message, then one spoken turn up to its transcript.
async fn call_and_speak(app: &App) -> WsClient {
    let url = format!("ws://{}{}", app.server.local_addr(), app.path);
    let mut c = WsClient::connect(&url).await;
    c.text(&format!(r#"{{"authorization":"Bearer {CALL_TOKEN}"}}"#))
        .await;
    c.expect_text(r#"Message {"role":"assistant","content":"Bonjour."}"#)
        .await;
    c.drain(Duration::from_millis(300)).await;
    c.text("StartSpeaking").await;
    for i in 0..10 {
        c.binary(tone_frame(i)).await;
    }
    c.text("StopSpeaking").await;
    c.expect_text(&format!(
        r#"Message {{"role":"user","content":"{TRANSCRIPT}"}}"#
    ))
    .await;
    c
}

/// A call with the first message and one spoken, answered turn; returns the answer's text.
async fn call_with_one_turn(app: &App) -> String {
    let mut c = call_and_speak(app).await;
    let (f, _) = c.next_text().await;
    let answer = f
        .text()
        .and_then(|t| t.strip_prefix("Message "))
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| v["content"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("the assistant's answer, got {f:?}"));
    assert!(!answer.is_empty());
    // The answer's audio, then silence.
    let rest = c.drain(Duration::from_millis(500)).await;
    assert!(
        rest.iter().any(|f| matches!(f, Frame::Binary(_))),
        "no answer audio: {rest:?}"
    );
    c.close().await;
    wait_call_end(app).await;
    answer
}

/// Waits until the server has seen the close and ended the call.
async fn wait_call_end(app: &App) {
    for _ in 0..500 {
        if app.server.active_calls() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.server.active_calls(), 0, "the call did not end");
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

/// Every string inside an attribute value (nested arrays and maps too).
fn strings(v: &AnyValue, out: &mut Vec<String>) {
    match &v.value {
        Some(Value::StringValue(s)) => out.push(s.clone()),
        Some(Value::ArrayValue(a)) => a.values.iter().for_each(|v| strings(v, out)),
        Some(Value::KvlistValue(l)) => l
            .values
            .iter()
            .filter_map(|kv: &KeyValue| kv.value.as_ref())
            .for_each(|v| strings(v, out)),
        Some(Value::BytesValue(b)) => out.push(String::from_utf8_lossy(b).into_owned()),
        _ => {}
    }
}

fn spans(got: &Received) -> Vec<Span> {
    got.requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| ss.spans.clone())
        .collect()
}

fn one<'a>(spans: &'a [Span], name: &str, parent: &Span) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == name && s.parent_span_id == parent.span_id)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} under {}: {spans:#?}",
        parent.name
    );
    assert_eq!(found[0].trace_id, parent.trace_id, "{name}: same trace");
    assert!(found[0].end_time_unix_nano >= found[0].start_time_unix_nano);
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_over_otlp() {
    // As `micdrop serve` does: the trace layer on the process's subscriber.
    tracing_subscriber::registry()
        .with(micdrop_server::traces::layer())
        .init();
    let (addr, got) = receiver().await;

    // 1. Exported: the call, its turn, the provider requests under the turn.
    let app = start_app(&format!("otlp_endpoint = \"http://{addr}\"")).await;
    assert!(app.traces.is_some());
    let answer = call_with_one_turn(&app).await;
    // The shutdown waits for the call's end, then sends the last spans.
    let t = std::time::Instant::now();
    app.shutdown(Duration::from_secs(5)).await;
    eprintln!("shutdown with a collector: {:?}", t.elapsed());
    {
        let got = got.lock().unwrap();
        assert!(!got.requests.is_empty(), "nothing exported");
        let resource = &got.requests[0].resource_spans[0].resource;
        let resource = resource.as_ref().expect("a resource");
        let service = |key: &str| {
            resource
                .attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.clone())
        };
        assert_eq!(
            service("service.name"),
            Some(Value::StringValue("micdrop".into()))
        );
        assert_eq!(
            service("service.version"),
            Some(Value::StringValue(env!("CARGO_PKG_VERSION").into()))
        );
        let spans = spans(&got);
        let calls: Vec<&Span> = spans.iter().filter(|s| s.name == "call").collect();
        assert_eq!(calls.len(), 1, "{spans:#?}");
        let call = calls[0];
        assert!(call.parent_span_id.is_empty(), "the call is the root");
        let call_id = str_attr(call, "call_id").expect("call_id").to_owned();
        assert_eq!(
            uuid::Uuid::parse_str(&call_id).unwrap().get_version_num(),
            4
        );
        assert_eq!(str_attr(call, "outcome"), Some("client_closed"));
        // Every span of the call is in its trace; none is left out (no client-address span);
        // the attributes are the documented ones.
        let documented = [
            "call_id",
            "outcome",
            "close_code",
            "turn",
            "stt_ms",
            "llm_first_token_ms",
            "tts_first_audio_ms",
            "voice_to_voice_ms",
            "provider",
            "step",
            "tool_calls",
            "utterance",
            "first_audio_ms",
        ];
        for s in &spans {
            for kv in &s.attributes {
                assert!(
                    documented.contains(&kv.key.as_str()),
                    "{}: {}",
                    s.name,
                    kv.key
                );
            }
            assert_eq!(s.trace_id, call.trace_id, "{}", s.name);
            assert!(
                micdrop_core::trace::SPANS.contains(&s.name.as_str()),
                "{}",
                s.name
            );
        }

        let turn = one(&spans, "turn", call);
        assert_eq!(str_attr(turn, "call_id"), Some(call_id.as_str()));
        assert_eq!(int_attr(turn, "turn"), Some(1), "{turn:#?}");
        assert_eq!(str_attr(turn, "outcome"), Some("answered"));
        for latency in [
            "stt_ms",
            "llm_first_token_ms",
            "tts_first_audio_ms",
            "voice_to_voice_ms",
        ] {
            assert!(int_attr(turn, latency).is_some(), "{latency}: {turn:#?}");
        }

        let stt = one(&spans, "stt.utterance", turn);
        assert_eq!(str_attr(stt, "provider"), Some("gladia"));
        assert_eq!(str_attr(stt, "outcome"), Some("transcript"));
        let llm = one(&spans, "llm.request", turn);
        assert_eq!(str_attr(llm, "provider"), Some("mistral"));
        assert_eq!(str_attr(llm, "outcome"), Some("text"));
        assert_eq!(int_attr(llm, "step"), Some(0));
        let tts = one(&spans, "tts.utterance", turn);
        assert_eq!(str_attr(tts, "provider"), Some("gradium-tts"));
        assert_eq!(str_attr(tts, "outcome"), Some("done"));
        assert!(int_attr(tts, "first_audio_ms").is_some(), "{tts:#?}");
        // The first message is spoken outside any turn: its utterance is the call's child.
        let greeting = one(&spans, "tts.utterance", call);
        assert_eq!(str_attr(greeting, "outcome"), Some("done"));
        // Ordered in time: the turn starts with the user's speech, its model request after
        // its STT started.
        assert!(turn.start_time_unix_nano >= call.start_time_unix_nano);
        assert!(llm.start_time_unix_nano >= stt.start_time_unix_nano);
        assert!(turn.end_time_unix_nano <= call.end_time_unix_nano);

        // No user content, no secret: not in any attribute, not anywhere in the bytes sent.
        let mut texts = Vec::new();
        for s in &spans {
            for kv in &s.attributes {
                if let Some(v) = &kv.value {
                    strings(v, &mut texts);
                }
            }
            assert!(s.events.is_empty(), "log lines are not exported: {s:#?}");
        }
        let forbidden: Vec<&str> = SECRETS
            .iter()
            .copied()
            .chain([TRANSCRIPT, "Quelle heure", answer.as_str(), "Bonjour"])
            .collect();
        for text in &texts {
            for f in &forbidden {
                assert!(!text.contains(f), "{f:?} in an attribute: {text:?}");
            }
        }
        for body in &got.bodies {
            for f in &forbidden {
                assert!(
                    !body.windows(f.len()).any(|w| w == f.as_bytes()),
                    "{f:?} sent to the collector"
                );
            }
        }
    };

    // 1b. A barge-in: the user speaks again while the model has not answered yet. The first
    //     turn is interrupted and its model request cancelled; the second ends with the call.
    *got.lock().unwrap() = Received::default();
    let slow_model = SimScript::from_toml_str(&format!(
        "[sim]\ntranscripts = [\"{TRANSCRIPT}\"]\n[sim.mistral]\nttft_ms = 30000\n"
    ))
    .unwrap();
    let app = start_app_with(&format!("otlp_endpoint = \"http://{addr}\""), slow_model).await;
    let mut c = call_and_speak(&app).await;
    // The model request is in flight (its first token 30 s away): speak over it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.text("StartSpeaking").await;
    c.close().await;
    wait_call_end(&app).await;
    app.shutdown(Duration::from_secs(5)).await;
    {
        let got = got.lock().unwrap();
        let spans = spans(&got);
        let call = spans.iter().find(|s| s.name == "call").expect("the call");
        let turns: Vec<&Span> = spans
            .iter()
            .filter(|s| s.name == "turn" && s.parent_span_id == call.span_id)
            .collect();
        assert_eq!(turns.len(), 2, "{spans:#?}");
        let first = turns
            .iter()
            .find(|t| int_attr(t, "turn") == Some(1))
            .unwrap();
        let second = turns
            .iter()
            .find(|t| int_attr(t, "turn") == Some(2))
            .unwrap();
        assert_eq!(str_attr(first, "outcome"), Some("interrupted"));
        assert_eq!(str_attr(second, "outcome"), Some("ended"));
        // (The first turn's span closes once its aborted answer task is dropped: a moment
        // after the second one opened.)
        assert!(first.start_time_unix_nano < second.start_time_unix_nano);
        assert_eq!(
            str_attr(one(&spans, "stt.utterance", first), "outcome"),
            Some("transcript")
        );
        assert_eq!(
            str_attr(one(&spans, "llm.request", first), "outcome"),
            Some("cancelled")
        );
        assert_eq!(
            str_attr(one(&spans, "stt.utterance", second), "outcome"),
            Some("cancelled")
        );
        assert!(
            !spans
                .iter()
                .any(|s| s.name == "tts.utterance" && s.parent_span_id == first.span_id),
            "no answer was spoken"
        );
    }
    let got_after_export = got.lock().unwrap().requests.len();

    // 2. No `otlp_endpoint`: no exporter at all, and nothing more reaches the receiver (the
    //    previous app's exporter was unplugged by its shutdown).
    let app = start_app("").await;
    assert!(app.traces.is_none());
    let t = std::time::Instant::now();
    call_with_one_turn(&app).await;
    eprintln!("one call without traces: {:?}", t.elapsed());
    app.shutdown(Duration::from_secs(5)).await;
    tokio::time::sleep(micdrop_server::traces::EXPORT_INTERVAL * 2).await;
    assert_eq!(got.lock().unwrap().requests.len(), got_after_export);

    // 3. A collector that accepts connections and never answers: calls go on as usual (the
    //    export runs beside them, bounded), and the shutdown gives up on it.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap();
    let app = start_app(&format!("otlp_endpoint = \"http://{hole}\"")).await;
    assert!(app.traces.is_some());
    let t = std::time::Instant::now();
    call_with_one_turn(&app).await;
    call_with_one_turn(&app).await;
    eprintln!("two calls with a black-hole collector: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    app.shutdown(Duration::from_secs(5)).await;
    eprintln!("shutdown with a black-hole collector: {:?}", t.elapsed());
    drop(black_hole);
    assert_eq!(got.lock().unwrap().requests.len(), got_after_export);
}
