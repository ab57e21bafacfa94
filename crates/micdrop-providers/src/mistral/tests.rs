use std::sync::atomic::Ordering;

use futures::StreamExt;
use micdrop_core::agent::ToolSpec;

use super::*;
use crate::testutil::{Part, RawServer, json_response, sse_events, sse_head};

fn parse_all(lines: &[&str]) -> (String, Vec<ChatToolCall>, StreamParser) {
    let mut p = StreamParser::default();
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut push = |chunks: Vec<ChatChunk>, text: &mut String| {
        for c in chunks {
            match c {
                ChatChunk::Text(t) => text.push_str(&t),
                ChatChunk::ToolCall(c) => calls.push(c),
            }
        }
    };
    for l in lines {
        match p.feed(l).unwrap() {
            Parsed::Chunks(c) => push(c, &mut text),
            Parsed::Done(c) => push(c, &mut text),
        }
    }
    (text, calls, p)
}

/// Extracts the `data:` payloads of a sample's SSE text.
fn data_lines(sse: &str) -> Vec<&str> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

// M-TXT-2 (R): second turn after a tool result, empty final delta with usage.
const M_TXT_2: &str = r#"data: {"id":"394ba88c55a44d4593f7c5b57c2fa74f","object":"chat.completion.chunk","created":1748464330,"model":"mistral-large-latest","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}

data: {"id":"394ba88c55a44d4593f7c5b57c2fa74f","object":"chat.completion.chunk","created":1748464330,"model":"mistral-large-latest","choices":[{"index":0,"delta":{"content":"The"},"finish_reason":null}]}

data: {"id":"394ba88c55a44d4593f7c5b57c2fa74f","object":"chat.completion.chunk","created":1748464330,"model":"mistral-large-latest","choices":[{"index":0,"delta":{"content":" installed version of LL"},"finish_reason":null}]}

data: {"id":"394ba88c55a44d4593f7c5b57c2fa74f","object":"chat.completion.chunk","created":1748464330,"model":"mistral-large-latest","choices":[{"index":0,"delta":{"content":"M is 0"},"finish_reason":null}]}

data: {"id":"394ba88c55a44d4593f7c5b57c2fa74f","object":"chat.completion.chunk","created":1748464330,"model":"mistral-large-latest","choices":[{"index":0,"delta":{"content":".26."},"finish_reason":null}]}

