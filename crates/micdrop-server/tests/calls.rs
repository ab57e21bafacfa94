//! The call server over real WebSockets: exact ordered frames for every rule of Micdrop's server
//! (reference §C), the typical sequences of §A.10 and every close code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use micdrop_core::agent::{Agent, BeforeAnswer, Extract, Tool};
use micdrop_core::call::CallConfig;
use micdrop_core::stt::SttCommand;
use micdrop_core::tts::TtsCommand;
use micdrop_core::{ConversationItem, Role};
use micdrop_server::ServerOptions;
use micdrop_testkit::{
    Frame, ModelStep, ScriptedModel, ScriptedStt, ScriptedTts, SttScript, WsClient,
};
use serde_json::json;

mod common;
use common::{Harness, turn};

const SYSTEM: &str = "You are a test.";
const QUIET: Duration = Duration::from_millis(300);

fn msg(item: serde_json::Value) -> String {
    format!("Message {item}")
}

fn user(text: &str) -> String {
    msg(json!({"role": "user", "content": text}))
}

fn assistant(text: &str) -> String {
    msg(json!({"role": "assistant", "content": text}))
}

fn agent(model: &ScriptedModel) -> Agent {
    Agent::new(Arc::new(model.clone()), SYSTEM)
}

/// Reads frames until `text` arrives; returns the audio bytes seen before it and checks every
/// audio frame has an even length.
async fn until_text(c: &mut WsClient, text: &str) -> usize {
    let mut audio = 0;
    loop {
        match c.next().await {
            Frame::Binary(b) => {
                assert_eq!(b.len() % 2, 0, "odd audio frame");
                audio += b.len();
            }
            Frame::Text(t) if t == text => return audio,
            other => panic!("expected {text:?}, got {other:?}"),
        }
    }
}

/// Reads audio frames until `quiet` passes; returns their total length (asserting no text).
async fn audio_until_quiet(c: &mut WsClient) -> usize {
    let mut audio = 0;
    while let Some(f) = c.next_within(QUIET).await {
        match f {
            Frame::Binary(b) => {
                assert_eq!(b.len() % 2, 0, "odd audio frame");
                audio += b.len();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    audio
}

#[tokio::test]
async fn no_first_message_sends_skip_answer() {
    let h = Harness::start(CallConfig::new(Arc::new(ScriptedStt::transcripts(&[])))).await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    assert_eq!(c.next_within(QUIET).await, None);
}

#[tokio::test]
async fn fixed_first_message_then_a_normal_turn() {
    let model = ScriptedModel::default();
    let tts = ScriptedTts::new();
    let stt = ScriptedStt::transcripts(&["Bonjour"]);
    let h = Harness::start(
        CallConfig::new(Arc::new(stt.clone()))
            .agent(agent(&model))
            .tts(Arc::new(tts.clone()))
            .first_message("Hello there"),
    )
    .await;
    let mut c = h.client().await;
    assert_eq!(until_text(&mut c, &assistant("Hello there")).await, 0);
    // "Hello there" = 11 characters × 4 bytes, in frames of even length.
    assert_eq!(audio_until_quiet(&mut c).await, 44);

    turn(&mut c, 3).await;
    assert_eq!(until_text(&mut c, &user("Bonjour")).await, 0);
    let before = until_text(&mut c, &assistant("You said: Bonjour")).await;
    let after = audio_until_quiet(&mut c).await;
    assert_eq!(before + after, "You said: Bonjour".len() * 4);

    // The STT saw the turn with its three chunks.
    let cmds = stt.commands();
    assert_eq!(cmds.first(), Some(&SttCommand::StartTurn));
    assert_eq!(
        cmds.iter()
            .filter(|c| matches!(c, SttCommand::Audio(_)))
            .count(),
        3
    );
    assert_eq!(cmds.last(), Some(&SttCommand::EndTurn));

    c.close().await;
    let end = h.wait_end().await;
    let roles: Vec<Role> = end
        .conversation
        .iter()
        .map(ConversationItem::role)
        .collect();
    assert_eq!(
        roles,
        [Role::System, Role::Assistant, Role::User, Role::Assistant]
    );
    assert_eq!(end.conversation[0], ConversationItem::system(SYSTEM));
}

#[tokio::test]
async fn generated_first_message_offers_no_tools() {
    let model = ScriptedModel::new([ModelStep::words("Bienvenue !")]);
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&[])))
            .agent(agent(&model).auto_end_call(None))
            .tts(Arc::new(ScriptedTts::new()))
            .generate_first_message(true),
    )
    .await;
    let mut c = h.client().await;
    let before = until_text(&mut c, &assistant("Bienvenue !")).await;
    assert_eq!(
        before + audio_until_quiet(&mut c).await,
        "Bienvenue !".chars().count() * 4
    );
    let reqs = model.requests();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].tools.is_empty());
}

