//! The Mistral model against the Mistral simulator: a full answer and every fault.

mod common;

use std::time::Duration;

use common::{WAIT, config, sim};
use futures::StreamExt;
use micdrop_core::ProviderErrorKind;
use micdrop_core::agent::{ChatChunk, ChatMessage, ChatRequest, ChatToolCall, ToolSpec};
use micdrop_sim::{Fault, FaultKind, ScriptedReply, ScriptedToolCall, Service};

fn request(user: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::System("Tu es un assistant vocal.".into()),
            ChatMessage::User(user.into()),
        ],
        tools: vec![],
    }
}

async fn answer(
    model: &dyn micdrop_core::agent::ChatModel,
    req: ChatRequest,
) -> (String, Vec<ChatToolCall>, Vec<micdrop_core::AgentError>) {
    let mut s = model.stream(req);
    let (mut text, mut calls, mut errs) = (String::new(), vec![], vec![]);
    while let Some(item) = tokio::time::timeout(WAIT, s.next()).await.expect("no hang") {
        match item {
            Ok(ChatChunk::Text(t)) => text.push_str(&t),
            Ok(ChatChunk::ToolCall(c)) => calls.push(c),
            Err(e) => errs.push(e),
        }
    }
    (text, calls, errs)
}

#[tokio::test]
async fn a_full_answer() {
    let sim = sim(&[], |_| {}).await;
    let p = config(&sim).build().unwrap();
    let (text, calls, errs) = answer(&*p.model, request("bonjour")).await;
    assert!(errs.is_empty(), "{errs:?}");
    assert!(calls.is_empty());
    assert!(text.contains("bonjour"), "{text}");
    assert_eq!(sim.counters().mistral.requests, 1);
    assert_eq!(sim.counters().mistral.rejected, 0);
}

#[tokio::test]
async fn rate_limited_then_success() {
    let sim = sim(&[], |_| {}).await;
    sim.push_fault(Service::Mistral, Fault::status(429));
    let p = config(&sim).build().unwrap();
    let (text, _, errs) = answer(&*p.model, request("bonjour")).await;
    assert!(errs.is_empty(), "{errs:?}");
    assert!(text.contains("bonjour"));
    assert_eq!(sim.counters().mistral.requests, 2);
}

#[tokio::test]
async fn server_errors_until_failure_yield_one_error() {
    let sim = sim(&[], |_| {}).await;
    sim.push_fault(Service::Mistral, Fault::status(503).times(100));
    let mut c = config(&sim);
    c.agent.max_retries = 2;
    let p = c.build().unwrap();
    let (text, _, errs) = answer(&*p.model, request("bonjour")).await;
    assert_eq!(text, "");
    assert_eq!(errs.len(), 1);
    assert!(
        matches!(
            errs[0].kind,
            ProviderErrorKind::Exhausted { attempts: 3, .. }
        ),
        "{:?}",
        errs[0]
    );
    assert_eq!(sim.counters().mistral.requests, 3);
}

#[tokio::test]
async fn a_hanging_server_times_out() {
    let sim = sim(&[], |_| {}).await;
    sim.push_fault(Service::Mistral, Fault::new(FaultKind::Hang).times(100));
    let mut c = config(&sim);
    c.agent.max_retries = 1;
    c.agent.first_token_timeout_ms = 200;
    let p = c.build().unwrap();
    let started = std::time::Instant::now();
    let (_, _, errs) = answer(&*p.model, request("bonjour")).await;
    assert_eq!(errs.len(), 1);
    assert!(errs[0].to_string().contains("timeout"), "{}", errs[0]);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(sim.counters().mistral.requests, 2);
}

#[tokio::test]
async fn a_malformed_event_before_any_text_is_retried() {
    let sim = sim(&[], |_| {}).await;
    // Event 2 (the first content chunk) is truncated JSON.
    sim.push_fault(Service::Mistral, Fault::malformed(1));
    let p = config(&sim).build().unwrap();
    let (text, _, errs) = answer(&*p.model, request("bonjour")).await;
    assert!(errs.is_empty(), "{errs:?}");
    assert!(text.contains("bonjour"), "{text}");
    assert_eq!(sim.counters().mistral.requests, 2);
}