data: {"id":"394ba88c55a44d4593f7c5b57c2fa74f","object":"chat.completion.chunk","created":1748464330,"model":"mistral-large-latest","choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}],"usage":{"prompt_tokens":105,"total_tokens":119,"completion_tokens":14}}

data: [DONE]"#;

// M-TXT-1 (R), last chunks: content in the same chunk as finish_reason "length" and usage.
const M_TXT_1_TAIL: &[&str] = &[
    r#"{"id":"f798ebd5c41a45d88bb079635121cade","object":"chat.completion.chunk","created":1732548656,"model":"mistral-large-latest","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
    r#"{"id":"f798ebd5c41a45d88bb079635121cade","object":"chat.completion.chunk","created":1732548656,"model":"mistral-large-latest","choices":[{"index":0,"delta":{"content":" recogn"},"finish_reason":null}]}"#,
    r#"{"id":"f798ebd5c41a45d88bb079635121cade","object":"chat.completion.chunk","created":1732548656,"model":"mistral-large-latest","choices":[{"index":0,"delta":{"content":"izable"},"finish_reason":"length"}],"usage":{"prompt_tokens":34,"total_tokens":134,"completion_tokens":100}}"#,
    "[DONE]",
];

// M-TXT-4 (R?): logprobs null on every choice.
const M_TXT_4: &[&str] = &[
    r#"{"id":"5319bd0299614c679a0068a4f2c8ffd0","object":"chat.completion.chunk","created":1769088720,"model":"mistral-small-latest","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null,"logprobs":null}]}"#,
    r#"{"id":"5319bd0299614c679a0068a4f2c8ffd0","object":"chat.completion.chunk","created":1769088720,"model":"mistral-small-latest","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null,"logprobs":null}]}"#,
    r#"{"id":"5319bd0299614c679a0068a4f2c8ffd0","object":"chat.completion.chunk","created":1769088720,"model":"mistral-small-latest","choices":[{"index":0,"delta":{"content":", "},"finish_reason":null,"logprobs":null}]}"#,
    r#"{"id":"5319bd0299614c679a0068a4f2c8ffd0","object":"chat.completion.chunk","created":1769088720,"model":"mistral-small-latest","choices":[{"index":0,"delta":{"content":"world!"},"finish_reason":null,"logprobs":null}]}"#,
    r#"{"id":"5319bd0299614c679a0068a4f2c8ffd0","object":"chat.completion.chunk","created":1769088720,"model":"mistral-small-latest","choices":[{"index":0,"delta":{"content":" This"},"finish_reason":null,"logprobs":null}]}"#,
    r#"{"id":"5319bd0299614c679a0068a4f2c8ffd0","object":"chat.completion.chunk","created":1769088720,"model":"mistral-small-latest","choices":[{"index":0,"delta":{"content":" is a test"},"finish_reason":null,"logprobs":null}]}"#,
    r#"{"id":"5319bd0299614c679a0068a4f2c8ffd0","object":"chat.completion.chunk","created":1769088720,"model":"mistral-small-latest","choices":[{"index":0,"delta":{"content":" response."},"finish_reason":null,"logprobs":null}]}"#,
    r#"{"id":"5319bd0299614c679a0068a4f2c8ffd0","object":"chat.completion.chunk","created":1769088720,"model":"mistral-small-latest","choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":13,"total_tokens":21,"completion_tokens":8}}"#,
];

// M-TXT-5 (R, 2023): spaced JSON, cmpl- ids, first chunk without content, role null later.
const M_TXT_5: &[&str] = &[
    r#"{"id": "cmpl-4243ee7858634455a2153d6430719956", "model": "mistral-tiny", "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]}"#,
    r#"{"id": "cmpl-4243ee7858634455a2153d6430719956", "object": "chat.completion.chunk", "created": 1702612156, "model": "mistral-tiny", "choices": [{"index": 0, "delta": {"role": null, "content": "I am an AI"}, "finish_reason": null}]}"#,
    r#"{"id": "cmpl-4243ee7858634455a2153d6430719956", "object": "chat.completion.chunk", "created": 1702612156, "model": "mistral-tiny", "choices": [{"index": 0, "delta": {"role": null, "content": ""}, "finish_reason": "stop"}]}"#,
    "[DONE]",
];

// M-REASON-1 (R?): content as an array of typed parts.
const M_REASON_1: &[&str] = &[
    r#"{"id":"a4e29c5b82f94d67b23e108a7c9df6e1","object":"chat.completion.chunk","created":1769088912,"model":"magistral-medium-2507","choices":[{"index":0,"delta":{"role":"assistant","content":[{"type":"thinking","thinking":[{"type":"text","text":"The user is asking"}]}]},"finish_reason":null}]}"#,
    r#"{"id":"a4e29c5b82f94d67b23e108a7c9df6e1","object":"chat.completion.chunk","created":1769088912,"model":"magistral-medium-2507","choices":[{"index":0,"delta":{"content":[{"type":"thinking","thinking":[{"type":"text","text":" for 2+2. This is basic arithmetic. 2+2=4."}]}]},"finish_reason":null}]}"#,
    r#"{"id":"a4e29c5b82f94d67b23e108a7c9df6e1","object":"chat.completion.chunk","created":1769088912,"model":"magistral-medium-2507","choices":[{"index":0,"delta":{"content":[{"type":"text","text":"2 + 2 = 4"}]},"finish_reason":null}]}"#,
    r#"{"id":"a4e29c5b82f94d67b23e108a7c9df6e1","object":"chat.completion.chunk","created":1769088912,"model":"magistral-medium-2507","choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"total_tokens":56,"completion_tokens":46}}"#,
];

// M-TOOL-1 (R): whole call in one chunk with index, no type.
const M_TOOL_1: &[&str] = &[
    r#"{"id":"755aa30c9826400b818018ed9a0d4f62","object":"chat.completion.chunk","created":1748464326,"model":"mistral-large-latest","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
    r#"{"id":"755aa30c9826400b818018ed9a0d4f62","object":"chat.completion.chunk","created":1748464326,"model":"mistral-large-latest","choices":[{"index":0,"delta":{"tool_calls":[{"id":"4dI1Jw6NX","function":{"name":"llm_version","arguments":"{}"},"index":0}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":55,"total_tokens":73,"completion_tokens":18}}"#,
    "[DONE]",
];

// M-TOOL-2 (R?): content null beside tool_calls, no index.
const M_TOOL_2: &[&str] = &[
    r#"{"id":"b3999b8c93e04e11bcbff7bcab829667","object":"chat.completion.chunk","created":1769088854,"model":"mistral-small-latest","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null,"logprobs":null}]}"#,
    r#"{"id":"b3999b8c93e04e11bcbff7bcab829667","object":"chat.completion.chunk","created":1769088854,"model":"mistral-small-latest","choices":[{"index":0,"delta":{"content":null,"tool_calls":[{"id":"gSIMJiOkT","function":{"name":"weather","arguments":"{\"location\": \"San Francisco\"}"}}]},"finish_reason":"tool_calls","logprobs":null}],"usage":{"prompt_tokens":124,"total_tokens":146,"completion_tokens":22}}"#,
];

#[test]
fn parses_plain_text_samples() {
    let (text, calls, p) = parse_all(&data_lines(M_TXT_2));
    assert_eq!(text, "The installed version of LLM is 0.26.");
    assert!(calls.is_empty());
    assert_eq!(p.finish_reason(), Some("stop"));

    let (text, _, p) = parse_all(M_TXT_1_TAIL);
    assert_eq!(text, " recognizable", "content in the finish chunk is kept");
    assert_eq!(p.finish_reason(), Some("length"));

    let (text, _, p) = parse_all(M_TXT_4);
    assert_eq!(text, "Hello, world! This is a test response.");
    assert!(
        p.finished(),
        "finish_reason without [DONE] completes the answer"
    );

    let (text, _, _) = parse_all(M_TXT_5);
    assert_eq!(text, "I am an AI");
}

#[test]
fn reasoning_parts_are_not_spoken() {
    let (text, _, _) = parse_all(M_REASON_1);
    assert_eq!(text, "2 + 2 = 4");
}

#[test]
fn parses_tool_call_samples() {
    let (text, calls, _) = parse_all(M_TOOL_1);
    assert_eq!(text, "");
    assert_eq!(
        calls,
        vec![ChatToolCall {
            id: "4dI1Jw6NX".into(),
            name: "llm_version".into(),
            arguments: "{}".into()
        }]
    );
    let mut p = StreamParser::default();
    for l in M_TOOL_2 {
        p.feed(l).unwrap();
    }
    // The 2026 sample has no [DONE] in the fixture: calls come out at the end of the stream.
    assert!(p.finished());
    let calls = p.take_calls();
    assert_eq!(
        calls,
        vec![ChatChunk::ToolCall(ChatToolCall {
            id: "gSIMJiOkT".into(),
            name: "weather".into(),
            arguments: "{\"location\": \"San Francisco\"}".into()
        })]
    );
}

#[test]
fn merges_openai_style_incremental_tool_calls() {
    // Discrepancy 7: third-party models stream arguments in pieces, non-9-char ids, a stray
    // index inside the delta, name "" on continuations; plus parallel calls.
    let lines = [
        r#"{"choices":[{"index":0,"delta":{"index":0,"tool_calls":[{"index":0,"id":"chatcmpl-tool-abc","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"","arguments":"{\"city\": "}}]},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2","function":{"name":"end_call","arguments":{}}}]},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"p":"padding"}"#,
        "[DONE]",
    ];
    let (_, calls, _) = parse_all(&lines);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].id, "chatcmpl-tool-abc");
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(calls[0].arguments, "{\"city\": \"Paris\"}");
    assert_eq!(calls[1].name, "end_call");
    assert_eq!(calls[1].arguments, "{}");
}

