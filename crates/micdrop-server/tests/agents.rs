//! A config-only agent in a real call (`serve --sim`): the simulated Mistral, scripted to call
//! tools, drives a webhook (a real HTTP server on loopback) and a real MCP server (the official
//! Python SDK, over stdio); the results reach the model and come back in its answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use micdrop_server::App;
use micdrop_server::config::Config;
use micdrop_sim::SimScript;
use micdrop_testkit::{Frame, WsClient, mcp_python, mcp_test_server, tone_frame};
use serde_json::{Value, json};

/// What the agenda webhook received: (call id header, arguments).
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

async fn agenda() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let s1 = seen.clone();
    let s2 = seen.clone();
    let call_id = |h: &HeaderMap| {
        h.get("x-micdrop-call-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let app = Router::new()
        .route(
            "/creneaux",
            get(move |h: HeaderMap, Query(q): Query<Value>| async move {
                s1.lock().unwrap().push((call_id(&h), q.clone()));
                axum::Json(json!({"date": q["date"], "libres": ["10:00", "14:30"]}))
            }),
        )
        .route(
            "/reserver",
            post(
                move |h: HeaderMap, axum::Json(body): axum::Json<Value>| async move {
                    s2.lock().unwrap().push((call_id(&h), body));
                    (StatusCode::SERVICE_UNAVAILABLE, "agenda en maintenance")
                },
            ),
        )
        .route(
            "/lent",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "trop tard"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn config(addr: SocketAddr) -> String {
    format!(
        r#"
[call]
system_prompt = "Tu es l'assistante du cabinet. Tu parles à {{{{ params.prenom }}}}."
first_message = "Bonjour {{{{ params.prenom }}}}, je vous écoute."
extract = {{ start_tag = "<rdv>", end_tag = "</rdv>", description = "Termine par le rendez-vous entre <rdv> et </rdv>." }}

[params]
type = "object"
properties = {{ prenom = {{ type = "string", minLength = 1 }} }}
required = ["prenom"]
additionalProperties = false

[[tools]]
name = "creneaux_libres"
description = "Créneaux libres d'un jour"
url = "http://{addr}/creneaux"
method = "GET"
parameters = {{ type = "object", properties = {{ date = {{ type = "string" }} }}, required = ["date"] }}

[[tools]]
name = "reserver"
description = "Réserve un créneau"
url = "http://{addr}/reserver"
parameters = {{ type = "object", properties = {{ heure = {{ type = "string" }} }}, required = ["heure"] }}

[[tools]]
name = "lent"
description = "Un outil lent"
url = "http://{addr}/lent"
timeout_ms = 400

[[mcp]]
name = "dossiers"
command = {python:?}
args = [{script:?}]
allowed_tools = ["find_customer"]
"#,
        python = mcp_python(),
        script = mcp_test_server(),
    )
}

const SCRIPT: &str = r#"
[sim]
turn_gap_ms = 0
transcripts = ["Quels créneaux mardi ?", "Trouvez mon dossier", "Réservez à dix heures", "Et avec l'outil lent ?", "Je confirme"]
[[sim.mistral.replies]]
when = "créneaux"
tool_calls = [{ name = "creneaux_libres", arguments = { date = "2026-03-03" } }]
[[sim.mistral.replies]]
when = "dossier"
tool_calls = [{ name = "find_customer", arguments = { name = "Léa" } }]
[[sim.mistral.replies]]
when = "réservez"
tool_calls = [{ name = "reserver", arguments = { heure = "10:00" } }]
[[sim.mistral.replies]]
when = "outil lent"
tool_calls = [{ name = "lent", arguments = {} }]
[[sim.mistral.replies]]
when = "confirme"
text = "C'est noté pour mardi. <rdv>2026-03-03 10:00</rdv>"
"#;

async fn app(addr: SocketAddr) -> App {
    let mut config = Config::from_toml(&config(addr), "agent.toml").unwrap();
    config.server.listen = "127.0.0.1:0".into();
    let script = SimScript::from_toml_str(SCRIPT).unwrap().zero_delay();
    App::start(config, Some(script)).await.unwrap()
}

/// One user turn; returns the conversation items (`Message` frames) up to the assistant's
/// answer, parsed.
async fn turn(c: &mut WsClient, n: usize) -> Vec<Value> {
    c.text("StartSpeaking").await;
    for i in 0..10 {
        c.binary(tone_frame(n * 10 + i)).await;
    }
    c.text("StopSpeaking").await;
    let mut items = Vec::new();
    loop {
        let (f, _) = c.next_text().await;
        let text = f
            .text()
            .unwrap_or_else(|| panic!("unexpected {f:?}"))
            .to_owned();
        let Some(json) = text.strip_prefix("Message ") else {
            continue;
        };
        let item: Value = serde_json::from_str(json).unwrap();
        let done = item["role"] == "assistant";
        items.push(item);
        if done {
            // The answer's audio.
            while let Some(Frame::Binary(_)) = c.next_within(Duration::from_millis(300)).await {}
            return items;
        }
    }
}

#[tokio::test]
async fn a_config_only_agent_calls_webhooks_and_mcp_tools() {
    let (addr, seen) = agenda().await;
    let app = app(addr).await;
    let url = format!("ws://{}{}", app.server.local_addr(), app.path);
    let mut c = WsClient::connect(&url).await;
    c.text(r#"{"prenom": "Léa"}"#).await;
    // The first message, rendered from the params.
    c.expect_text(r#"Message {"role":"assistant","content":"Bonjour Léa, je vous écoute."}"#)
        .await;
    while let Some(Frame::Binary(_)) = c.next_within(Duration::from_millis(300)).await {}

    // 1. A GET webhook: its JSON reaches the model, which speaks it.
    let items = turn(&mut c, 1).await;
    let roles: Vec<&str> = items.iter().map(|i| i["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        ["user", "tool_call", "tool_result", "assistant"],
        "{items:?}"
    );
    assert_eq!(items[1]["toolName"], "creneaux_libres");
    let output: Value = serde_json::from_str(items[2]["output"].as_str().unwrap()).unwrap();
    assert_eq!(
        output,
        json!({"date": "2026-03-03", "libres": ["10:00", "14:30"]})
    );
    let answer = items[3]["content"].as_str().unwrap();
    assert!(
        answer.contains("creneaux_libres") && answer.contains("14:30"),
        "{answer}"
    );
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].1, json!({"date": "2026-03-03"}));
        // The call's id (a UUID), sent with every webhook request of the call.
        assert_eq!(seen[0].0.len(), 36, "{:?}", seen[0].0);
    }

    // 2. An MCP tool (Python SDK, stdio): its text content is the tool result.
    let items = turn(&mut c, 2).await;
    assert_eq!(items[1]["toolName"], "find_customer");
    let output: Value = serde_json::from_str(items[2]["output"].as_str().unwrap()).unwrap();
    assert!(
        output
            .as_str()
            .unwrap()
            .starts_with("Client Léa : rendez-vous le 3 mars"),
        "{output}"
    );
    let answer = items[3]["content"].as_str().unwrap();
    assert!(answer.contains("Client Léa"), "{answer}");

    // 3. A webhook that answers 503: an error for the model, the turn completes.
    let items = turn(&mut c, 3).await;
    let output: Value = serde_json::from_str(items[2]["output"].as_str().unwrap()).unwrap();
    assert_eq!(output, json!({"error": "HTTP 503: agenda en maintenance"}));
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[1].1, json!({"heure": "10:00"}));
        assert_eq!(seen[1].0, seen[0].0, "same call, same id");
    }
    assert!(items[3]["content"].as_str().unwrap().contains("HTTP 503"));

    // 4. A webhook that times out: an error for the model, never a stuck turn.
    let items = turn(&mut c, 4).await;
    let output: Value = serde_json::from_str(items[2]["output"].as_str().unwrap()).unwrap();
    assert_eq!(output, json!({"error": "timeout after 400 ms"}));

    // 5. Extraction from the config: withheld from the message, saved in its metadata.
    let items = turn(&mut c, 5).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[1]["content"], "C'est noté pour mardi.");
    assert_eq!(items[1]["metadata"]["extracted"], "2026-03-03 10:00");

    c.close().await;
    app.shutdown(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn params_that_do_not_match_the_schema_are_refused_with_4400() {
    let (addr, _) = agenda().await;
    let app = app(addr).await;
    let url = format!("ws://{}{}", app.server.local_addr(), app.path);
    for params in [
        r#"{"prenom": ""}"#,
        r#"{"nom": "Léa"}"#,
        r#"["Léa"]"#,
        "{nope",
    ] {
        let mut c = WsClient::connect(&url).await;
        c.text(params).await;
        assert_eq!(
            c.next().await,
            Frame::Close(4400, "Invalid params".into()),
            "{params}"
        );
    }
    // authorization and conversation_id are always accepted.
    let mut c = WsClient::connect(&url).await;
    c.text(r#"{"prenom": "Tom", "conversation_id": "abc", "authorization": "Bearer x"}"#)
        .await;
    c.expect_text(r#"Message {"role":"assistant","content":"Bonjour Tom, je vous écoute."}"#)
        .await;
    c.close().await;
    app.shutdown(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn start_up_errors_name_what_is_wrong() {
    let (addr, _) = agenda().await;
    let cases = [
        // A template variable that [params] does not declare.
        (
            config(addr).replace("{{ params.prenom }}, je", "{{ params.nom }}, je"),
            "unknown variable `params.nom`",
        ),
        // A webhook named like an automatic tool.
        (
            config(addr).replace("name = \"lent\"", "name = \"end_call\""),
            "tool name clash: end_call",
        ),
        // An MCP server that cannot start.
        (
            config(addr).replace(
                &format!("command = {:?}", mcp_python()),
                "command = \"/nonexistent/mcp\"",
            ),
            "[[mcp]] dossiers: cannot run",
        ),
        // A webhook outside the EU policy.
        (
            config(addr).replace(
                &format!("http://{addr}/lent"),
                "https://tools.example.com/lent",
            ),
            "tool lent endpoint https://tools.example.com/lent is not allowed by [sovereignty]",
        ),
    ];
    for (text, needle) in cases {
        let mut config = Config::from_toml(&text, "agent.toml").unwrap();
        config.server.listen = "127.0.0.1:0".into();
        let script = SimScript::from_toml_str(SCRIPT).unwrap().zero_delay();
        let e = match App::start(config, Some(script)).await {
            Ok(_) => panic!("started: {needle}"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

#[tokio::test]
async fn a_barge_in_cancels_a_slow_webhook_and_the_call_goes_on() {
    // The webhook's handler tells when it starts and when it is dropped (client gone).
    struct Guard(tokio::sync::mpsc::UnboundedSender<&'static str>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send("dropped");
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let app = Router::new().route(
        "/slow",
        post(move || {
            let tx = tx.clone();
            async move {
                let _ = tx.send("started");
                let _guard = Guard(tx);
                tokio::time::sleep(Duration::from_secs(60)).await;
                "trop tard"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let toml_text = format!(
        "[call]\nsystem_prompt = \"Tu es un assistant.\"\n\n[[tools]]\nname = \"agenda\"\ndescription = \"Consulte l'agenda\"\nurl = \"http://{addr}/slow\"\ntimeout_ms = 60000\n"
    );
    let mut config = Config::from_toml(&toml_text, "agent.toml").unwrap();
    config.server.listen = "127.0.0.1:0".into();
    let script = SimScript::from_toml_str(
        r#"
[sim]
turn_gap_ms = 0
transcripts = ["Regardez l'agenda", "Laissez tomber, quelle heure est-il ?"]
[[sim.mistral.replies]]
when = "agenda"
tool_calls = [{ name = "agenda", arguments = {} }]
"#,
    )
    .unwrap()
    .zero_delay();
    let app = App::start(config, Some(script)).await.unwrap();
    let url = format!("ws://{}{}", app.server.local_addr(), app.path);
    let mut c = WsClient::connect(&url).await;

    c.text("StartSpeaking").await;
    for i in 0..10 {
        c.binary(tone_frame(i)).await;
    }
    c.text("StopSpeaking").await;
    // The user's message, then the tool call; the webhook is running.
    let mut tool_call_id = String::new();
    while tool_call_id.is_empty() {
        let (f, _) = c.next_text().await;
        if let Some(json) = f.text().and_then(|t| t.strip_prefix("Message ")) {
            let item: Value = serde_json::from_str(json).unwrap();
            if item["role"] == "tool_call" {
                tool_call_id = item["toolCallId"].as_str().unwrap().to_owned();
            }
        }
    }
    assert_eq!(rx.recv().await, Some("started"));

    // Barge-in: the user speaks again before the tool answered.
    let items = turn(&mut c, 2).await;
    assert_eq!(rx.recv().await, Some("dropped"), "the request was aborted");
    // The cancelled call got its result, so the next request was valid and answered.
    let cancelled = items
        .iter()
        .find(|i| i["role"] == "tool_result" && i["toolCallId"] == tool_call_id.as_str());
    assert!(
        cancelled.is_some(),
        "no result for the cancelled call: {items:?}"
    );
    let last = items.last().unwrap();
    assert_eq!(last["role"], "assistant");
    assert!(
        last["content"].as_str().unwrap().contains("quelle heure"),
        "{items:?}"
    );
    c.close().await;
    app.shutdown(Duration::from_secs(3)).await;
}