#[tokio::test]
async fn a_cut_mid_answer_is_never_silent() {
    let sim = sim(&[], |_| {}).await;
    sim.push_fault(Service::Mistral, Fault::new(FaultKind::DropMidUtterance));
    let p = config(&sim).build().unwrap();
    let (text, _, errs) = answer(&*p.model, request("bonjour tout le monde")).await;
    let full = "Vous avez dit : « bonjour tout le monde ».";
    // Whether the first content chunk got through before the cut depends on the server's
    // flushing: either nothing was spoken and the request was retried transparently, or the
    // spoken prefix is followed by exactly one error. Never a silently truncated answer.
    if errs.is_empty() {
        assert_eq!(text, full);
        assert_eq!(sim.counters().mistral.requests, 2);
    } else {
        assert_eq!(errs.len(), 1);
        assert!(full.starts_with(&text) && text.len() < full.len(), "{text}");
        assert_eq!(sim.counters().mistral.requests, 1);
    }
}

#[tokio::test]
async fn cancelling_mid_answer_closes_the_request() {
    let sim = sim(&[], |s| {
        s.zero_delay = false;
        s.mistral.ttft_ms = 0;
        s.mistral.inter_token_ms = 200;
        s.mistral.replies = vec![ScriptedReply {
            text: Some("Un deux trois quatre cinq six sept huit neuf dix onze douze.".into()),
            ..Default::default()
        }];
    })
    .await;
    let p = config(&sim).build().unwrap();
    let mut s = p.model.stream(request("compte"));
    let first = tokio::time::timeout(WAIT, s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, ChatChunk::Text(_)));
    assert_eq!(sim.counters().mistral.open_sessions, 1);
    drop(s);
    let c = sim.wait_idle(WAIT).await;
    assert_eq!(
        c.mistral.open_sessions, 0,
        "the simulator saw the stream closed"
    );
}

#[tokio::test]
async fn tool_calls_and_mistral_message_rules_pass_validation() {
    let sim = sim(&[], |s| {
        s.mistral.replies = vec![ScriptedReply {
            tool_calls: vec![ScriptedToolCall {
                name: "get_weather".into(),
                arguments: serde_json::json!({"city": "Paris"}),
            }],
            ..Default::default()
        }];
    })
    .await;
    let p = config(&sim).build().unwrap();
    let tools = vec![ToolSpec {
        name: "get_weather".into(),
        description: "Weather of a city".into(),
        parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    }];
    let mut req = request("Quel temps fait-il ?");
    req.tools = tools.clone();
    let (_, calls, errs) = answer(&*p.model, req).await;
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(calls[0].id.len(), 9);

    // A conversation the simulator would refuse as is: a skip-answer tool with a non-Mistral
    // id, its result, then a user message; plus a lone trailing assistant later on.
    let messages = vec![
        ChatMessage::System("s".into()),
        ChatMessage::User("Je voudrais".into()),
        ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![ChatToolCall {
                id: "call_00001".into(),
                name: "semantic_turn".into(),
                arguments: String::new(),
            }],
        },
        ChatMessage::Tool {
            tool_call_id: "call_00001".into(),
            name: "semantic_turn".into(),
            content: "null".into(),
        },
        ChatMessage::User("réserver une table".into()),
    ];
    let (text, _, errs) = answer(
        &*p.model,
        ChatRequest {
            messages,
            tools: tools.clone(),
        },
    )
    .await;
    assert!(errs.is_empty(), "{errs:?}");
    assert!(!text.is_empty());
    // Only the system prompt (a generated greeting).
    let (_, _, errs) = answer(
        &*p.model,
        ChatRequest {
            messages: vec![ChatMessage::System("Salue l'utilisateur.".into())],
            tools: vec![],
        },
    )
    .await;
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(sim.counters().mistral.rejected, 0);
}

#[tokio::test]
async fn falls_back_to_a_second_model() {
    let sim = sim(&[], |_| {}).await;
    sim.push_fault(Service::Mistral, Fault::status(500));
    let mut c = config(&sim);
    c.agent.max_retries = 0;
    let mut fallback = c.agent.clone();
    fallback.model = Some("mistral-small-latest".into());
    c.agent.fallbacks = vec![fallback];
    let p = c.build().unwrap();
    let (text, _, errs) = answer(&*p.model, request("bonjour")).await;
    assert!(errs.is_empty(), "{errs:?}");
    assert!(text.contains("bonjour"));
    assert_eq!(sim.counters().mistral.requests, 2);
}