#[test]
fn malformed_chunks_and_error_finish_are_errors() {
    let mut p = StreamParser::default();
    assert!(p.feed("{not json").is_err());
    assert!(
        p.feed(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"error"}]}"#)
            .is_err()
    );
    // Unknown fields and empty choices are fine.
    assert_eq!(
        p.feed(r#"{"choices":[],"usage":{"prompt_tokens":1},"p":"x"}"#)
            .unwrap(),
        Parsed::Chunks(vec![])
    );
}

fn roles(v: &[Value]) -> Vec<&str> {
    v.iter().map(|m| m["role"].as_str().unwrap()).collect()
}

#[test]
fn lone_system_prompt_gets_an_empty_user_message() {
    let out = normalize_messages(&[ChatMessage::System("Tu es un assistant.".into())]);
    assert_eq!(roles(&out), ["system", "user"]);
    assert_eq!(out[1]["content"], "");
}

#[test]
fn skip_answer_tool_then_user_gets_an_assistant_in_between() {
    let msgs = vec![
        ChatMessage::System("s".into()),
        ChatMessage::User("Je voudrais".into()),
        ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![ChatToolCall {
                id: "call_0_semantic".into(),
                name: "semantic_turn".into(),
                arguments: String::new(),
            }],
        },
        ChatMessage::Tool {
            tool_call_id: "call_0_semantic".into(),
            name: "semantic_turn".into(),
            content: "null".into(),
        },
        ChatMessage::User("réserver une table".into()),
    ];
    let out = normalize_messages(&msgs);
    assert_eq!(
        roles(&out),
        ["system", "user", "assistant", "tool", "assistant", "user"]
    );
    assert_eq!(out[4]["content"], BRIDGE_ASSISTANT_CONTENT);
    let id = out[2]["tool_calls"][0]["id"].as_str().unwrap();
    assert!(is_mistral_tool_id(id), "{id}");
    assert_eq!(
        out[3]["tool_call_id"], id,
        "call and result keep the same id"
    );
    assert_eq!(out[2]["tool_calls"][0]["function"]["arguments"], "{}");
    // A conversation ending with the tool result is valid as is (the tool loop continues).
    let out = normalize_messages(&msgs[..4]);
    assert_eq!(roles(&out).last(), Some(&"tool"));
}

