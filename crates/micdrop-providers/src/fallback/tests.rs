use micdrop_core::agent::ChatMessage;
use micdrop_testkit::{ModelStep, ScriptedModel, ScriptedStt, ScriptedTts, SttScript};

use super::*;

fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::User("bonjour".into())],
        tools: vec![],
    }
}

async fn text_of(model: &FallbackModel) -> (String, usize) {
    let mut s = model.stream(request());
    let (mut text, mut errs) = (String::new(), 0);
    while let Some(c) = s.next().await {
        match c {
            Ok(ChatChunk::Text(t)) => text.push_str(&t),
            Ok(_) => {}
            Err(_) => errs += 1,
        }
    }
    (text, errs)
}

#[tokio::test]
async fn model_falls_back_with_the_same_request_and_sticks_to_the_survivor() {
    let a = ScriptedModel::new([ModelStep::Fail]);
    let b = ScriptedModel::new([ModelStep::words("Bonjour !"), ModelStep::words("Encore")]);
    let f = FallbackModel::new(vec![Arc::new(a.clone()), Arc::new(b.clone())]);
    assert_eq!(text_of(&f).await, ("Bonjour !".into(), 0));
    assert_eq!(a.requests().len(), 1);
    assert_eq!(b.requests(), vec![request()], "same request replayed");
    assert_eq!(f.current(), 1);
    // Next answer goes straight to the model that worked.
    assert_eq!(text_of(&f).await.0, "Encore");
    assert_eq!(a.requests().len(), 1);
}

#[tokio::test]
async fn model_gives_up_after_one_rotation() {
    let a = ScriptedModel::new([ModelStep::Fail]);
    let b = ScriptedModel::new([ModelStep::Fail]);
    let f = FallbackModel::new(vec![Arc::new(a.clone()), Arc::new(b.clone())]);
    assert_eq!(text_of(&f).await, (String::new(), 1));
    assert_eq!((a.requests().len(), b.requests().len()), (1, 1));
}

#[tokio::test]
async fn a_silent_model_times_out_into_the_fallback() {
    let a = ScriptedModel::new([ModelStep::Hang]);
    let b = ScriptedModel::new([ModelStep::words("Ok")]);
    let f = FallbackModel::new(vec![Arc::new(a.clone()), Arc::new(b)])
        .with_first_chunk_timeout(Duration::from_millis(50));
    assert_eq!(text_of(&f).await, ("Ok".into(), 0));
    assert_eq!(a.cancelled(), 1, "the hanging stream was dropped");
}

async fn stt_session(
    p: FallbackStt,
) -> (
    mpsc::Sender<SttCommand>,
    mpsc::Receiver<SttEvent>,
    JoinHandle<()>,
) {
    let (ctx, crx) = mpsc::channel(64);
    let (etx, erx) = mpsc::channel(64);
    let h = tokio::spawn(p.run(SttSessionIo {
        commands: crx,
        events: etx,
    }));
    (ctx, erx, h)
}

async fn turn(tx: &mpsc::Sender<SttCommand>, chunks: &[&'static [u8]]) {
    tx.send(SttCommand::StartTurn).await.unwrap();
    for c in chunks {
        tx.send(SttCommand::Audio(Bytes::from_static(c)))
            .await
            .unwrap();
    }
    tx.send(SttCommand::EndTurn).await.unwrap();
}

#[tokio::test]
async fn stt_failure_replays_the_pending_audio_on_the_next_provider() {
    let a = ScriptedStt::new([SttScript::Fail]);
    let b = ScriptedStt::transcripts(&["bonjour"]);
    let (tx, mut rx, _h) = stt_session(FallbackStt::new(vec![
        Arc::new(a.clone()),
        Arc::new(b.clone()),
    ]))
    .await;
    turn(&tx, &[b"aa", b"bb"]).await;
    let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .unwrap();
    assert_eq!(ev, Some(SttEvent::Transcript("bonjour".into())));
    // The scripted Failed carries no pending audio: the fallback replays its own copy.
    let got = b.commands();
    assert_eq!(
        got,
        vec![
            SttCommand::StartTurn,
            SttCommand::Audio(Bytes::from_static(b"aa")),
            SttCommand::Audio(Bytes::from_static(b"bb")),
            SttCommand::EndTurn
        ]
    );
}

#[tokio::test]
async fn stt_watchdog_catches_a_provider_that_says_nothing() {
    let a = ScriptedStt::new([SttScript::Hang]);
    let b = ScriptedStt::transcripts(&["salut"]);
    let f = FallbackStt::new(vec![Arc::new(a), Arc::new(b.clone())])
        .with_watchdog(Duration::from_millis(60));
    let (tx, mut rx, _h) = stt_session(f).await;
    turn(&tx, &[b"cc"]).await;
    let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .unwrap();
    assert_eq!(ev, Some(SttEvent::Transcript("salut".into())));
    assert_eq!(b.commands().len(), 3);
}

#[tokio::test]
async fn stt_reports_failed_when_every_provider_failed() {
    let a = ScriptedStt::new([SttScript::Fail]);
    let b = ScriptedStt::new([SttScript::Fail]);
    let (tx, mut rx, _h) = stt_session(FallbackStt::new(vec![Arc::new(a), Arc::new(b)])).await;
    turn(&tx, &[b"dd"]).await;
    let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev, SttEvent::Failed { .. }), "{ev:?}");
}