#[tokio::test]
async fn stop_speaking_without_audio_or_turn_skips() {
    let stt = ScriptedStt::transcripts(&["never used"]);
    let h = Harness::start(
        CallConfig::new(Arc::new(stt.clone())).agent(agent(&ScriptedModel::default())),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await; // no first message
    c.text("StopSpeaking").await;
    c.expect_text("SkipAnswer").await;
    c.text("StartSpeaking").await;
    c.text("StopSpeaking").await;
    c.expect_text("SkipAnswer").await;
    assert_eq!(c.next_within(QUIET).await, None);
}

#[tokio::test]
async fn empty_transcript_skips_and_blank_too() {
    let stt = ScriptedStt::new([
        SttScript::AfterStop(vec![String::new()]),
        SttScript::AfterStop(vec!["   ".into()]),
    ]);
    let model = ScriptedModel::default();
    let h = Harness::start(CallConfig::new(Arc::new(stt)).agent(agent(&model))).await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 2).await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 2).await;
    c.expect_text("SkipAnswer").await;
    assert_eq!(c.next_within(QUIET).await, None);
    assert!(model.requests().is_empty());
}

#[tokio::test]
async fn transcript_before_stop_speaking_is_answered_at_stop() {
    let stt = ScriptedStt::new([SttScript::OnFirstAudio(vec!["Early words".into()])]);
    let model = ScriptedModel::default();
    let h = Harness::start(CallConfig::new(Arc::new(stt)).agent(agent(&model))).await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    c.text("StartSpeaking").await;
    c.audio(2).await;
    // The transcript arrives while the user still speaks: recorded, not answered.
    c.expect_text(&user("Early words")).await;
    assert_eq!(c.next_within(QUIET).await, None);
    assert!(model.requests().is_empty());
    c.text("StopSpeaking").await;
    // Text-only call: the answer, then SkipAnswer.
    c.expect_text(&assistant("You said: Early words")).await;
    c.expect_text("SkipAnswer").await;
}

#[tokio::test]
async fn several_transcripts_one_final_answer() {
    let stt = ScriptedStt::new([SttScript::AfterStop(vec![
        "first part".into(),
        "second part".into(),
    ])]);
    let model = ScriptedModel::default().with_delta_delay(Duration::from_millis(40));
    let tts = ScriptedTts::new();
    let h = Harness::start(
        CallConfig::new(Arc::new(stt))
            .agent(agent(&model))
            .tts(Arc::new(tts.clone())),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 2).await;
    c.expect_text(&user("first part")).await;
    c.expect_text(&user("second part")).await;
    let before = until_text(&mut c, &assistant("You said: second part")).await;
    let after = audio_until_quiet(&mut c).await;
    assert_eq!(before + after, "You said: second part".len() * 4);
    // Only one answer ran to its end, and it saw both parts.
    assert_eq!(model.completed(), 1);
    let last = model.requests().pop().unwrap();
    let users: Vec<_> = last
        .messages
        .iter()
        .filter(|m| matches!(m, micdrop_core::agent::ChatMessage::User(_)))
        .collect();
    assert_eq!(users.len(), 2);
}