/// Runs one agent answer over `conversation`, appending its settled items; returns the spoken
/// text and the failures.
async fn agent_turn(
    agent: &micdrop_core::agent::Agent,
    conversation: &mut micdrop_core::Conversation,
) -> (String, Vec<String>) {
    use micdrop_core::agent::AgentEvent;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let run = agent.answer(conversation.to_vec(), tx);
    let collect = async {
        let (mut text, mut failures) = (String::new(), Vec::new());
        while let Some(ev) = rx.recv().await {
            match ev {
                AgentEvent::Text(t) => text.push_str(&t),
                AgentEvent::Message(item) => {
                    conversation.push(item);
                }
                AgentEvent::Failed(e) => failures.push(e.to_string()),
                _ => {}
            }
        }
        (text, failures)
    };
    let ((), out) = tokio::time::timeout(WAIT, async { tokio::join!(run, collect) })
        .await
        .expect("the answer ends");
    out
}

fn weather_agent(p: &micdrop_providers::Providers, delay: Duration) -> micdrop_core::agent::Agent {
    use micdrop_core::agent::{Agent, Tool};
    Agent::new(p.model.clone(), "Tu es un assistant vocal.").tool(
        Tool::new("get_weather", "Weather of a city")
            .parameters(
                serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            )
            .handler(move |_| async move {
                tokio::time::sleep(delay).await;
                Ok(serde_json::json!({"temp": 12}))
            }),
    )
}

fn preamble_then_tool() -> Vec<ScriptedReply> {
    vec![ScriptedReply {
        when: Some("météo".into()),
        text: Some("Un instant, je regarde.".into()),
        tool_calls: vec![ScriptedToolCall {
            name: "get_weather".into(),
            arguments: serde_json::json!({"city": "Paris"}),
        }],
        ..Default::default()
    }]
}

#[tokio::test]
async fn a_preamble_then_a_tool_call_is_answered_on_the_next_turn() {
    // The simulator refuses an assistant message with both text and tool calls, as
    // api.mistral.ai does: merged, the tool step and every later turn would fail with a 400.
    let sim = sim(&[], |s| s.mistral.replies = preamble_then_tool()).await;
    let p = config(&sim).build().unwrap();
    let agent = weather_agent(&p, Duration::ZERO);
    let mut conv = micdrop_core::Conversation::with_system("Tu es un assistant vocal.");
    conv.push(micdrop_core::ConversationItem::user(
        "Quelle météo à Paris ?",
    ));
    let (text, failures) = agent_turn(&agent, &mut conv).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(text.starts_with("Un instant, je regarde."), "{text}");
    assert!(
        text.len() > "Un instant, je regarde.".len(),
        "the tool step answered: {text}"
    );
    conv.push(micdrop_core::ConversationItem::user("Merci !"));
    let (text, failures) = agent_turn(&agent, &mut conv).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(!text.is_empty());
    assert_eq!(sim.counters().mistral.rejected, 0);
}

#[tokio::test]
async fn a_barge_in_during_a_slow_tool_leaves_the_call_healthy() {
    let sim = sim(&[], |s| s.mistral.replies = preamble_then_tool()).await;
    let p = config(&sim).build().unwrap();
    let agent = weather_agent(&p, Duration::from_secs(30));
    for cancel_hook in [false, true] {
        let mut conv = micdrop_core::Conversation::with_system("Tu es un assistant vocal.");
        conv.push(micdrop_core::ConversationItem::user(
            "Quelle météo à Paris ?",
        ));
        // The answer is cancelled (barge-in) while the tool runs: its call has no result.
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let run = agent.answer(conv.to_vec(), tx);
        let watch = async {
            use micdrop_core::agent::AgentEvent;
            while let Some(ev) = rx.recv().await {
                if let AgentEvent::Message(item) = ev {
                    let is_call = item.role() == micdrop_core::Role::ToolCall;
                    conv.push(item);
                    if is_call {
                        return;
                    }
                }
            }
            panic!("no tool call");
        };
        tokio::select! {
            () = run => panic!("the slow tool returned"),
            () = watch => {}
        }
        if cancel_hook {
            // What the call engine does on cancel.
            assert_eq!(conv.cancel_dangling_tool_calls().len(), 1);
        }
        conv.push(micdrop_core::ConversationItem::user("Non, laisse tomber."));
        let (text, failures) = agent_turn(&agent, &mut conv).await;
        assert!(
            failures.is_empty(),
            "cancel hook {cancel_hook}: {failures:?}"
        );
        assert!(!text.is_empty());
    }
    assert_eq!(sim.counters().mistral.rejected, 0);
}