/// Speaks anything (the text's bytes as audio) and records its commands.
#[derive(Clone, Default)]
struct EchoTts(Arc<std::sync::Mutex<Vec<TtsCommand>>>);

impl EchoTts {
    fn commands(&self) -> Vec<TtsCommand> {
        self.0.lock().unwrap().clone()
    }
}

impl TextToSpeech for EchoTts {
    fn name(&self) -> &str {
        "echo"
    }
    fn run(&self, mut io: TtsSessionIo) -> BoxFuture<'static, ()> {
        let log = self.0.clone();
        Box::pin(async move {
            while let Some(c) = io.commands.recv().await {
                log.lock().unwrap().push(c.clone());
                let ev = match c {
                    TtsCommand::Text(u, t) => TtsEvent::Audio(u, Bytes::from(t.into_bytes())),
                    TtsCommand::EndText(u) => TtsEvent::Done(u),
                    _ => continue,
                };
                let _ = io.events.send(ev).await;
            }
        })
    }
}

#[tokio::test]
async fn tts_failure_respeaks_the_unspoken_text_on_the_next_provider() {
    let a = ScriptedTts::new();
    let b = EchoTts::default();
    let f = FallbackTts::new(vec![Arc::new(a.clone()), Arc::new(b.clone())]);
    let (ctx, crx) = mpsc::channel(64);
    let (etx, mut erx) = mpsc::channel(64);
    let _h = tokio::spawn(f.run(TtsSessionIo {
        commands: crx,
        events: etx,
    }));
    ctx.send(TtsCommand::Speak(1)).await.unwrap();
    // ScriptedTts fails on text containing FAIL, reporting that text as unspoken.
    ctx.send(TtsCommand::Text(1, "FAIL here".into()))
        .await
        .unwrap();
    ctx.send(TtsCommand::EndText(1)).await.unwrap();
    let mut audio = 0;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(2), erx.recv())
            .await
            .unwrap()
            .unwrap();
        match ev {
            TtsEvent::Audio(1, b) => audio += b.len(),
            TtsEvent::Done(1) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(audio, "FAIL here".len());
    let cmds = b.commands();
    assert_eq!(cmds[0], TtsCommand::Speak(1));
    assert_eq!(cmds[1], TtsCommand::Text(1, "FAIL here".into()));
}

#[tokio::test]
async fn tts_watchdog_respeaks_unheard_utterances() {
    /// Accepts everything, says nothing.
    struct Mute;
    impl TextToSpeech for Mute {
        fn name(&self) -> &str {
            "mute"
        }
        fn run(&self, mut io: TtsSessionIo) -> BoxFuture<'static, ()> {
            Box::pin(async move { while io.commands.recv().await.is_some() {} })
        }
    }
    let b = EchoTts::default();
    let f = FallbackTts::new(vec![Arc::new(Mute), Arc::new(b.clone())])
        .with_watchdog(Duration::from_millis(60));
    let (ctx, crx) = mpsc::channel(64);
    let (etx, mut erx) = mpsc::channel(64);
    let _h = tokio::spawn(f.run(TtsSessionIo {
        commands: crx,
        events: etx,
    }));
    for c in [
        TtsCommand::Speak(3),
        TtsCommand::Text(3, "Bonjour ".into()),
        TtsCommand::Text(3, "vous".into()),
        TtsCommand::EndText(3),
    ] {
        ctx.send(c).await.unwrap();
    }
    let ev = tokio::time::timeout(Duration::from_secs(2), erx.recv())
        .await
        .unwrap();
    assert_eq!(
        ev,
        Some(TtsEvent::Audio(3, Bytes::from_static(b"Bonjour vous")))
    );
    assert_eq!(
        b.commands(),
        vec![
            TtsCommand::Speak(3),
            TtsCommand::Text(3, "Bonjour vous".into()),
            TtsCommand::EndText(3)
        ]
    );
}