#[tokio::test]
async fn start_speaking_interrupts_the_answer() {
    let stt = ScriptedStt::transcripts(&["Tell me a long story"]);
    let model = ScriptedModel::new([ModelStep::words(
        "Once upon a time there was a very long story that never seemed to end at all",
    )])
    .with_delta_delay(Duration::from_millis(30));
    let tts = ScriptedTts::new();
    let h = Harness::start(
        CallConfig::new(Arc::new(stt))
            .agent(agent(&model))
            .tts(Arc::new(tts.clone())),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 2).await;
    c.expect_text(&user("Tell me a long story")).await;
    // Wait for the first audio, then interrupt.
    loop {
        if let Frame::Binary(_) = c.next().await {
            break;
        }
    }
    c.text("StartSpeaking").await;
    // Frames already in flight may still arrive, then nothing: no assistant message ever.
    let rest = c.drain(QUIET).await;
    assert!(
        rest.iter().all(|f| matches!(f, Frame::Binary(_))),
        "{rest:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.next_within(QUIET).await,
        None,
        "audio after the interruption settled"
    );
    assert_eq!(model.cancelled(), 1);
    assert!(tts.cancels() >= 1);
    // Rule 12: no assistant item for the cancelled answer.
    c.close().await;
    let end = h.wait_end().await;
    assert_eq!(end.conversation.last().unwrap().role(), Role::User);
}

#[tokio::test]
async fn mute_cancels_and_drops_the_turn() {
    let stt = ScriptedStt::transcripts(&["Speak slowly"]);
    let model = ScriptedModel::new([ModelStep::words(
        "one two three four five six seven eight nine ten",
    )])
    .with_delta_delay(Duration::from_millis(40));
    let tts = ScriptedTts::new();
    let h = Harness::start(
        CallConfig::new(Arc::new(stt.clone()))
            .agent(agent(&model))
            .tts(Arc::new(tts.clone())),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("Speak slowly")).await;
    c.text("Mute").await;
    let _ = c.drain(QUIET).await;
    assert_eq!(c.next_within(QUIET).await, None);
    assert_eq!(model.cancelled(), 1);
    // A user stream open at Mute time is discarded.
    c.text("StartSpeaking").await;
    c.audio(1).await;
    c.text("Mute").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stt.commands().last(), Some(&SttCommand::DiscardTurn));
    // Audio after Mute is dropped (no open stream).
    let before = stt.commands().len();
    c.audio(2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stt.commands().len(), before);
    assert_eq!(c.next_within(QUIET).await, None);
}

#[tokio::test]
async fn empty_agent_answer_skips_without_tts() {
    let model = ScriptedModel::new([ModelStep::Text(vec![])]);
    let tts = ScriptedTts::new();
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["Hi"])))
            .agent(agent(&model))
            .tts(Arc::new(tts.clone())),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("Hi")).await;
    c.expect_text("SkipAnswer").await;
    assert_eq!(c.next_within(QUIET).await, None);
    assert!(
        !tts.commands()
            .iter()
            .any(|c| matches!(c, TtsCommand::Speak(_)))
    );
}

#[tokio::test]
async fn agent_failure_skips_and_the_call_goes_on() {
    let model = ScriptedModel::new([ModelStep::Fail]);
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["One", "Two"]))).agent(agent(&model)),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("One")).await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("Two")).await;
    c.expect_text(&assistant("You said: Two")).await;
    c.expect_text("SkipAnswer").await;
}

#[tokio::test]
async fn dictation_without_agent() {
    let h = Harness::start(CallConfig::new(Arc::new(ScriptedStt::transcripts(&[
        "Note one", "Note two",
    ]))))
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    for t in ["Note one", "Note two"] {
        turn(&mut c, 1).await;
        c.expect_text(&user(t)).await;
        c.expect_text("SkipAnswer").await;
    }
    c.close().await;
    let end = h.wait_end().await;
    // No agent: the server owns the conversation, without a system message.
    assert_eq!(
        end.conversation,
        vec![
            ConversationItem::user("Note one"),
            ConversationItem::user("Note two")
        ]
    );
}

#[tokio::test]
async fn text_only_first_message_and_answer() {
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["Yo"])))
            .agent(agent(&ScriptedModel::default()))
            .first_message("Hi"),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text(&assistant("Hi")).await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("Yo")).await;
    c.expect_text(&assistant("You said: Yo")).await;
    c.expect_text("SkipAnswer").await;
}

#[tokio::test]
async fn partial_messages_are_cumulative_json_strings() {
    let model = ScriptedModel::new([ModelStep::Text(vec![
        "Hel".into(),
        "lo \"".into(),
        "you".into(),
    ])]);
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["x"])))
            .agent(agent(&model))
            .tts(Arc::new(ScriptedTts::new()))
            .partial_messages(true),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("x")).await;
    let mut partials = Vec::new();
    loop {
        match c.next().await {
            Frame::Binary(_) => {}
            Frame::Text(t) if t.starts_with("PartialAssistantMessage ") => partials.push(t),
            Frame::Text(t) => {
                assert_eq!(t, assistant("Hello \"you"));
                break;
            }
            f => panic!("{f:?}"),
        }
    }
    assert_eq!(
        partials,
        [
            r#"PartialAssistantMessage "Hel""#,
            r#"PartialAssistantMessage "Hello \"""#,
            r#"PartialAssistantMessage "Hello \"you""#
        ]
    );
}