#[test]
fn tool_ids_are_stable_across_requests_and_valid_ids_are_kept() {
    assert_eq!(mistral_tool_id("4dI1Jw6NX"), "4dI1Jw6NX");
    let a = mistral_tool_id("chatcmpl-tool-123");
    assert_eq!(a, mistral_tool_id("chatcmpl-tool-123"));
    assert!(is_mistral_tool_id(&a));
    assert_ne!(a, mistral_tool_id("chatcmpl-tool-124"));
    for i in 0..2000 {
        assert!(is_mistral_tool_id(&mistral_tool_id(&format!("id-{i}"))));
    }
    assert!(is_mistral_tool_id(&random_tool_id()));
}

#[test]
fn message_order_is_repaired() {
    let msgs = vec![
        ChatMessage::System("s".into()),
        ChatMessage::User("u".into()),
        ChatMessage::Assistant {
            content: "Je regarde.".into(),
            tool_calls: vec![],
        },
        ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![ChatToolCall {
                id: "abcdefghi".into(),
                name: "t".into(),
                arguments: "{\"a\":1}".into(),
            }],
        },
        ChatMessage::Tool {
            tool_call_id: "abcdefghi".into(),
            name: "t".into(),
            content: "1".into(),
        },
        ChatMessage::Assistant {
            content: "C'est fait.".into(),
            tool_calls: vec![],
        },
        ChatMessage::Assistant {
            content: "  ".into(),
            tool_calls: vec![],
        },
        ChatMessage::System("late instruction".into()),
        ChatMessage::Assistant {
            content: "Autre chose ?".into(),
            tool_calls: vec![],
        },
    ];
    let out = normalize_messages(&msgs);
    assert_eq!(
        roles(&out),
        [
            "system",
            "user",
            "assistant",
            "assistant",
            "tool",
            "assistant",
            "user",
            "assistant",
            "user"
        ]
    );
    assert_eq!(out[2]["content"], "Je regarde.");
    assert!(out[2].get("tool_calls").is_none(), "text alone");
    assert_eq!(out[3]["content"], "", "calls alone, empty content");
    assert_eq!(out[3]["tool_calls"][0]["id"], "abcdefghi");
    assert_eq!(out[6]["content"], "late instruction");
    assert_eq!(
        out[8]["content"], "",
        "a trailing assistant gets an empty user"
    );
}

fn call(id: &str, name: &str) -> ChatToolCall {
    ChatToolCall {
        id: id.into(),
        name: name.into(),
        arguments: "{}".into(),
    }
}

fn tool(id: &str, name: &str, content: &str) -> ChatMessage {
    ChatMessage::Tool {
        tool_call_id: id.into(),
        name: name.into(),
        content: content.into(),
    }
}

