//! Helpers shared by the integration tests: start the simulators, make audio, speak WebSocket.
#![allow(dead_code)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use micdrop_sim::{SimHandle, SimScript, Simulators};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn start(script: SimScript) -> SimHandle {
    Simulators::start("127.0.0.1:0".parse().unwrap(), script.zero_delay())
        .await
        .unwrap()
}

pub fn script(toml: &str) -> SimScript {
    SimScript::from_toml_str(toml).unwrap()
}

/// "Speech": a loud two-tone signal, s16le.
pub fn speech(rate: u32, secs: f64) -> Vec<u8> {
    let n = (rate as f64 * secs) as usize;
    let mut out = Vec::with_capacity(n * 2);
    for i in 0..n {
        let t = i as f64 / rate as f64;
        let v = ((2.0 * std::f64::consts::PI * 220.0 * t).sin() * 0.5
            + (2.0 * std::f64::consts::PI * 330.0 * t).sin() * 0.3)
            * 8000.0;
        out.extend_from_slice(&(v as i16).to_le_bytes());
    }
    out
}

pub fn silence(rate: u32, secs: f64) -> Vec<u8> {
    vec![0; (rate as f64 * secs) as usize * 2]
}

/// Splits audio into chunks of `ms` milliseconds (s16 mono).
pub fn chunks(audio: &[u8], rate: u32, ms: u32) -> Vec<Vec<u8>> {
    let n = (rate as usize * ms as usize / 1000) * 2;
    audio.chunks(n).map(|c| c.to_vec()).collect()
}

pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Ws {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(http_name(k), v.parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws
}

fn http_name(k: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    k.parse().unwrap()
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// What the server sent next: a JSON message or the close code (None: closed without a close
/// frame or errored).
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Text(String),
    Close(Option<u16>),
    Gone,
}

pub async fn next(ws: &mut Ws) -> Event {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timed out waiting for a server message");
        match m {
            Some(Ok(Message::Text(t))) => {
                return match serde_json::from_str(t.as_str()) {
                    Ok(v) => Event::Json(v),
                    Err(_) => Event::Text(t.to_string()),
                };
            }
            Some(Ok(Message::Close(f))) => return Event::Close(f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Event::Gone,
        }
    }
}

pub async fn next_json(ws: &mut Ws) -> Value {
    match next(ws).await {
        Event::Json(v) => v,
        other => panic!("expected a JSON message, got {other:?}"),
    }
}

/// Reads JSON messages until the socket closes; returns them and the close code.
pub async fn read_until_close(ws: &mut Ws) -> (Vec<Value>, Option<u16>) {
    let mut msgs = Vec::new();
    loop {
        match next(ws).await {
            Event::Json(v) => msgs.push(v),
            Event::Text(t) => panic!("malformed message {t}"),
            Event::Close(code) => {
                // Complete the closing handshake like a well-behaved client.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return (msgs, code);
            }
            Event::Gone => return (msgs, None),
        }
    }
}

pub fn types(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Waits (up to 2 s) until the counters satisfy `cond`; returns the last snapshot.
pub async fn wait_until(
    sim: &SimHandle,
    cond: impl Fn(&micdrop_sim::SimCounters) -> bool,
) -> micdrop_sim::SimCounters {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let c = sim.counters();
        if cond(&c) || tokio::time::Instant::now() >= deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