#[tokio::test]
async fn tool_with_emit_output_and_handler_error() {
    let model = ScriptedModel::new([
        ModelStep::Tools(vec![
            ("get_weather".into(), r#"{"city":"Paris"}"#.into()),
            ("broken".into(), "{}".into()),
        ]),
        ModelStep::words("Sunny."),
    ]);
    let agent = agent(&model)
        .tool(
            Tool::new("get_weather", "Weather of a city")
                .parameters(json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}))
                .handler(|args| async move { Ok(json!({"city": args["city"], "sky": "sunny"})) })
                .emit_output(true),
        )
        .tool(Tool::new("broken", "Always fails").handler(|_| async { Err("boom".to_owned()) }));
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["Weather?"]))).agent(agent),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("Weather?")).await;
    c.expect_text(&msg(json!({"role":"tool_call","toolCallId":"call00000","toolName":"get_weather","parameters":"{\"city\":\"Paris\"}"}))).await;
    c.expect_text(&msg(json!({"role":"tool_result","toolCallId":"call00000","toolName":"get_weather","output":"{\"city\":\"Paris\",\"sky\":\"sunny\"}"}))).await;
    c.expect_text(r#"ToolCall {"name":"get_weather","parameters":{"city":"Paris"},"output":{"city":"Paris","sky":"sunny"}}"#).await;
    c.expect_text(&msg(
        json!({"role":"tool_call","toolCallId":"call00001","toolName":"broken","parameters":"{}"}),
    ))
    .await;
    c.expect_text(&msg(json!({"role":"tool_result","toolCallId":"call00001","toolName":"broken","output":"{\"error\":\"boom\"}"}))).await;
    c.expect_text(&assistant("Sunny.")).await;
    c.expect_text("SkipAnswer").await;
    // The second request carried the tool results back to the model.
    let reqs = model.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].tools.len(), 2);
}

#[tokio::test]
async fn end_call_tool_sends_end_call_then_goodbye() {
    let model = ScriptedModel::new([
        ModelStep::tool("end_call", "{}"),
        ModelStep::words("Au revoir !"),
    ]);
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["Bye"])))
            .agent(agent(&model).auto_end_call(None)),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("Bye")).await;
    c.expect_text(&msg(json!({"role":"tool_call","toolCallId":"call00000","toolName":"end_call","parameters":"{}"}))).await;
    c.expect_text(&msg(json!({"role":"tool_result","toolCallId":"call00000","toolName":"end_call","output":"null"}))).await;
    c.expect_text("EndCall").await;
    c.expect_text(&assistant("Au revoir !")).await;
    c.expect_text("SkipAnswer").await;
    // The client decides to hang up; the server does not close by itself.
    assert_eq!(c.next_within(QUIET).await, None);
}

#[tokio::test]
async fn semantic_turn_skips_and_ignore_noise_cancels_last_user_message() {
    let model = ScriptedModel::new([
        ModelStep::tool("semantic_turn", "{}"),
        ModelStep::tool("ignore_user_noise", "{}"),
    ]);
    let tts = ScriptedTts::new();
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["I want to", "hmm"])))
            .agent(
                agent(&model)
                    .auto_semantic_turn(Some("custom"))
                    .auto_ignore_user_noise(None),
            )
            .tts(Arc::new(tts.clone())),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("I want to")).await;
    c.expect_text(&msg(json!({"role":"tool_call","toolCallId":"call00000","toolName":"semantic_turn","parameters":"{}"}))).await;
    c.expect_text(&msg(json!({"role":"tool_result","toolCallId":"call00000","toolName":"semantic_turn","output":"null"}))).await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("hmm")).await;
    c.expect_text(&msg(json!({"role":"tool_call","toolCallId":"call00001","toolName":"ignore_user_noise","parameters":"{}"}))).await;
    c.expect_text(&msg(json!({"role":"tool_result","toolCallId":"call00001","toolName":"ignore_user_noise","output":"null"}))).await;
    c.expect_text("CancelLastUserMessage").await;
    c.expect_text("SkipAnswer").await;
    assert!(
        !tts.commands()
            .iter()
            .any(|c| matches!(c, TtsCommand::Speak(_)))
    );
    let desc = model.requests()[0]
        .tools
        .iter()
        .find(|t| t.name == "semantic_turn")
        .unwrap()
        .description
        .clone();
    assert_eq!(desc, "custom");
    c.close().await;
    let end = h.wait_end().await;
    assert!(!end.conversation.iter().any(|i| i.content() == Some("hmm")));
}