/// The request rules of api.mistral.ai, as the simulator enforces them (`validate_semantics`).
fn assert_valid(out: &[Value]) {
    let body = json!({"model": "mistral-small-latest", "messages": out});
    if let Err(e) = micdrop_sim::check_mistral_messages(&body) {
        panic!(
            "refused: {e}\n{}",
            serde_json::to_string_pretty(out).unwrap()
        );
    }
}

#[test]
fn a_preamble_and_a_tool_call_are_two_assistant_messages() {
    // The model said something, then called a tool (one streamed answer).
    let msgs = vec![
        ChatMessage::System("s".into()),
        ChatMessage::User("Quel temps fait-il ?".into()),
        ChatMessage::Assistant {
            content: "Un instant, je regarde…".into(),
            tool_calls: vec![call("abcDEF123", "meteo")],
        },
        tool("abcDEF123", "meteo", "{\"temp\":12}"),
    ];
    let out = normalize_messages(&msgs);
    assert_eq!(
        roles(&out),
        ["system", "user", "assistant", "assistant", "tool"]
    );
    assert_eq!(
        out[2],
        json!({"role": "assistant", "content": "Un instant, je regarde…"})
    );
    assert_eq!(out[3]["content"], "");
    assert_valid(&out);
}

#[test]
fn every_tool_call_gets_its_result_in_place() {
    // A barge-in while the second tool ran: no result for it, and the user spoke on.
    let msgs = vec![
        ChatMessage::System("s".into()),
        ChatMessage::User("a".into()),
        ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![call("call_one", "t1"), call("call_two", "t2")],
        },
        ChatMessage::User("non, attends".into()),
        // A late result of the first call, after the user's message.
        tool("call_one", "t1", "1"),
        // A result whose call is gone.
        tool("orphan", "t3", "3"),
    ];
    let out = normalize_messages(&msgs);
    assert_eq!(
        roles(&out),
        [
            "system",
            "user",
            "assistant",
            "tool",
            "tool",
            "assistant",
            "user"
        ]
    );
    assert_eq!(out[3]["content"], "1");
    assert_eq!(out[3]["tool_call_id"], out[2]["tool_calls"][0]["id"]);
    assert_eq!(out[4]["content"], CANCELLED_TOOL_OUTPUT);
    assert_eq!(out[4]["tool_call_id"], out[2]["tool_calls"][1]["id"]);
    assert_eq!(out[4]["name"], "t2");
    assert_valid(&out);
    // Ending on the dangling call: still valid (the last message is its tool result).
    let out = normalize_messages(&msgs[..3]);
    assert_eq!(roles(&out), ["system", "user", "assistant", "tool", "tool"]);
    assert_valid(&out);
}

#[test]
fn rules_hold_after_ignore_user_noise_removed_the_user_message() {
    // [user "hmm"] was removed by ignore_user_noise: the tool call follows the system prompt.
    let msgs = vec![
        ChatMessage::System("s".into()),
        ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![call("noise0001", "ignore_user_noise")],
        },
        tool("noise0001", "ignore_user_noise", "null"),
    ];
    assert_valid(&normalize_messages(&msgs));
    let mut next = msgs.clone();
    next.push(ChatMessage::User("Bonjour".into()));
    let out = normalize_messages(&next);
    assert_eq!(
        roles(&out),
        ["system", "assistant", "tool", "assistant", "user"]
    );
    assert_valid(&out);
    // The removed user message leaves a preamble + a noise call + a dangling call.
    let msgs = vec![
        ChatMessage::System("s".into()),
        ChatMessage::User("a".into()),
        ChatMessage::Assistant {
            content: "Bien.".into(),
            tool_calls: vec![call("noise0002", "ignore_user_noise")],
        },
        ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![call("slow00001", "slow")],
        },
        tool("noise0002", "ignore_user_noise", "null"),
        ChatMessage::User("b".into()),
    ];
    assert_valid(&normalize_messages(&msgs));
}

fn options(base: &str) -> MistralOptions {
    let mut o = MistralOptions::mistral(Some(ApiKey::new("test-key-123")));
    o.base_url = Url::parse(base).unwrap();
    o.retry = RetryPolicy::immediate(3);
    o.first_token_timeout = Duration::from_millis(400);
    o.idle_timeout = Duration::from_millis(400);
    o
}

