//! The store through the server: calls written as they go, resume by `conversation_id` (the
//! agent gets the history, the first message is not spoken again), 4404, the admin API (auth,
//! listing, detail, recording, erasure, export), on SQLite and on a real PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use micdrop_core::agent::Agent;
use micdrop_core::call::CallConfig;
use micdrop_server::persist::StoreHook;
use micdrop_server::{RunningServer, ServerOptions, start};
use micdrop_store::testing::TempPostgres;
use micdrop_store::{CallStore, StoreConfig};
use micdrop_testkit::{Frame, ScriptedModel, ScriptedStt, ScriptedTts, WsClient};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-1";
const CALL_TOKEN: &str = "call-token-1";

struct Harness {
    server: RunningServer,
    store: Arc<CallStore>,
    model: ScriptedModel,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn store_url(backend: &str, dir: &std::path::Path) -> String {
    match backend {
        "sqlite" => format!("sqlite://{}/db/micdrop.db", dir.display()),
        _ => TempPostgres::shared()
            .expect("PostgreSQL for the tests")
            .fresh_database()
            .await
            .unwrap(),
    }
}

impl Harness {
    async fn start(
        backend: &str,
        transcripts: &[&str],
        tweak: impl FnOnce(&mut StoreConfig, &mut ServerOptions),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut store_config = StoreConfig {
            url: store_url(backend, dir.path()).await,
            recordings_dir: dir.path().join("recordings"),
            params_wait_ms: 300,
            ..Default::default()
        };
        let model = ScriptedModel::new([]);
        let config = CallConfig::new(Arc::new(ScriptedStt::transcripts(transcripts)))
            .agent(Agent::new(Arc::new(model.clone()), "You are a test."))
            .tts(Arc::new(ScriptedTts::new()))
            .first_message("Bonjour");
        let mut options = ServerOptions::with_template(config);
        tweak(&mut store_config, &mut options);
        let store = CallStore::start(store_config).await.unwrap();
        options.store = Some(StoreHook {
            store: store.clone(),
            provider_hosts: vec!["sim.local:1".into()],
        });
        options.routes = Some(micdrop_server::admin::routes(
            store.clone(),
            vec![ADMIN.into()],
        ));
        let server = start("127.0.0.1:0".parse().unwrap(), options)
            .await
            .unwrap();
        Self {
            server,
            store,
            model,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn client(&self) -> WsClient {
        WsClient::connect(&self.server.ws_url("/call")).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.server.local_addr(), path)
    }

    async fn api(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.api(reqwest::Method::GET, path, Some(ADMIN)).await
    }

    /// The stored calls, newest first, once `n` of them have ended.
    async fn ended_calls(&self, n: usize) -> Vec<Value> {
        for _ in 0..300 {
            let (status, v) = self.get("/api/calls").await;
            assert_eq!(status, 200, "{v}");
            let calls = v["calls"].as_array().unwrap().clone();
            if calls.len() >= n && calls.iter().all(|c| !c["ended_at"].is_null()) {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{n} ended calls never listed");
    }
}

/// One user turn: speech, then the transcript and the answer (texts of the Message frames).
async fn user_turn(c: &mut WsClient) -> Vec<String> {
    c.text("StartSpeaking").await;
    c.audio(5).await;
    c.text("StopSpeaking").await;
    let mut messages: Vec<String> = Vec::new();
    while messages.len() < 2 {
        match c.next().await {
            Frame::Text(t) if t.starts_with(r#"Message {"role":"user""#) => messages.push(t),
            Frame::Text(t) if t.starts_with("Message ") && !messages.is_empty() => messages.push(t),
            Frame::Text(_) | Frame::Binary(_) => {}
            other => panic!("{other:?}"),
        }
    }
    messages
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name("sqlite").await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name("postgres").await;
            })*
        }
    };
}

both_backends!(resume_gives_the_agent_its_history_then_erasure);

async fn resume_gives_the_agent_its_history_then_erasure(backend: &str) {
    let h = Harness::start(
        backend,
        &["Je m'appelle Alice", "Quel est mon nom ?"],
        |_, _| {},
    )
    .await;
    // Call 1: the greeting, one turn.
    let mut c = h.client().await;
    c.text(r#"{"user_ref": "alice-42", "lang": "fr"}"#).await;
    let (f, _) = c.next_text().await;
    assert_eq!(
        f,
        Frame::Text(r#"Message {"role":"assistant","content":"Bonjour"}"#.into())
    );
    let turn = user_turn(&mut c).await;
    assert!(turn[0].contains("Je m'appelle Alice"), "{turn:?}");
    c.close().await;
    let calls = h.ended_calls(1).await;
    let id1 = calls[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(calls[0]["conversation_id"], id1.as_str());
    assert_eq!(calls[0]["user_ref"], "alice-42");
    assert_eq!(calls[0]["resumed"], false);

    // Call 2 resumes: no greeting, the agent sees the whole history.
    let mut c = h.client().await;
    c.text(&json!({"conversation_id": id1}).to_string()).await;
    let first = c.next_within(Duration::from_millis(300)).await;
    assert!(
        !matches!(&first, Some(Frame::Text(t)) if t.contains("Bonjour")),
        "the first message was spoken again: {first:?}"
    );
    let turn = user_turn(&mut c).await;
    assert!(turn[0].contains("Quel est mon nom"), "{turn:?}");
    c.close().await;
    let last = format!("{:?}", h.model.requests().last().unwrap());
    assert!(last.contains("Je m'appelle Alice"), "no history: {last}");
    assert!(last.contains("Bonjour"), "no history: {last}");

    let calls = h.ended_calls(2).await;
    let id2 = calls[0]["id"].as_str().unwrap().to_owned();
    assert_ne!(id1, id2);
    assert_eq!(calls[0]["conversation_id"], id1.as_str());
    assert_eq!(calls[0]["resumed"], true);
    // The detail of either call is the whole conversation.
    let (status, d) = h.get(&format!("/api/calls/{id2}")).await;
    assert_eq!(status, 200);
    let roles: Vec<&str> = d["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"]["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["assistant", "user", "assistant", "user", "assistant"]
    );
    assert_eq!(d["calls"].as_array().unwrap().len(), 2);
    // Each answered turn's latencies, across both calls.
    let turns = d["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2, "{d}");
    assert!(turns.iter().all(|t| t["stt_ms"].is_number()), "{d}");
    assert_eq!(d["provider_hosts"], json!(["sim.local:1"]));
    assert_eq!(d["params"], json!({"conversation_id": id1}));

    // Export of the data subject, then erasure through the second call.
    let (status, export) = h.get("/api/export?user_ref=alice-42").await;
    assert_eq!(status, 200);
    assert_eq!(export["conversations"].as_array().unwrap().len(), 1);
    let (status, _) = h
        .api(
            reqwest::Method::DELETE,
            &format!("/api/calls/{id2}"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, 204);
    for id in [&id1, &id2] {
        let (status, _) = h.get(&format!("/api/calls/{id}")).await;
        assert_eq!(status, 404);
    }
    let (status, _) = h
        .api(
            reqwest::Method::DELETE,
            &format!("/api/calls/{id1}"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, 404);
    // And the conversation cannot be resumed any more.
    let mut c = h.client().await;
    c.text(&json!({"conversation_id": id1}).to_string()).await;
    assert_eq!(
        c.next().await,
        Frame::Close(4404, "Conversation not found".into())
    );
    h.store.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn unknown_conversation_is_4404_unless_created() {
    let h = Harness::start("sqlite", &["Oui"], |_, _| {}).await;
    let mut c = h.client().await;
    c.text(r#"{"conversation_id": "does-not-exist"}"#).await;
    assert_eq!(
        c.next().await,
        Frame::Close(4404, "Conversation not found".into())
    );
    let mut c = h.client().await;
    c.text(r#"{"conversation_id": 7}"#).await;
    assert_eq!(c.next().await, Frame::Close(4400, "Invalid params".into()));

    let h = Harness::start("sqlite", &["Oui"], |s, _| s.create_on_unknown = true).await;
    let mut c = h.client().await;
    c.text(r#"{"conversation_id": "chosen-by-the-app"}"#).await;
    let (f, _) = c.next_text().await;
    assert_eq!(
        f,
        Frame::Text(r#"Message {"role":"assistant","content":"Bonjour"}"#.into())
    );
    c.close().await;
    let calls = h.ended_calls(1).await;
    assert_eq!(calls[0]["conversation_id"], "chosen-by-the-app");
}

#[tokio::test]
async fn without_params_the_first_frame_is_handled_normally() {
    let h = Harness::start("sqlite", &["Allô"], |_, _| {}).await;
    let mut c = h.client().await;
    // No params: the greeting comes after the short params wait, and a command as first frame
    // is the call's, not params.
    c.text("StartSpeaking").await;
    c.audio(5).await;
    c.text("StopSpeaking").await;
    let mut user = false;
    for _ in 0..200 {
        match c.next().await {
            Frame::Text(t) if t.contains(r#""role":"user","content":"Allô""#) => {
                user = true;
                break;
            }
            Frame::Text(_) | Frame::Binary(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(user);
    c.close().await;
    let calls = h.ended_calls(1).await;
    assert_eq!(calls[0]["params"], json!({}));
}

#[tokio::test]
async fn admin_api_needs_an_admin_token_never_a_call_token() {
    let h = Harness::start("sqlite", &["Oui"], |_, o| {
        o.bearer_tokens = vec![CALL_TOKEN.into()];
    })
    .await;
    for path in [
        "/api/calls",
        "/api/calls/x",
        "/api/calls/x/recording",
        "/api/export?user_ref=a",
    ] {
        let (status, _) = h.api(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 401, "{path}");
        let (status, _) = h.api(reqwest::Method::GET, path, Some(CALL_TOKEN)).await;
        assert_eq!(status, 401, "{path}");
    }
    let (status, _) = h
        .api(
            reqwest::Method::DELETE,
            "/api/calls?user_ref=a",
            Some(CALL_TOKEN),
        )
        .await;
    assert_eq!(status, 401);
    let (status, v) = h.get("/api/calls").await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"calls": [], "next_before": null}));
    // Erasing everything needs a data subject.
    let (status, _) = h
        .api(reqwest::Method::DELETE, "/api/calls", Some(ADMIN))
        .await;
    assert_eq!(status, 400);
    let (status, _) = h.get("/api/calls?limit=0").await;
    assert_eq!(status, 400);
    // The admin token is not a call token either.
    let mut c = h.client().await;
    c.text(&json!({"authorization": format!("Bearer {ADMIN}")}).to_string())
        .await;
    assert_eq!(c.next().await, Frame::Close(4401, "Unauthorized".into()));
    // A call with the call token, params stored without it.
    let mut c = h.client().await;
    c.text(
        &json!({"authorization": format!("Bearer {CALL_TOKEN}"), "user_ref": "bob"}).to_string(),
    )
    .await;
    let (f, _) = c.next_text().await;
    assert!(f.text().unwrap().contains("Bonjour"));
    c.close().await;
    let calls = h.ended_calls(1).await;
    assert_eq!(calls[0]["params"], json!({"user_ref": "bob"}));
    let (status, v) = h
        .api(
            reqwest::Method::DELETE,
            "/api/calls?user_ref=bob",
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["erased"]["conversations"], 1);
    let (_, v) = h.get("/api/calls").await;
    assert_eq!(v["calls"], json!([]));
}

#[tokio::test]
async fn recordings_are_stereo_wav_served_and_erased() {
    let h = Harness::start("sqlite", &["Bonjour à vous"], |s, _| s.record_audio = true).await;
    let mut c = h.client().await;
    c.text("{}").await;
    let turn = user_turn(&mut c).await;
    assert!(turn[0].contains("Bonjour à vous"));
    // Let the answer's audio arrive, then hang up.
    let _ = c.drain(Duration::from_millis(300)).await;
    c.close().await;
    let calls = h.ended_calls(1).await;
    let id = calls[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(calls[0]["has_recording"], true);
    let r = h
        .http
        .get(h.url(&format!("/api/calls/{id}/recording")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/wav");
    let wav = r.bytes().await.unwrap();
    let mut reader = hound::WavReader::new(std::io::Cursor::new(wav.to_vec())).unwrap();
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 16_000, 16)
    );
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    // The client's audio (bytes 0x01 0x01 = 257) on the left, the scripted TTS's on the right.
    let left = samples.iter().step_by(2).filter(|&&s| s == 257).count();
    let right = samples
        .iter()
        .skip(1)
        .step_by(2)
        .filter(|&&s| s != 0)
        .count();
    assert_eq!(left, 5 * 1600, "user samples");
    assert!(right > 0, "assistant samples");
    // Erased with the conversation.
    let path = h.store.store().recording_path(&id).await.unwrap().unwrap();
    assert!(path.exists());
    let (status, _) = h
        .api(
            reqwest::Method::DELETE,
            &format!("/api/calls/{id}"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, 204);
    assert!(!path.exists());
    let (status, _) = h.get(&format!("/api/calls/{id}/recording")).await;
    assert_eq!(status, 404);
}