#[tokio::test]
async fn extract_json_is_withheld_from_speech_and_saved() {
    let model = ScriptedModel::new([ModelStep::Text(vec![
        "Noted. ".into(),
        "{\"age\"".into(),
        ": 42}".into(),
    ])]);
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let tts = ScriptedTts::new();
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["I am 42"])))
            .agent(
                agent(&model)
                    .extract(Extract::json().with_callback(move |v| *s.lock().unwrap() = Some(v))),
            )
            .tts(Arc::new(tts.clone())),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("I am 42")).await;
    let before = until_text(
        &mut c,
        &msg(json!({"role":"assistant","content":"Noted.","metadata":{"extracted":{"age":42}}})),
    )
    .await;
    assert_eq!(
        before + audio_until_quiet(&mut c).await,
        "Noted. ".len() * 4
    );
    let spoken: String = tts
        .commands()
        .iter()
        .filter_map(|c| match c {
            TtsCommand::Text(_, t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(spoken, "Noted. ");
    assert_eq!(*seen.lock().unwrap(), Some(json!({"age": 42})));
}

#[tokio::test]
async fn on_before_answer_skip_and_fixed_answer() {
    let model = ScriptedModel::default();
    let agent = agent(&model).on_before_answer(|conv| async move {
        match conv.last().and_then(|i| i.content()) {
            Some("skip me") => BeforeAnswer::Skip,
            Some("canned") => BeforeAnswer::Answer("Canned answer.".into()),
            _ => BeforeAnswer::Continue,
        }
    });
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&[
            "skip me", "canned", "normal",
        ])))
        .agent(agent),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("skip me")).await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("canned")).await;
    c.expect_text(&assistant("Canned answer.")).await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("normal")).await;
    c.expect_text(&assistant("You said: normal")).await;
    c.expect_text("SkipAnswer").await;
    assert_eq!(model.requests().len(), 1);
}

#[tokio::test]
async fn at_most_five_model_steps() {
    let model = ScriptedModel::new((0..10).map(|_| ModelStep::tool("noop", "{}")));
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["loop"])))
            .agent(agent(&model).tool(Tool::new("noop", "n"))),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("loop")).await;
    for _ in 0..10 {
        let (f, _) = c.next_text().await;
        if f == Frame::Text("SkipAnswer".into()) {
            break;
        }
    }
    assert_eq!(model.requests().len(), 5);
}

#[tokio::test]
async fn tts_failure_without_audio_releases_the_client() {
    let model = ScriptedModel::new([ModelStep::words("FAIL now")]);
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["x"])))
            .agent(agent(&model))
            .tts(Arc::new(ScriptedTts::new())),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("x")).await;
    let mut got_skip = false;
    for f in c.drain(QUIET).await {
        if f == Frame::Text("SkipAnswer".into()) {
            got_skip = true;
        }
    }
    assert!(got_skip);
}

#[tokio::test]
async fn stt_failure_after_stop_releases_the_client() {
    let stt = ScriptedStt::new([SttScript::Fail]);
    let h = Harness::start(CallConfig::new(Arc::new(stt)).agent(agent(&ScriptedModel::default())))
        .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text("SkipAnswer").await;
}

