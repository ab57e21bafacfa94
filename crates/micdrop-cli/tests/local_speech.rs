//! Real speech, nothing leaving the host: espeak-ng speaks French into a WAV, `micdrop call
//! --input` sends it to `micdrop serve --local` (Whisper, espeak-ng, an OpenAI-compatible model
//! server on loopback) or to `micdrop serve --sim` (Whisper from the models cache), and the user
//! message holds the words. Also: `serve --local` without a model server says what to start and
//! exits non-zero; scripted `[sim] transcripts` take precedence over Whisper.
//!
//! The Whisper model comes from the models cache (`MICDROP_MODELS_DIR` or
//! `~/.cache/micdrop/models`), which `scripts/test` fills with `scripts/pull-models`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};

mod common;

fn micdrop() -> Command {
    Command::new(env!("CARGO_BIN_EXE_micdrop"))
}

/// With its punctuation: espeak-ng's prosody without it is hard to understand, even for a person.
const FRENCH: &str = "Bonjour, je voudrais réserver une table pour deux personnes ce soir.";
/// Key words (Whisper's spelling of espeak's "réserver" varies: it is not one of them).
const WORDS: &[&str] = &["bonjour", "voudrais", "table", "deux", "personnes", "soir"];

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("micdrop-local-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Fails (never skips) when the model the test needs is not in the cache.
fn require_whisper_base() {
    if let Err(e) = micdrop_local::models::ModelsDir::from_env().whisper_model("base") {
        panic!("{e}: the tests need the models of scripts/pull-models (scripts/test runs it)");
    }
}

/// espeak-ng speaks `text` in French (22.05 kHz WAV), padded with 0.5 s of silence before and
/// 1.5 s after so that the client's VAD sees one turn with a start and an end.
fn french_wav(dir: &Path, text: &str) -> PathBuf {
    let raw = dir.join("raw.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", "fr", "-s", "130", "-w"])
        .arg(&raw)
        .arg(text)
        .status()
        .expect("espeak-ng (scripts/deps installs it)");
    assert!(status.success());
    let mut reader = hound::WavReader::open(&raw).unwrap();
    let spec = reader.spec();
    let speech: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let rate = spec.sample_rate as usize;
    let path = dir.join("speech.wav");
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for s in std::iter::repeat_n(0, rate / 2)
        .chain(speech)
        .chain(std::iter::repeat_n(0, rate * 3 / 2))
    {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    path
}

/// Accent- and case-insensitive form, for comparing transcripts.
fn fold(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| match c {
            'à' | 'â' | 'ä' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'î' | 'ï' => 'i',
            'ô' | 'ö' => 'o',
            'ù' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            c => c,
        })
        .collect()
}

/// The user messages (one, or two if the comma's pause ended a turn), joined.
fn user_text(lines: &[String]) -> String {
    let user: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("user: "))
        .collect();
    assert!(!user.is_empty(), "no user message: {lines:?}");
    user.join(" ")
}

fn has_words(text: &str, min: usize) -> bool {
    let t = fold(text);
    WORDS.iter().filter(|w| t.contains(*w)).count() >= min
}

/// A running `micdrop serve` and its stderr lines.
struct Serve {
    child: std::process::Child,
    addr: SocketAddr,
    lines: Vec<String>,
}

impl Serve {
    /// Starts `micdrop serve ARGS --listen 127.0.0.1:0 --config CONFIG` and waits for its
    /// banner (Whisper loads first).
    fn start(dir: &Path, config: &str, args: &[&str]) -> Serve {
        let path = dir.join("serve.toml");
        std::fs::write(&path, config).unwrap();
        let started = common::spawn_serve(
            micdrop()
                .arg("serve")
                .args(args)
                .args(["--listen", "127.0.0.1:0", "--config"])
                .arg(&path),
            Duration::from_secs(120),
        );
        Serve {
            child: started.child,
            addr: started.addr,
            lines: started.seen,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/call", self.addr)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `micdrop call URL --input WAV`: the conversation lines (`user: ...`, `assistant: ...`).
async fn call_with(url: String, wav: PathBuf) -> Vec<String> {
    let out = tokio::task::spawn_blocking(move || {
        micdrop()
            .args(["call", &url, "--timeout-ms", "60000", "--input"])
            .arg(&wav)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "micdrop call failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
        .lines()
        .map(|l| l.split("] ").nth(1).unwrap_or(l).to_owned())
        .collect()
}

/// A small OpenAI-compatible model server on loopback (what Ollama serves at /v1): `GET
/// /v1/models` lists one model; `POST /v1/chat/completions` streams `Vous avez dit : <last user
/// message>` as OpenAI chunks, refusing another model name as Ollama does (404).
#[derive(Clone, Default)]
struct ModelServer {
    requests: Arc<Mutex<Vec<Value>>>,
}

const LOCAL_MODEL: &str = "llama-local:latest";

async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{ "id": LOCAL_MODEL, "object": "model", "created": 0, "owned_by": "library" }]
    }))
}

