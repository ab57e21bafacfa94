//! Mistral chat completions simulator against a real HTTP client.

mod common;

use std::time::Duration;

use common::{script, start};
use micdrop_sim::{Fault, FaultKind, Service, SimScript};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(url: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{url}/chat/completions"))
        .bearer_auth("test-key")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn user(text: &str, stream: bool) -> Value {
    json!({"model": "mistral-small-latest", "stream": stream,
           "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]})
}

/// Splits an SSE body into its `data:` payloads.
fn sse(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "events end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            assert!(e.starts_with("data: "), "only data lines: {e:?}");
            assert!(!e.contains('\n'), "one line per event: {e:?}");
            e["data: ".len()..].to_string()
        })
        .collect()
}

fn chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[tokio::test]
async fn streams_the_default_answer_token_by_token() {
    let sim = start(SimScript::default()).await;
    let r = post(&sim.mistral_base_url(), user("Bonjour", true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert!(r.headers().contains_key("x-ratelimit-remaining-req-minute"));
    let body = r.text().await.unwrap();
    let chunks = chunks(&sse(&body));
    assert!(chunks.len() >= 4, "role, several deltas, final: {chunks:?}");
    let first = &chunks[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
    let id = first["id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    for c in &chunks {
        assert_eq!(c["id"], first["id"]);
        assert_eq!(c["created"], first["created"]);
        assert_eq!(c["model"], "mistral-small-latest");
    }
    for c in &chunks[..chunks.len() - 1] {
        assert!(c.get("usage").is_none());
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    let u = &last["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Vous avez dit : « Bonjour ».");
    assert_eq!(sim.wait_idle(Duration::from_secs(2)).await.open(), 0);
    assert_eq!(sim.counters().mistral.requests, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn calls_end_call_on_goodbye_when_offered() {
    let sim = start(SimScript::default()).await;
    let mut body = user("Merci, au revoir !", true);
    body["tools"] = json!([{"type": "function", "function": {"name": "end_call",
        "description": "End the call.", "parameters": {"type": "object", "properties": {}}}}]);
    let text = post(&sim.mistral_base_url(), body.clone())
        .await
        .text()
        .await
        .unwrap();
    let chunks = chunks(&sse(&text));
    assert_eq!(
        chunks.len(),
        2,
        "role chunk then one tool-call chunk: {chunks:?}"
    );
    let c = &chunks[1];
    assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
    assert!(c["usage"].is_object());
    let call = &c["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "end_call");
    assert_eq!(call["function"]["arguments"], "{}");
    assert_eq!(call["index"], 0);
    let id = call["id"].as_str().unwrap();
    assert!(id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()));
    // Without the tool, goodbye is answered with text.
    let text = post(&sim.mistral_base_url(), user("au revoir", true))
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains("tool_calls"));
    sim.shutdown().await;
}

#[tokio::test]
async fn scripted_replies_and_non_streaming() {
    let sim = start(script(
        r#"
[sim.mistral]
replies = [
  { text = "Il est midi." },
  { tool_calls = [{ name = "get_weather", arguments = { city = "Paris" } }] },
  { when = "météo", text = "Il fait beau." },
]
"#,
    ))
    .await;
    let url = sim.mistral_base_url();
    // `when` replies match first and are not used up.
    let r: Value = post(&url, user("Quelle météo ?", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["content"], "Il fait beau.");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    let r: Value = post(&url, user("Quelle heure ?", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["choices"][0]["message"]["content"], "Il est midi.");
    let text = post(&url, user("Et à Paris ?", true))
        .await
        .text()
        .await
        .unwrap();
    let chunks = chunks(&sse(&text));
    let call = &chunks.last().unwrap()["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    // Script exhausted: the echo answer again.
    let r: Value = post(&url, user("Merci", false)).await.json().await.unwrap();
    assert_eq!(
        r["choices"][0]["message"]["content"],
        "Vous avez dit : « Merci »."
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn max_tokens_gives_finish_reason_length() {
    let sim = start(SimScript::default()).await;
    let mut body = user("Une phrase assez longue pour être coupée", true);
    body["max_tokens"] = json!(2);
    let text = post(&sim.mistral_base_url(), body)
        .await
        .text()
        .await
        .unwrap();
    let chunks = chunks(&sse(&text));
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
    sim.shutdown().await;
}

#[tokio::test]
async fn validation_errors_match_the_real_api() {
    let sim = start(SimScript::default()).await;
    let url = sim.mistral_base_url();
    // 401 without a key.
    let r = client()
        .post(format!("{url}/chat/completions"))
        .json(&user("hi", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["message"], "Unauthorized");
    assert!(b["request_id"].is_string());
    // 422 for OpenAI-only fields.
    let mut body = user("hi", true);
    body["stream_options"] = json!({"include_usage": true});
    body["messages"][1]["name"] = json!("bob");
    let r = post(&url, body).await;
    assert_eq!(r.status(), 422);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["object"], "error");
    assert_eq!(b["type"], "invalid_request_error");
    let detail = b["message"]["detail"].as_array().unwrap();
    assert!(
        detail
            .iter()
            .any(|d| d["loc"] == json!(["body", "stream_options"])
                && d["type"] == "extra_forbidden"
                && d["msg"] == "Extra inputs are not permitted")
    );
    assert!(
        detail
            .iter()
            .any(|d| d["loc"] == json!(["body", "messages", 1, "user", "name"]))
    );
    // 422 for `required` beside `parameters`.
    let mut body = user("hi", true);
    body["tools"] =
        json!([{"type": "function", "function": {"name": "f", "parameters": {}, "required": []}}]);
    assert_eq!(post(&url, body).await.status(), 422);
    // 400 message order.
    let body = json!({"model": "mistral-small-latest", "messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "abcDEF123", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "abcDEF123", "name": "f", "content": "ok"},
        {"role": "user", "content": "b"},
    ]});
    let r = post(&url, body).await;
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        b,
        json!({"object": "error", "message": "Unexpected role 'user' after role 'tool'",
        "type": "invalid_request_message_order", "param": null, "code": "3230"})
    );
    // 400 text and tool calls in one assistant message (a preamble before a tool call must be
    // its own message; two assistant messages in a row are fine).
    let with_both = |content: &str| {
        json!({"model": "mistral-small-latest", "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": content, "tool_calls": [{"id": "abcDEF123", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "abcDEF123", "name": "f", "content": "ok"},
        ]})
    };
    let r = post(&url, with_both("Un instant, je regarde.")).await;
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        b,
        json!({"object": "error", "message": "Assistant message must have either content or tool_calls, but not both.",
        "type": "invalid_request_message_order", "param": null, "code": "3230"})
    );
    let split = json!({"model": "mistral-small-latest", "messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "Un instant, je regarde."},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "abcDEF123", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "abcDEF123", "name": "f", "content": "ok"},
    ]});
    assert_eq!(post(&url, split).await.status(), 200);
    assert_eq!(post(&url, with_both("")).await.status(), 200);
    // 400 tool-call id format.
    let body = json!({"model": "mistral-small-latest", "messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "tool_calls": [{"id": "call_0001", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_0001", "name": "f", "content": "ok"},
    ]});
    let r = post(&url, body).await;
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert!(b["message"].as_str().unwrap().contains("length of 9"));
    // 400 last role.
    let body =
        json!({"model": "mistral-small-latest", "messages": [{"role": "system", "content": "s"}]});
    let r = post(&url, body).await;
    assert_eq!(r.status(), 400);
    // Unknown model.
    let mut body = user("hi", false);
    body["model"] = json!("gpt-4o");
    assert_eq!(post(&url, body).await.status(), 400);
    assert_eq!(sim.counters().mistral.rejected, 8);
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_its_body() {
    let sim = start(script("[sim.mistral]\nrequests_per_minute = 2")).await;
    let url = sim.mistral_base_url();
    assert_eq!(post(&url, user("a", false)).await.status(), 200);
    assert_eq!(post(&url, user("b", false)).await.status(), 200);
    let r = post(&url, user("c", false)).await;
    assert_eq!(r.status(), 429);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        b,
        json!({"object": "error", "message": "Rate limit exceeded", "type": "rate_limited", "param": null, "code": "1300"})
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn status_faults_are_consumed_in_order() {
    let sim = start(script(
        "[sim.mistral]\nfaults = [{ kind = \"status\", status = 503, times = 2 }, { kind = \"status\", status = 500 }]",
    ))
    .await;
    let url = sim.mistral_base_url();
    assert_eq!(post(&url, user("a", true)).await.status(), 503);
    assert_eq!(post(&url, user("a", true)).await.status(), 503);
    assert_eq!(post(&url, user("a", true)).await.status(), 500);
    assert_eq!(post(&url, user("a", true)).await.status(), 200);
    assert!(sim.script().mistral.faults.is_empty());
    assert_eq!(sim.counters().mistral.faults, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn drop_fault_cuts_the_stream_without_done() {
    let sim = start(SimScript::default()).await;
    sim.push_fault(Service::Mistral, Fault::drop_after(2));
    let r = post(&sim.mistral_base_url(), user("Bonjour tout le monde", true)).await;
    assert_eq!(r.status(), 200);
    let body = r.text().await;
    assert!(body.is_err(), "the body must fail mid-way: {body:?}");
    assert_eq!(sim.wait_idle(Duration::from_secs(2)).await.open(), 0);
    // Mid-utterance drop: the same.
    sim.push_fault(Service::Mistral, Fault::new(FaultKind::DropMidUtterance));
    let r = post(&sim.mistral_base_url(), user("Bonjour", true)).await;
    assert!(r.text().await.is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_fault_sends_broken_json() {
    let sim = start(SimScript::default()).await;
    sim.push_fault(Service::Mistral, Fault::malformed(1));
    let text = post(&sim.mistral_base_url(), user("Bonjour", true))
        .await
        .text()
        .await
        .unwrap();
    let events = sse(&text);
    assert!(serde_json::from_str::<Value>(&events[0]).is_ok());
    assert!(
        serde_json::from_str::<Value>(&events[1]).is_err(),
        "{}",
        events[1]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn hang_fault_never_answers_and_does_not_leak() {
    let sim = start(SimScript::default()).await;
    sim.push_fault(Service::Mistral, Fault::new(FaultKind::Hang));
    let r = client()
        .post(format!("{}/chat/completions", sim.mistral_base_url()))
        .bearer_auth("k")
        .json(&user("a", true))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    assert_eq!(sim.wait_idle(Duration::from_secs(2)).await.open(), 0);
    sim.shutdown().await;
}