#[tokio::test]
async fn params_missing_invalid_unauthorized_and_valid() {
    let config = CallConfig::new(Arc::new(ScriptedStt::transcripts(&[])));
    let h = Harness::with_options(ServerOptions::with_template(config), |o| {
        o.bearer_tokens = vec!["s3cret".into()];
    })
    .await;
    // Invalid JSON.
    let mut c = h.client().await;
    c.text("{not json").await;
    assert_eq!(c.next().await, Frame::Close(4400, "Invalid params".into()));
    // Wrong token.
    let mut c = h.client().await;
    c.text(r#"{"authorization":"Bearer nope"}"#).await;
    assert_eq!(c.next().await, Frame::Close(4401, "Unauthorized".into()));
    // No token at all.
    let mut c = h.client().await;
    c.text(r#"{"lang":"fr"}"#).await;
    assert_eq!(c.next().await, Frame::Close(4401, "Unauthorized".into()));
    // Right token: the call starts.
    let mut c = h.client().await;
    c.text(r#"{"authorization":"Bearer s3cret"}"#).await;
    c.expect_text("SkipAnswer").await;
    // Nothing within 3 s.
    let mut c = h.client().await;
    let f = c.next_within(Duration::from_secs(5)).await;
    assert_eq!(f, Some(Frame::Close(4400, "Missing params".into())));
}

#[tokio::test]
async fn a_thousand_malformed_frames_leave_the_call_working() {
    let stt = ScriptedStt::transcripts(&["still here"]);
    let h = Harness::start(
        CallConfig::new(Arc::new(stt.clone())).agent(agent(&ScriptedModel::default())),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..1000 {
        let len = (rnd() % 40) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        match i % 4 {
            0 => c.binary(bytes).await,
            1 => c.text(&String::from_utf8_lossy(&bytes)).await,
            2 => {
                c.text(
                    [
                        "startspeaking",
                        "Stop",
                        "MUTE",
                        "StartSpeaking ",
                        "{\"a\":1}",
                        "",
                    ][i % 6],
                )
                .await
            }
            _ => c.binary(vec![0u8; (rnd() % 14) as usize]).await,
        }
    }
    // Nothing was opened by the noise: no frame came back.
    assert_eq!(c.next_within(QUIET).await, None);
    turn(&mut c, 2).await;
    c.expect_text(&user("still here")).await;
    c.expect_text(&assistant("You said: still here")).await;
    c.expect_text("SkipAnswer").await;
    let client = reqwest_free_healthz(h.server.local_addr()).await;
    assert!(client.starts_with("HTTP/1.1 200"), "{client}");
}

/// A tiny raw HTTP GET /healthz (no HTTP client dependency needed).
async fn reqwest_free_healthz(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let h = Harness::with_options(
        ServerOptions::with_template(CallConfig::new(Arc::new(ScriptedStt::transcripts(&[])))),
        |o| o.max_frame_bytes = 4096,
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    c.binary(vec![0u8; 10_000]).await;
    match c.next().await {
        Frame::Close(code, _) => assert_eq!(code, 1009),
        f => panic!("{f:?}"),
    }
    let end = h.wait_end().await;
    assert!(matches!(
        end.reason,
        micdrop_core::call::EndReason::SocketError(_)
    ));
}

#[tokio::test]
async fn shutdown_closes_calls_with_1001_and_each_gets_its_end() {
    let h = Harness::start(CallConfig::new(Arc::new(ScriptedStt::transcripts(&[])))).await;
    let mut a = h.client().await;
    let mut b = h.client().await;
    a.expect_text("SkipAnswer").await;
    b.expect_text("SkipAnswer").await;
    let ends = h.ends.clone();
    h.server.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        a.next().await,
        Frame::Close(1001, "Server shutting down".into())
    );
    assert_eq!(
        b.next().await,
        Frame::Close(1001, "Server shutting down".into())
    );
    assert_eq!(ends.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn over_max_calls_is_refused_before_upgrade() {
    let h = Harness::with_options(
        ServerOptions::with_template(CallConfig::new(Arc::new(ScriptedStt::transcripts(&[])))),
        |o| o.max_calls = 1,
    )
    .await;
    let mut a = h.client().await;
    a.expect_text("SkipAnswer").await;
    let err = tokio_tungstenite::connect_async(h.server.ws_url("/call"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    a.close().await;
    h.wait_end().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut b = h.client().await;
    b.expect_text("SkipAnswer").await;
}

#[tokio::test]
async fn idle_timeout_closes_with_1000() {
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&[])))
            .idle_timeout(Duration::from_millis(300)),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    assert_eq!(c.next().await, Frame::Close(1000, "Idle timeout".into()));
    assert_eq!(
        h.wait_end().await.reason,
        micdrop_core::call::EndReason::Idle
    );
}

#[tokio::test]
async fn providers_sessions_are_released_at_the_end() {
    let stt = ScriptedStt::transcripts(&["Salut"]);
    let tts = ScriptedTts::new();
    let h = Harness::start(
        CallConfig::new(Arc::new(stt.clone()))
            .agent(agent(&ScriptedModel::default()))
            .tts(Arc::new(tts.clone())),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    // An idle call holds no provider session (issue #10): they start with the first turn.
    assert_eq!(stt.sessions_open(), 0);
    assert_eq!(tts.sessions_open(), 0);
    c.text("StartSpeaking").await;
    c.audio(1).await;
    c.text("StopSpeaking").await;
    // Both run once a turn is answered (the TTS starts while the answer is prepared).
    c.expect_text(&user("Salut")).await;
    until_text(&mut c, &assistant("You said: Salut")).await;
    assert_eq!(stt.sessions_open(), 1);
    assert_eq!(tts.sessions_open(), 1);
    c.close().await;
    let end = h.wait_end().await;
    assert_eq!(end.reason, micdrop_core::call::EndReason::ClientClosed);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(stt.sessions_open(), 0);
    assert_eq!(tts.sessions_open(), 0);
}

#[tokio::test]
async fn incomplete_turn_is_held_then_answered_after_max_wait() {
    let detector = micdrop_testkit::ScriptedTurnDetector::new([false]);
    let model = ScriptedModel::default();
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["I would like"])))
            .agent(agent(&model))
            .turn_detector(Arc::new(detector.clone()))
            .turn_max_wait(Duration::from_millis(600)),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 2).await;
    c.expect_text(&user("I would like")).await;
    // Judged incomplete: SkipAnswer, and the answer is held.
    c.expect_text("SkipAnswer").await;
    assert_eq!(c.next_within(QUIET).await, None);
    assert!(model.requests().is_empty());
    // After turn_max_wait it is answered anyway.
    c.expect_text(&assistant("You said: I would like")).await;
    c.expect_text("SkipAnswer").await;
    assert_eq!(detector.samples(), vec![3200]);
}

#[tokio::test]
async fn held_turn_continued_by_the_user_is_answered_once_complete() {
    let detector = micdrop_testkit::ScriptedTurnDetector::new([false, true]);
    let model = ScriptedModel::default();
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&[
            "I would like",
            "a coffee",
        ])))
        .agent(agent(&model))
        .turn_detector(Arc::new(detector))
        .turn_max_wait(Duration::from_secs(30)),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("I would like")).await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 1).await;
    c.expect_text(&user("a coffee")).await;
    c.expect_text(&assistant("You said: a coffee")).await;
    c.expect_text("SkipAnswer").await;
    let req = model.requests().pop().unwrap();
    let users = req
        .messages
        .iter()
        .filter(|m| matches!(m, micdrop_core::agent::ChatMessage::User(_)))
        .count();
    assert_eq!(users, 2);
}

