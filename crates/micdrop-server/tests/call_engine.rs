//! The call engine's own guarantees over real WebSockets (issue #10): the call id and close in
//! the call's end, per-turn latencies, cancelled tool results after a barge-in, and paced
//! assistant audio: after a barge-in no frame of the cancelled answer reaches the client, on
//! the engine stack (trait-level providers) and on the provider stack (the real clients against
//! micdrop-sim).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use micdrop_core::Role;
use micdrop_core::agent::{Agent, Tool};
use micdrop_core::call::{CallClose, CallConfig, CallEvent, TurnLatencies};
use micdrop_core::tts::{TextToSpeech, TtsCommand, TtsEvent, TtsSessionIo};
use micdrop_testkit::{Frame, ModelStep, ScriptedModel, ScriptedStt, ScriptedTts, WsClient};
use serde_json::json;

mod common;
use common::{Harness, turn};

fn stt(texts: &[&str]) -> Arc<ScriptedStt> {
    Arc::new(ScriptedStt::transcripts(texts))
}

fn is_uuid_v4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
        && parts[2].starts_with('4')
}

#[tokio::test]
async fn the_end_carries_the_call_id_and_the_close() {
    // An id set by the embedder, and the server's close.
    let h = Harness::start(
        CallConfig::new(stt(&[]))
            .call_id("call-from-the-embedder")
            .idle_timeout(Duration::from_millis(300)),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    assert_eq!(c.next().await, Frame::Close(1000, "Idle timeout".into()));
    let end = h.wait_end().await;
    assert_eq!(end.call_id, "call-from-the-embedder");
    assert_eq!(
        end.close,
        Some(CallClose {
            code: 1000,
            reason: "Idle timeout".into(),
            by_server: true
        })
    );

    // Made by the engine: a UUID v4, a new one per call; the client's close.
    let h = Harness::start(CallConfig::new(stt(&[]))).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut c = h.client().await;
        c.expect_text("SkipAnswer").await;
        c.close_with(4000).await;
        let end = h.wait_end().await;
        assert!(is_uuid_v4(&end.call_id), "{}", end.call_id);
        assert_eq!(
            end.close.as_ref().map(|c| (c.code, c.by_server)),
            Some((4000, false))
        );
        ids.push(end.call_id);
    }
    assert_ne!(ids[0], ids[1]);
}

fn latencies(rx: &mut tokio::sync::mpsc::Receiver<CallEvent>) -> Vec<TurnLatencies> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let CallEvent::TurnLatencies(l) = ev {
            out.push(l);
        }
    }
    out
}

