//! Embedding micdrop-core in your own axum server, with typed params, auth and the 3 s rule.
//!
//! Run: `cargo run -p micdrop-core --example embed_axum`, then connect a Micdrop client to
//! `ws://127.0.0.1:8090/call` with params `{"authorization":"Bearer demo","lang":"fr"}`.
//! The providers here are the testkit's scripted ones (an echo agent); swap in
//! `micdrop-providers` (Mistral, Gladia, Gradium) for real calls.

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use axum::routing::get;
use micdrop_core::agent::{Agent, Tool};
use micdrop_core::call::{CallConfig, reject, run_call};
use micdrop_core::error::MicdropError;
use micdrop_core::params::{PARAMS_TIMEOUT, wait_for_params};
use micdrop_core::socket::axum_socket;
use micdrop_testkit::{ScriptedModel, ScriptedStt, ScriptedTts};

#[derive(serde::Deserialize)]
struct Params {
    authorization: String,
    #[serde(default)]
    lang: Option<String>,
}

async fn call(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|socket| async move {
        let (sink, mut stream) = axum_socket(socket);
        // 1. Params: no frame in 3 s → 4400 "Missing params"; bad JSON/shape → 4400
        //    "Invalid params"; a wrong token → 4401.
        let params: Params = match wait_for_params(&mut stream, PARAMS_TIMEOUT, |p: &Params| {
            if p.authorization == "Bearer demo" {
                Ok(())
            } else {
                Err(MicdropError::unauthorized())
            }
        })
        .await
        {
            Ok(p) => p,
            Err(e) => return reject(sink, &e).await,
        };
        // 2. The call: agent, STT, TTS, first message.
        let prompt = match params.lang.as_deref() {
            Some("fr") => "Tu es un assistant vocal.",
            _ => "You are a voice assistant.",
        };
        let agent = Agent::new(Arc::new(ScriptedModel::default()), prompt)
            .auto_end_call(None)
            .tool(
                Tool::new("get_time", "The current time")
                    .handler(|_| async { Ok(serde_json::json!({"time": "12:00"})) }),
            );
        let config = CallConfig::new(Arc::new(ScriptedStt::transcripts(&["Bonjour"])))
            .agent(agent)
            .tts(Arc::new(ScriptedTts::new()))
            .first_message("Bonjour, je vous écoute.");
        // 3. Run it; the end carries the conversation (system message first) and duration.
        let end = run_call(config, sink, stream).await;
        println!(
            "call ended after {} s: {:?}",
            end.duration_secs, end.conversation
        );
    })
}

#[tokio::main]
async fn main() {
    let app = Router::new().route("/call", get(call));
    // TCP_NODELAY: audio frames must not wait for delayed ACKs.
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8090")
        .await
        .unwrap()
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    println!("ws://127.0.0.1:8090/call");
    axum::serve(listener, app).await.unwrap();
}