#[tokio::test]
async fn observer_sees_messages_and_audio_both_ways() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let h = Harness::start(
        CallConfig::new(Arc::new(ScriptedStt::transcripts(&["Salut"])))
            .agent(agent(&ScriptedModel::default()))
            .tts(Arc::new(ScriptedTts::new()))
            .observer(tx),
    )
    .await;
    let mut c = h.client().await;
    c.expect_text("SkipAnswer").await;
    turn(&mut c, 2).await;
    c.expect_text(&user("Salut")).await;
    until_text(&mut c, &assistant("You said: Salut")).await;
    audio_until_quiet(&mut c).await;
    let mut user_audio = 0;
    let mut assistant_audio = 0;
    let mut messages = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        match ev {
            micdrop_core::call::CallEvent::UserAudio(b) => user_audio += b.len(),
            micdrop_core::call::CallEvent::AssistantAudio(b) => assistant_audio += b.len(),
            micdrop_core::call::CallEvent::Message(m) => messages.push(m),
            _ => {}
        }
    }
    assert_eq!(user_audio, 6400);
    assert_eq!(assistant_audio, "You said: Salut".len() * 4);
    assert_eq!(
        messages,
        vec![
            ConversationItem::user("Salut"),
            ConversationItem::assistant("You said: Salut")
        ]
    );
}