#[test]
fn body_has_only_known_fields_and_the_dialect_seed() {
    let mut o = options("http://127.0.0.1:1");
    o.settings.temperature = Some(0.3);
    o.settings.max_tokens = Some(200);
    o.settings.random_seed = Some(42);
    o.settings.safe_prompt = Some(true);
    o.settings.tool_choice = Some("auto".into());
    let req = ChatRequest {
        messages: vec![
            ChatMessage::System("s".into()),
            ChatMessage::User("u".into()),
        ],
        tools: vec![ToolSpec {
            name: "end_call".into(),
            description: "End the call".into(),
            parameters: Value::Null,
        }],
    };
    let body = build_body(&o, &req);
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "model",
            "messages",
            "stream",
            "temperature",
            "max_tokens",
            "random_seed",
            "safe_prompt",
            "tools",
            "tool_choice"
        ]
    );
    assert_eq!(body["model"], MISTRAL_DEFAULT_MODEL);
    assert_eq!(
        MISTRAL_DEFAULT_MODEL, "mistral-small-latest",
        "the voice default"
    );
    assert_eq!(body["tools"][0]["function"]["parameters"]["type"], "object");
    o.dialect = Dialect::OpenAi;
    let body = build_body(&o, &ChatRequest::default());
    assert_eq!(body["seed"], 42);
    assert!(body.get("random_seed").is_none() && body.get("safe_prompt").is_none());
    assert!(body.get("tools").is_none() && body.get("tool_choice").is_none());
}

#[test]
fn endpoint_accepts_roots_and_v1_bases() {
    assert_eq!(
        options("https://api.mistral.ai").endpoint().as_str(),
        "https://api.mistral.ai/v1/chat/completions"
    );
    assert_eq!(
        options("http://127.0.0.1:11434/v1").endpoint().as_str(),
        "http://127.0.0.1:11434/v1/chat/completions"
    );
}

const HELLO: &[&str] = &[
    r#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
    r#"{"id":"x","choices":[{"index":0,"delta":{"content":"Bonjour"},"finish_reason":null}]}"#,
    r#"{"id":"x","choices":[{"index":0,"delta":{"content":" !"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"total_tokens":2,"completion_tokens":1}}"#,
    "[DONE]",
];

fn hello_request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::System("s".into()),
            ChatMessage::User("u".into()),
        ],
        tools: vec![],
    }
}

async fn collect(model: &MistralModel) -> (String, Vec<AgentError>) {
    let mut s = model.stream(hello_request());
    let mut text = String::new();
    let mut errs = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(ChatChunk::Text(t)) => text.push_str(&t),
            Ok(ChatChunk::ToolCall(_)) => {}
            Err(e) => errs.push(e),
        }
    }
    (text, errs)
}

#[tokio::test]
async fn streams_an_answer_with_bearer_auth() {
    let server = RawServer::start(vec![vec![sse_head(), sse_events(HELLO)]]).await;
    let model = MistralModel::new(options(&server.url())).unwrap();
    let (text, errs) = collect(&model).await;
    assert_eq!(text, "Bonjour !");
    assert!(errs.is_empty(), "{errs:?}");
    let req = server.requests.lock().unwrap()[0].clone();
    assert!(
        req.starts_with("POST /v1/chat/completions HTTP/1.1"),
        "{req}"
    );
    assert!(
        req.to_ascii_lowercase()
            .contains("authorization: bearer test-key-123")
    );
    assert!(req.contains("\"stream\":true"));
}