#[tokio::test]
async fn each_answered_turn_reports_its_latencies() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let model = ScriptedModel::default();
    let h = Harness::start(
        CallConfig::new(stt(&["Salut", "Encore"]))
            .agent(Agent::new(Arc::new(model), "test"))
            .tts(Arc::new(ScriptedTts::new()))
            .observer(tx),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 2).await;
    c.expect_text(r#"Message {"role":"user","content":"Salut"}"#)
        .await;
    c.expect_text(r#"Message {"role":"assistant","content":"You said: Salut"}"#)
        .await;
    while c.next_within(Duration::from_millis(300)).await.is_some() {}
    let l = latencies(&mut rx);
    assert_eq!(l.len(), 1, "{l:?}");
    let l = l[0];
    let (stt, llm, tts, v2v) = (
        l.stt.unwrap(),
        l.llm_first_token.unwrap(),
        l.tts_first_audio.unwrap(),
        l.voice_to_voice.unwrap(),
    );
    // Voice to voice spans the stages (they follow each other).
    assert!(v2v >= stt && v2v >= llm && v2v >= tts, "{l:?}");
    // A turn without any audio from the client gets no latencies.
    c.text("StartSpeaking").await;
    c.text("StopSpeaking").await;
    c.expect_text("SkipAnswer").await;
    assert!(latencies(&mut rx).is_empty());
}

#[tokio::test]
async fn a_text_only_answer_has_no_audio_latencies() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let h = Harness::start(
        CallConfig::new(stt(&["Salut"]))
            .agent(Agent::new(Arc::new(ScriptedModel::default()), "test"))
            .observer(tx),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(r#"Message {"role":"user","content":"Salut"}"#)
        .await;
    c.expect_text(r#"Message {"role":"assistant","content":"You said: Salut"}"#)
        .await;
    c.expect_text("SkipAnswer").await;
    let l = latencies(&mut rx);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(l[0].stt.is_some() && l[0].llm_first_token.is_some());
    assert_eq!((l[0].tts_first_audio, l[0].voice_to_voice), (None, None));
}

#[tokio::test]
async fn a_barge_in_during_a_slow_tool_gives_the_tool_call_a_cancelled_result() {
    let model = ScriptedModel::new([
        ModelStep::Tools(vec![("slow".into(), "{}".into())]),
        ModelStep::words("Done."),
    ]);
    let agent = Agent::new(Arc::new(model.clone()), "test").tool(
        Tool::new("slow", "Takes its time").handler(|_| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(json!({"never": true}))
        }),
    );
    let h = Harness::start(CallConfig::new(stt(&["Go"])).agent(agent)).await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(r#"Message {"role":"user","content":"Go"}"#)
        .await;
    let call =
        json!({"role":"tool_call","toolCallId":"call00000","toolName":"slow","parameters":"{}"});
    c.expect_text(&format!("Message {call}")).await;
    c.text("StartSpeaking").await;
    let result = json!({"role":"tool_result","toolCallId":"call00000","toolName":"slow",
        "output":"{\"error\":\"cancelled: the user interrupted the answer\"}"});
    c.expect_text(&format!("Message {result}")).await;
    c.close().await;
    let end = h.wait_end().await;
    let roles: Vec<Role> = end.conversation.iter().map(|i| i.role()).collect();
    assert_eq!(
        roles,
        [Role::System, Role::User, Role::ToolCall, Role::ToolResult]
    );
    // The model was not asked again (the answer was cancelled in the tool).
    assert_eq!(model.requests().len(), 1);
}

/// A TTS that speaks each character as one second of audio, produced at once (a provider far
/// faster than real time).
#[derive(Clone, Default)]
struct FastTts {
    cancels: Arc<Mutex<usize>>,
}

impl TextToSpeech for FastTts {
    fn name(&self) -> &str {
        "fast-tts"
    }

    fn run(&self, mut io: TtsSessionIo) -> BoxFuture<'static, ()> {
        let cancels = self.cancels.clone();
        Box::pin(async move {
            let mut worker: Option<tokio::task::JoinHandle<()>> = None;
            while let Some(cmd) = io.commands.recv().await {
                match cmd {
                    TtsCommand::Text(u, text) => {
                        let events = io.events.clone();
                        let previous = worker.take();
                        worker = Some(tokio::spawn(async move {
                            if let Some(p) = previous {
                                let _ = p.await;
                            }
                            for c in text.bytes() {
                                let pcm = Bytes::from(vec![c; 32_000]);
                                if events.send(TtsEvent::Audio(u, pcm)).await.is_err() {
                                    return;
                                }
                            }
                        }));
                    }
                    TtsCommand::Cancel => {
                        *cancels.lock().unwrap() += 1;
                        if let Some(w) = worker.take() {
                            w.abort();
                        }
                    }
                    TtsCommand::Speak(_) | TtsCommand::EndText(_) => {}
                }
            }
        })
    }
}

/// Reads audio frames until `gap` passes without one; returns their bytes.
async fn audio_until_gap(c: &mut WsClient, gap: Duration) -> usize {
    let mut audio = 0;
    while let Some(f) = c.next_within(gap).await {
        match f {
            Frame::Binary(b) => audio += b.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    audio
}

#[tokio::test]
async fn paced_audio_a_barge_in_gets_no_frame_of_the_cancelled_answer_engine_stack() {
    let tts = FastTts::default();
    // Six seconds of first message, 2 s of lead: a first burst of 2 s, then a burst each
    // second when 1 s is left to play.
    let h = Harness::start(
        CallConfig::new(stt(&[]))
            .tts(Arc::new(tts.clone()))
            .first_message("abcdef")
            .audio_lead(Some(Duration::from_secs(2))),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text(r#"Message {"role":"assistant","content":"abcdef"}"#)
        .await;
    // The first burst, then a pause: the rest waits on the server (unpaced, all six seconds
    // would be here).
    let first = audio_until_gap(&mut c, Duration::from_millis(300)).await;
    assert_eq!(first, 2 * 32_000, "the first burst is the lead");
    c.text("StartSpeaking").await;
    let late = audio_until_gap(&mut c, Duration::from_millis(1500)).await;
    assert_eq!(late, 0, "audio of the cancelled answer after StartSpeaking");
    assert_eq!(*tts.cancels.lock().unwrap(), 1);
}

#[tokio::test]
async fn unpaced_audio_goes_out_as_fast_as_it_comes() {
    let h = Harness::start(
        CallConfig::new(stt(&[]))
            .tts(Arc::new(FastTts::default()))
            .first_message("abcdef")
            .audio_lead(None),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text(r#"Message {"role":"assistant","content":"abcdef"}"#)
        .await;
    assert_eq!(
        audio_until_gap(&mut c, Duration::from_millis(300)).await,
        6 * 32_000
    );
}

#[cfg(feature = "sim")]
#[tokio::test]
async fn paced_audio_a_barge_in_gets_no_frame_of_the_cancelled_answer_provider_stack() {
    use micdrop_server::App;
    use micdrop_server::config::Config;
    use micdrop_sim::SimScript;
    let mut config = Config::from_toml(
        "[call]\naudio_lead_ms = 2000\nfirst_message = \"Bonjour, je suis votre assistant vocal, \
         je vais vous raconter une histoire assez longue pour durer plusieurs secondes, puis \
         encore quelques phrases pour être sûr que la réponse dure longtemps.\"\n",
        "test.toml",
    )
    .unwrap();
    config.server.listen = "127.0.0.1:0".into();
    let script = SimScript::from_toml_str("[sim]\n").unwrap().zero_delay();
    let app = App::start(config, Some(script)).await.unwrap();
    let url = format!("ws://{}{}", app.server.local_addr(), app.path);
    let mut c = WsClient::connect(&url).await;
    let (f, _) = c.next_text().await;
    assert!(f.text().unwrap().starts_with("Message "), "{f:?}");
    // Wait for the first audio, then read the first burst to its end.
    let mut first = 0;
    while first == 0 {
        if let Frame::Binary(b) = c.next().await {
            first += b.len();
        }
    }
    first += audio_until_gap(&mut c, Duration::from_millis(300)).await;
    // At most the lead (2 s) and one TTS chunk more.
    assert!(first <= 2 * 32_000 + 8_000, "first burst: {first} bytes");
    c.text("StartSpeaking").await;
    let late = audio_until_gap(&mut c, Duration::from_millis(1500)).await;
    assert_eq!(late, 0, "audio of the cancelled answer after StartSpeaking");
    c.close().await;
}

#[tokio::test]
async fn conversation_is_unchanged_by_pacing() {
    // The same turn, paced and unpaced, gives the same frames.
    let mut runs = Vec::new();
    for lead in [Some(Duration::from_millis(100)), None] {
        let h = Harness::start(
            CallConfig::new(stt(&["Salut"]))
                .agent(Agent::new(Arc::new(ScriptedModel::default()), "test"))
                .tts(Arc::new(ScriptedTts::new()))
                .audio_lead(lead),
        )
        .await;
        let mut c = h.client().await;
        c.expect_text("SkipAnswer").await;
        turn(&mut c, 1).await;
        let mut frames = Vec::new();
        let mut audio = 0;
        while let Some(f) = c.next_within(Duration::from_millis(400)).await {
            match f {
                Frame::Binary(b) => audio += b.len(),
                Frame::Text(t) => frames.push(t),
                other => panic!("{other:?}"),
            }
        }
        runs.push((frames, audio));
    }
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0].1, "You said: Salut".len() * 4);
    assert_eq!(
        runs[0].0,
        vec![
            r#"Message {"role":"user","content":"Salut"}"#.to_owned(),
            r#"Message {"role":"assistant","content":"You said: Salut"}"#.to_owned(),
        ]
    );
}
