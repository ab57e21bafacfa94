//! The store with real `micdrop serve --sim` processes: turns survive `kill -9` mid-call, and a
//! conversation started on one instance resumes on another sharing one PostgreSQL (with the
//! end-of-call webhook, signed, received by a local HTTP server).

use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use micdrop_store::testing::TempPostgres;
use micdrop_store::{Store, sign};
use micdrop_testkit::{Frame, WsClient, tone_frame};
use serde_json::{Value, json};

mod common;

const ADMIN: &str = "adm-7f3c";

/// A `micdrop serve --sim` process and its address.
struct Server {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(config: &Path, env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_micdrop"));
    cmd.args(["serve", "--sim", "--listen", "127.0.0.1:0", "--config"])
        .arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = common::spawn_serve(&mut cmd, Duration::from_secs(60));
    // Keep draining the logs.
    let rx = started.lines;
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Server {
        child: started.child,
        addr: started.addr,
    }
}

/// One spoken user turn; returns the user and assistant messages.
async fn turn(c: &mut WsClient) -> (String, String) {
    c.text("StartSpeaking").await;
    for i in 0..10 {
        c.binary(tone_frame(i)).await;
    }
    c.text("StopSpeaking").await;
    let mut user = None;
    loop {
        match c.next().await {
            Frame::Text(t) if t.starts_with(r#"Message {"role":"user""#) => user = Some(t),
            Frame::Text(t) if t.starts_with("Message ") && user.is_some() => {
                return (user.unwrap(), t);
            }
            Frame::Text(_) | Frame::Binary(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

async fn greeting(c: &mut WsClient) {
    let (f, _) = c.next_text().await;
    assert_eq!(
        f,
        Frame::Text(r#"Message {"role":"assistant","content":"Bonjour"}"#.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_call_keeps_the_turns_already_taken() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("calls.db");
    let config = dir.path().join("micdrop.toml");
    std::fs::write(
        &config,
        format!(
            "[call]\nfirst_message = \"Bonjour\"\n[store]\nurl = \"sqlite://{}\"\n\
             [sim]\nzero_delay = true\ntranscripts = [\"Premier tour\", \"Second tour\", \"Troisième\"]\n",
            db.display()
        ),
    )
    .unwrap();
    let mut server = serve(&config, &[]);
    let mut c = WsClient::connect(&format!("ws://{}/call", server.addr)).await;
    c.text(r#"{"user_ref": "durable"}"#).await;
    greeting(&mut c).await;
    let (u1, _) = turn(&mut c).await;
    assert!(u1.contains("Premier tour"), "{u1}");
    let (u2, a2) = turn(&mut c).await;
    assert!(u2.contains("Second tour"), "{u2}");
    // The store has the turns while the call runs (another reader of the live SQLite file).
    let url = format!("sqlite://{}", db.display());
    let reader = Store::open(&url).await.unwrap();
    let mut written = 0;
    for _ in 0..200 {
        let calls = reader
            .list_calls(&micdrop_store::ListQuery::default())
            .await
            .unwrap();
        if let Some(call) = calls.first() {
            written = reader
                .conversation_items(&call.conversation_id)
                .await
                .unwrap()
                .len();
            if written == 5 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(written, 5, "greeting and two turns written during the call");
    reader.close().await;
    // Mid-turn: the user speaks again, and the process is killed.
    c.text("StartSpeaking").await;
    c.binary(tone_frame(0)).await;
    let status = Command::new("kill")
        .args(["-9", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = server.child.wait();

    let store = Store::open(&url).await.unwrap();
    let calls = store
        .list_calls(&micdrop_store::ListQuery::default())
        .await
        .unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].user_ref.as_deref(), Some("durable"));
    assert!(
        calls[0].ended_at.is_none(),
        "the process died during the call"
    );
    let items: Vec<String> = store
        .conversation_items(&calls[0].conversation_id)
        .await
        .unwrap()
        .into_iter()
        .map(|i| serde_json::to_string(&i.item).unwrap())
        .collect();
    assert_eq!(items.len(), 5, "{items:?}");
    assert_eq!(items[0], r#"{"role":"assistant","content":"Bonjour"}"#);
    assert!(items[1].contains("Premier tour"));
    assert!(items[3].contains("Second tour"));
    assert_eq!(format!("Message {}", items[4]), a2);
    store.close().await;
}

/// Webhooks received: (signature header, body).
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A local HTTP server recording the webhooks it receives.
async fn webhook_receiver() -> (String, Received) {
    let seen: Received = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let s = s.clone();
                async move {
                    let sig = headers
                        .get("x-micdrop-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    s.lock().unwrap().push((sig, body.to_vec()));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), seen)
}

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_resumes_on_another_instance_sharing_postgres() {
    let url = TempPostgres::shared()
        .expect("PostgreSQL for the tests")
        .fresh_database()
        .await
        .unwrap();
    let (hook_url, hooks) = webhook_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("micdrop.toml");
    std::fs::write(
        &config,
        format!(
            "[call]\nfirst_message = \"Bonjour\"\n\
             [store]\nurl = \"{url}\"\nwebhook_url = \"{hook_url}\"\n\
             [admin]\nbearer_tokens = [\"{ADMIN}\"]\n\
             [sim]\nzero_delay = true\ntranscripts = [\"Je suis Paul\"]\n"
        ),
    )
    .unwrap();
    let env = [("MICDROP_WEBHOOK_SECRET", "whsec-123")];
    let a = serve(&config, &env);
    let b = serve(&config, &env);

    // On instance A: the greeting and one turn.
    let mut c = WsClient::connect(&format!("ws://{}/call", a.addr)).await;
    c.text("{}").await;
    greeting(&mut c).await;
    let (u, _) = turn(&mut c).await;
    assert!(u.contains("Je suis Paul"));
    c.close().await;
    let mut first_id = String::new();
    for _ in 0..200 {
        let v = admin_get(a.addr, "/api/calls").await;
        if let Some(call) = v["calls"].as_array().unwrap().first() {
            if !call["ended_at"].is_null() {
                first_id = call["id"].as_str().unwrap().to_owned();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!first_id.is_empty(), "call on A never stored");

    // The client reconnects to instance B and resumes: no greeting, same conversation.
    let mut c = WsClient::connect(&format!("ws://{}/call", b.addr)).await;
    c.text(&json!({"conversation_id": first_id}).to_string())
        .await;
    let first = c.next_within(Duration::from_millis(500)).await;
    assert!(
        !matches!(&first, Some(Frame::Text(t)) if t.contains("Bonjour")),
        "greeting spoken again: {first:?}"
    );
    let (u, _) = turn(&mut c).await;
    assert!(u.contains("Je suis Paul"), "{u}");
    c.close().await;
    let mut detail = Value::Null;
    for _ in 0..200 {
        detail = admin_get(b.addr, &format!("/api/calls/{first_id}")).await;
        let calls = detail["calls"].as_array().unwrap();
        if calls.len() == 2 && calls.iter().all(|c| !c["ended_at"].is_null()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let calls = detail["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{detail}");
    assert_eq!(calls[1]["resumed"], true);
    assert_eq!(calls[1]["conversation_id"], first_id.as_str());
    let roles: Vec<&str> = detail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"]["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["assistant", "user", "assistant", "user", "assistant"]
    );

    // Each instance posted its call's webhook, signed with the secret.
    for _ in 0..200 {
        if hooks.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let hooks = hooks.lock().unwrap().clone();
    assert_eq!(hooks.len(), 2);
    let mut ids = Vec::new();
    for (sig, body) in &hooks {
        assert_eq!(sig, &sign(b"whsec-123", body));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["event"], "call.ended");
        assert_eq!(v["call"]["conversation_id"], first_id.as_str());
        ids.push(v["call"]["id"].as_str().unwrap().to_owned());
        assert_eq!(
            v["items"].as_array().unwrap().len(),
            if v["call"]["resumed"] == true { 2 } else { 3 }
        );
    }
    assert!(ids.contains(&first_id));
    drop(a);
    drop(b);
}