async fn chat(State(s): State<ModelServer>, Json(body): Json<Value>) -> axum::response::Response {
    s.requests.lock().unwrap().push(body.clone());
    if body["model"] != LOCAL_MODEL {
        let error = json!({ "error": { "message": format!("model {:?} not found, try pulling it first", body["model"]), "type": "api_error" } });
        return (axum::http::StatusCode::NOT_FOUND, Json(error)).into_response();
    }
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let answer = format!("Vous avez dit : {last_user}");
    let chunk = |delta: Value, finish: Value| {
        let c = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": LOCAL_MODEL,
            "system_fingerprint": "fp_ollama",
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }]
        });
        format!("data: {c}\n\n")
    };
    let mut sse = chunk(json!({ "role": "assistant", "content": "" }), Value::Null);
    for (i, word) in answer.split(' ').enumerate() {
        let piece = if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        };
        sse.push_str(&chunk(
            json!({ "role": "assistant", "content": piece }),
            Value::Null,
        ));
    }
    sse.push_str(&chunk(
        json!({ "role": "assistant", "content": "" }),
        json!("stop"),
    ));
    sse.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], sse).into_response()
}

async fn start_model_server() -> (String, ModelServer) {
    let state = ModelServer::default();
    let app = axum::Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1"), state)
}

/// Runs `micdrop serve --local --model-url URL`, which must fail; returns its stderr.
async fn serve_local_fails(model_url: String) -> String {
    let out = tokio::task::spawn_blocking(move || {
        micdrop()
            .args([
                "serve",
                "--local",
                "--listen",
                "127.0.0.1:0",
                "--model-url",
                &model_url,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    err
}

#[tokio::test]
async fn serve_local_without_a_model_server_says_what_to_start() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    let err = serve_local_fails(url).await;
    assert!(err.contains("no model server answers"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}/v1/models")),
        "{err}"
    );
    assert!(
        err.contains("ollama serve") && err.contains("--model-url"),
        "{err}"
    );

    // A model server on another host is refused by the local policy before it is contacted
    // (192.0.2.1, a documentation address, would time out).
    let err = serve_local_fails("http://192.0.2.1:11434/v1".into()).await;
    assert!(
        err.contains("192.0.2.1") && err.contains("not local") && !err.contains("no model server"),
        "{err}"
    );

    // A server that is not an OpenAI-compatible API (404 on /v1/models) is named as such.
    let (base, _) = start_model_server().await;
    let wrong = base.replace("/v1", "/api");
    let err = serve_local_fails(wrong).await;
    assert!(
        err.contains("404") && err.contains("OpenAI-compatible"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_local_understands_french_with_whisper_and_a_local_model_server() {
    require_whisper_base();
    let dir = temp_dir("serve-local");
    let wav = french_wav(&dir, FRENCH);
    let (base, model_server) = start_model_server().await;
    // No model named: the first one the server lists is used.
    let serve = Serve::start(
        &dir,
        "[call]\nfirst_message = \"Bonjour, que puis-je faire pour vous ?\"\n",
        &["--local", "--model-url", &base],
    );
    let banner = serve.lines.join("\n");
    assert!(
        banner.contains(&format!("local: model {LOCAL_MODEL} at {base}")),
        "{banner}"
    );
    assert!(banner.contains("Whisper (base, fr)"), "{banner}");
    assert!(banner.contains("espeak-ng (fr)"), "{banner}");

    let lines = call_with(serve.url(), wav).await;
    let user = user_text(&lines);
    assert!(has_words(&user, 4), "transcript: {user:?}");
    // The local model got the transcript and its answer came back.
    let answer = lines
        .iter()
        .filter_map(|l| l.strip_prefix("assistant: "))
        .find(|a| a.starts_with("Vous avez dit"))
        .unwrap_or_else(|| panic!("no answer of the model: {lines:?}"));
    assert!(
        answer.starts_with("Vous avez dit : ")
            && user.contains(&answer["Vous avez dit : ".len()..]),
        "{answer:?} / {user:?}"
    );
    let requests = model_server.requests.lock().unwrap().clone();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r["model"] == LOCAL_MODEL));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sim_transcribes_real_speech_with_whisper_from_the_cache() {
    require_whisper_base();
    let dir = temp_dir("serve-sim-whisper");
    let wav = french_wav(&dir, FRENCH);
    // No [sim] transcripts: Whisper hears the user; the simulated Mistral echoes them.
    let serve = Serve::start(
        &dir,
        "[call]\nfirst_message = \"Bonjour\"\n[sim]\nzero_delay = true\n",
        &["--sim"],
    );
    let banner = serve.lines.join("\n");
    assert!(
        banner.contains("transcribed by Whisper (base, language fr"),
        "{banner}"
    );
    let lines = call_with(serve.url(), wav).await;
    let user = user_text(&lines);
    assert!(has_words(&user, 4), "transcript: {user:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("assistant: Vous avez dit : «") && has_words(l, 4)),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sim_scripted_transcripts_take_precedence_over_whisper() {
    require_whisper_base();
    let dir = temp_dir("serve-sim-scripted");
    let wav = french_wav(&dir, FRENCH);
    let serve = Serve::start(
        &dir,
        "[call]\nfirst_message = \"Bonjour\"\n[stt]\nprovider = \"whisper\"\n[stt.gladia]\nendpointing = 0.4\n\
         [sim]\nzero_delay = true\ntranscripts = [\"Quelle heure est-il ?\"]\n",
        &["--sim"],
    );
    let banner = serve.lines.join("\n");
    assert!(
        banner.contains("transcribed from the 1 scripted [sim] transcripts"),
        "{banner}"
    );
    let lines = call_with(serve.url(), wav).await;
    assert!(
        lines.iter().any(|l| l == "user: Quelle heure est-il ?"),
        "{lines:?}"
    );
}