#[tokio::test]
async fn retries_429_then_succeeds() {
    let server = RawServer::start(vec![
        vec![json_response(
            429,
            r#"{"object":"error","message":"Rate limit exceeded","type":"rate_limited","param":null,"code":"1300"}"#,
        )],
        vec![json_response(503, r#"{"message":"unavailable"}"#)],
        vec![sse_head(), sse_events(HELLO)],
    ])
    .await;
    let model = MistralModel::new(options(&server.url())).unwrap();
    let (text, errs) = collect(&model).await;
    assert_eq!(text, "Bonjour !");
    assert!(errs.is_empty());
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn gives_up_after_the_last_retry_with_one_error() {
    let server = RawServer::start(vec![vec![json_response(500, r#"{"message":"boom"}"#)]]).await;
    let model = MistralModel::new(options(&server.url())).unwrap();
    let (text, errs) = collect(&model).await;
    assert_eq!(text, "");
    assert_eq!(errs.len(), 1);
    assert_eq!(server.request_count(), 4, "1 attempt + 3 retries");
    match &errs[0].kind {
        ProviderErrorKind::Exhausted { attempts, last } => {
            assert_eq!(*attempts, 4);
            assert!(last.contains("500") && last.contains("boom"), "{last}");
        }
        k => panic!("unexpected {k:?}"),
    }
}

#[tokio::test]
async fn client_errors_are_not_retried_and_never_show_the_key() {
    let server = RawServer::start(vec![vec![json_response(
        401,
        r#"{"message":"Unauthorized","request_id":"933f233947ff6d346065bb297e4a4d56"}"#,
    )]])
    .await;
    let model = MistralModel::new(options(&server.url())).unwrap();
    let (_, errs) = collect(&model).await;
    assert_eq!(server.request_count(), 1);
    assert_eq!(errs.len(), 1);
    assert!(matches!(
        errs[0].kind,
        ProviderErrorKind::Status { status: 401, .. }
    ));
    let shown = format!("{} {:?} {:?}", errs[0], errs[0], model);
    assert!(!shown.contains("test-key-123"), "{shown}");
}

#[tokio::test]
async fn a_hanging_server_times_out_instead_of_hanging() {
    let server = RawServer::start(vec![vec![Part::Sleep(Duration::from_secs(30))]]).await;
    let mut o = options(&server.url());
    o.retry = RetryPolicy::immediate(1);
    o.first_token_timeout = Duration::from_millis(150);
    let model = MistralModel::new(o).unwrap();
    let started = std::time::Instant::now();
    let (_, errs) = collect(&model).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(errs.len(), 1);
    assert!(errs[0].to_string().contains("timeout"), "{}", errs[0]);
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn a_cut_before_any_text_is_retried_a_cut_after_text_is_an_error() {
    // Connection 1: cut after the role chunk (nothing spoken yet) → retried.
    // Connection 2: complete.
    let server = RawServer::start(vec![
        vec![sse_head(), sse_events(&HELLO[..1])],
        vec![sse_head(), sse_events(HELLO)],
    ])
    .await;
    let model = MistralModel::new(options(&server.url())).unwrap();
    let (text, errs) = collect(&model).await;
    assert_eq!((text.as_str(), errs.len()), ("Bonjour !", 0));
    assert_eq!(server.request_count(), 2);

    // Cut after "Bonjour": the words were yielded, so the stream ends with an error.
    let server = RawServer::start(vec![vec![sse_head(), sse_events(&HELLO[..2])]]).await;
    let model = MistralModel::new(options(&server.url())).unwrap();
    let (text, errs) = collect(&model).await;
    assert_eq!(text, "Bonjour");
    assert_eq!(errs.len(), 1);
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn a_malformed_chunk_before_text_is_retried() {
    let server = RawServer::start(vec![
        vec![sse_head(), sse_events(&["{oops"])],
        vec![sse_head(), sse_events(HELLO)],
    ])
    .await;
    let model = MistralModel::new(options(&server.url())).unwrap();
    let (text, errs) = collect(&model).await;
    assert_eq!((text.as_str(), errs.len()), ("Bonjour !", 0));
}

#[tokio::test]
async fn dropping_the_stream_closes_the_http_stream() {
    let server = RawServer::start(vec![vec![
        sse_head(),
        sse_events(&HELLO[..2]),
        Part::AwaitClientClose,
    ]])
    .await;
    let mut o = options(&server.url());
    o.idle_timeout = Duration::from_secs(30);
    let model = MistralModel::new(o).unwrap();
    let mut s = model.stream(hello_request());
    assert_eq!(
        s.next().await.unwrap().unwrap(),
        ChatChunk::Text("Bonjour".into())
    );
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while server.closed_by_client.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "server never saw the close"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn tool_calls_stream_whole() {
    let server = RawServer::start(vec![vec![sse_head(), sse_events(M_TOOL_1)]]).await;
    let model = MistralModel::new(options(&server.url())).unwrap();
    let chunks: Vec<_> = model.stream(hello_request()).collect().await;
    assert_eq!(
        chunks,
        vec![Ok(ChatChunk::ToolCall(ChatToolCall {
            id: "4dI1Jw6NX".into(),
            name: "llm_version".into(),
            arguments: "{}".into()
        }))]
    );
}
