//! Mistral chat completions simulator: `POST /v1/chat/completions` (SSE streaming and plain
//! JSON), strict request validation, scripted or echo answers, rate limit, faults.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::script::{FaultKind, ScriptedReply, SimScript};
use crate::state::{Service, SimState, alnum, first_half, hex, unix_now};

const TOP_LEVEL: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "stream",
    "stop",
    "random_seed",
    "metadata",
    "response_format",
    "tools",
    "tool_choice",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "prediction",
    "parallel_tool_calls",
    "reasoning_effort",
    "prompt_mode",
    "prompt_cache_key",
    "guardrails",
    "safe_prompt",
];

const MODEL_FAMILIES: &[&str] = &[
    "mistral-",
    "ministral-",
    "open-mistral-",
    "open-mixtral-",
    "codestral-",
    "magistral-",
    "pixtral-",
    "devstral-",
    "voxtral-",
];

const GOODBYES: &[&str] = &[
    "goodbye",
    "good bye",
    "bye",
    "au revoir",
    "adieu",
    "bonne journée",
    "bonne soirée",
    "à bientôt",
    "a bientot",
    "ciao",
    "tschüss",
    "adiós",
    "hang up",
    "raccroche",
];

fn rate_headers(h: &mut HeaderMap, remaining: u64) {
    let pairs = [
        ("x-ratelimit-limit-req-minute", "60".to_string()),
        ("x-ratelimit-remaining-req-minute", remaining.to_string()),
        ("x-ratelimit-limit-tokens-minute", "500000".to_string()),
        ("x-ratelimit-remaining-tokens-minute", "499000".to_string()),
        ("x-ratelimit-limit-tokens-month", "1000000000".to_string()),
        (
            "x-ratelimit-remaining-tokens-month",
            "999000000".to_string(),
        ),
        ("x-ratelimit-tokens-query-cost", "1000".to_string()),
    ];
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
}

fn json_response(status: StatusCode, body: Value, remaining: u64) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    rate_headers(r.headers_mut(), remaining);
    r
}

/// Error body in Mistral's `{"object":"error",...}` shape.
fn error_body(message: Value, kind: &str, code: Option<&str>) -> Value {
    json!({"object": "error", "message": message, "type": kind, "param": null, "code": code})
}

/// The body of an injected status.
pub(crate) fn fault_body(status: u16) -> Value {
    match status {
        429 => error_body(json!("Rate limit exceeded"), "rate_limited", Some("1300")),
        401 => json!({"message": "Unauthorized", "request_id": hex(32)}),
        s if s >= 500 => error_body(
            json!("Internal server error"),
            "internal_server_error",
            Some("1000"),
        ),
        _ => error_body(json!("Bad request"), "invalid_request_error", None),
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let counters = state.counters(Service::Mistral);
    counters.request();
    let fault = state.take_fault(Service::Mistral, |_| true);
    match fault.as_ref().map(|f| f.kind) {
        Some(FaultKind::Status) => {
            let status = fault.as_ref().and_then(|f| f.status).unwrap_or(500);
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return json_response(code, fault_body(status), 0);
        }
        Some(FaultKind::Hang) => {
            let _guard = state.open_session(Service::Mistral);
            state.shutdown.cancelled().await;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        _ => {}
    }
    let script = state.script();

    // Auth.
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let authorized = match &script.mistral.api_key {
        Some(k) => k.matches(token),
        None => !token.is_empty(),
    };
    if !authorized {
        counters.reject();
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Unauthorized", "request_id": hex(32)}),
            0,
        );
    }

    // Rate limit (token bucket).
    let mut remaining = 60;
    if let Some(rpm) = script.mistral.requests_per_minute {
        let cap = rpm.max(1) as f64;
        let ok = match state.mistral_bucket.lock() {
            Ok(mut b) => {
                let now = Instant::now();
                if b.0.is_nan() {
                    *b = (cap, now);
                }
                let refill = now.duration_since(b.1).as_secs_f64() * cap / 60.0;
                b.0 = (b.0 + refill).min(cap);
                b.1 = now;
                if b.0 >= 1.0 {
                    b.0 -= 1.0;
                    remaining = b.0 as u64;
                    true
                } else {
                    false
                }
            }
            Err(_) => true,
        };
        if !ok {
            counters.reject();
            return json_response(StatusCode::TOO_MANY_REQUESTS, fault_body(429), 0);
        }
    }

    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            counters.reject();
            let detail = json!([{"type": "json_invalid", "loc": ["body", e.column()],
                "msg": "JSON decode error", "input": {}, "ctx": {"error": e.to_string()}}]);
            return json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                error_body(json!({"detail": detail}), "invalid_request_error", None),
                remaining,
            );
        }
    };
    let detail = validate_schema(&req);
    if !detail.is_empty() {
        counters.reject();
        return json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            error_body(json!({"detail": detail}), "invalid_request_error", None),
            remaining,
        );
    }
    let model = req["model"].as_str().unwrap_or_default().to_string();
    if !model_known(&script, &model) {
        counters.reject();
        return json_response(
            StatusCode::BAD_REQUEST,
            error_body(
                json!(format!("Invalid model: {model}")),
                "invalid_model",
                Some("1500"),
            ),
            remaining,
        );
    }
    if let Err(body) = validate_semantics(&req) {
        counters.reject();
        return json_response(StatusCode::BAD_REQUEST, body, remaining);
    }

    let answer = plan_answer(&state, &script, &req);
    let stream = req["stream"].as_bool().unwrap_or(false);
    let guard = state.open_session(Service::Mistral);
    let ttft = state.delay(script.mistral.ttft_ms);
    let inter = state.delay(script.mistral.inter_token_ms);
    let id = hex(32);
    let created = unix_now();
    let usage = json!({
        "prompt_tokens": answer.prompt_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens(),
        "completion_tokens": answer.completion_tokens(),
    });

    if !stream {
        let mut wait = ttft + inter * answer.tokens.len() as u32;
        let cut = matches!(
            fault.as_ref().map(|f| f.kind),
            Some(FaultKind::Drop | FaultKind::DropMidUtterance | FaultKind::Close)
        );
        if cut {
            wait = ttft;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.shutdown.cancelled() => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
        let tool_calls: Vec<Value> = answer
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, (id, name, args))| {
                json!({"id": id, "function": {"name": name, "arguments": args}, "index": i})
            })
            .collect();
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "tool_calls": if tool_calls.is_empty() { Value::Null } else { json!(tool_calls) },
                    "content": answer.tokens.concat(),
                },
                "finish_reason": answer.finish_reason,
            }],
            "usage": usage,
        });
        drop(guard);
        if cut {
            // A body that fails mid-way: the client sees a broken connection.
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from(first_half(&body.to_string()))),
                Err(std::io::Error::other("simulated drop")),
            ];
            return response_with_body(
                Body::from_stream(futures::stream::iter(chunks)),
                "application/json",
                remaining,
            );
        }
        if matches!(fault.as_ref().map(|f| f.kind), Some(FaultKind::Malformed)) {
            let s = first_half(&body.to_string());
            return response_with_body(Body::from(s), "application/json", remaining);
        }
        return json_response(StatusCode::OK, body, remaining);
    }

    // Streaming: a producer task feeds the body through a channel.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let chunk = move |delta: Value, finish: Option<&str>, usage: Option<&Value>| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if let (Some(u), Some(obj)) = (usage, c.as_object_mut()) {
            obj.insert("usage".into(), u.clone());
        }
        c
    };
    let mut events: Vec<(std::time::Duration, String)> = Vec::new();
    events.push((
        std::time::Duration::ZERO,
        chunk(json!({"role": "assistant", "content": ""}), None, None).to_string(),
    ));
    let n = answer.tokens.len();
    let has_tools = !answer.tool_calls.is_empty();
    for (i, tok) in answer.tokens.iter().enumerate() {
        let wait = if i == 0 { ttft } else { inter };
        let last = i + 1 == n && !has_tools;
        let c = if last {
            chunk(
                json!({"content": tok}),
                Some(&answer.finish_reason),
                Some(&usage),
            )
        } else {
            chunk(json!({"content": tok}), None, None)
        };
        events.push((wait, c.to_string()));
    }
    if has_tools {
        let calls: Vec<Value> = answer
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, (id, name, args))| {
                json!({"id": id, "function": {"name": name, "arguments": args}, "index": i})
            })
            .collect();
        let wait = if n == 0 { ttft } else { inter };
        events.push((
            wait,
            chunk(
                json!({"tool_calls": calls}),
                Some(&answer.finish_reason),
                Some(&usage),
            )
            .to_string(),
        ));
    } else if n == 0 {
        events.push((
            ttft,
            chunk(
                json!({"content": ""}),
                Some(&answer.finish_reason),
                Some(&usage),
            )
            .to_string(),
        ));
    }
    let (cut_after, malformed_at) = match fault.as_ref() {
        Some(f) if matches!(f.kind, FaultKind::Drop | FaultKind::Close) => {
            (Some(f.after_messages as usize), None)
        }
        Some(f) if f.kind == FaultKind::DropMidUtterance => (Some(2), None),
        Some(f) if f.kind == FaultKind::Malformed => (None, Some(f.after_messages as usize)),
        _ => (None, None),
    };
    let shutdown = state.shutdown.clone();
    state.tracker.spawn(async move {
        let _guard = guard;
        for (i, (wait, data)) in events.into_iter().enumerate() {
            if cut_after == Some(i) {
                let _ = tx.send(Err(std::io::Error::other("simulated drop"))).await;
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
            let data = if malformed_at == Some(i) {
                first_half(&data)
            } else {
                data
            };
            if tx
                .send(Ok(Bytes::from(format!("data: {data}\n\n"))))
                .await
                .is_err()
            {
                return;
            }
        }
        if cut_after.is_some() {
            let _ = tx.send(Err(std::io::Error::other("simulated drop"))).await;
            return;
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    response_with_body(Body::from_stream(stream), "text/event-stream", remaining)
}

fn response_with_body(body: Body, content_type: &str, remaining: u64) -> Response {
    let mut r = Response::new(body);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    rate_headers(r.headers_mut(), remaining);
    r
}

fn model_known(script: &SimScript, model: &str) -> bool {
    if script.mistral.models.is_empty() {
        MODEL_FAMILIES.iter().any(|p| model.starts_with(p))
    } else {
        script.mistral.models.iter().any(|m| m == model)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

struct Detail(Vec<Value>);

impl Detail {
    fn push(&mut self, kind: &str, loc: &[Value], msg: &str, input: &Value) {
        let mut l = vec![json!("body")];
        l.extend_from_slice(loc);
        self.0
            .push(json!({"type": kind, "loc": l, "msg": msg, "input": input}));
    }

    fn extra(&mut self, obj: &Map<String, Value>, allowed: &[&str], loc: &[Value]) {
        for (k, v) in obj {
            if !allowed.contains(&k.as_str()) {
                let mut l = loc.to_vec();
                l.push(json!(k));
                self.push("extra_forbidden", &l, "Extra inputs are not permitted", v);
            }
        }
    }
}

fn loc(parts: &[&dyn ToValue]) -> Vec<Value> {
    parts.iter().map(|p| p.to_value()).collect()
}

trait ToValue {
    fn to_value(&self) -> Value;
}
impl ToValue for &str {
    fn to_value(&self) -> Value {
        json!(self)
    }
}
impl ToValue for usize {
    fn to_value(&self) -> Value {
        json!(self)
    }
}

fn check_type(d: &mut Detail, obj: &Map<String, Value>, key: &str, kind: &str, l: &[Value]) {
    let Some(v) = obj.get(key) else { return };
    if v.is_null() {
        return;
    }
    let ok = match kind {
        "string" => v.is_string(),
        "bool" => v.is_boolean(),
        "int" => v.is_i64() || v.is_u64(),
        "float" => v.is_number(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        _ => true,
    };
    if !ok {
        let (t, msg) = match kind {
            "string" => ("string_type", "Input should be a valid string"),
            "bool" => ("bool_type", "Input should be a valid boolean"),
            "int" => ("int_type", "Input should be a valid integer"),
            "float" => ("float_type", "Input should be a valid number"),
            "object" => ("dict_type", "Input should be a valid dictionary"),
            _ => ("list_type", "Input should be a valid list"),
        };
        let mut l = l.to_vec();
        l.push(json!(key));
        d.push(t, &l, msg, v);
    }
}

/// Schema validation (422 `detail` items; empty when valid).
pub(crate) fn validate_schema(req: &Value) -> Vec<Value> {
    let mut d = Detail(Vec::new());
    let Some(obj) = req.as_object() else {
        d.push(
            "model_attributes_type",
            &[],
            "Input should be a valid dictionary or object to extract fields from",
            req,
        );
        return d.0;
    };
    d.extra(obj, TOP_LEVEL, &[]);
    for key in ["model", "messages"] {
        if !obj.contains_key(key) {
            d.push("missing", &[json!(key)], "Field required", req);
        }
    }
    if obj.get("model").is_some_and(Value::is_null) {
        d.push(
            "string_type",
            &[json!("model")],
            "Input should be a valid string",
            &Value::Null,
        );
    }
    for (k, t) in [
        ("model", "string"),
        ("messages", "array"),
        ("temperature", "float"),
        ("top_p", "float"),
        ("max_tokens", "int"),
        ("stream", "bool"),
        ("random_seed", "int"),
        ("metadata", "object"),
        ("response_format", "object"),
        ("tools", "array"),
        ("presence_penalty", "float"),
        ("frequency_penalty", "float"),
        ("n", "int"),
        ("prediction", "object"),
        ("parallel_tool_calls", "bool"),
        ("prompt_mode", "string"),
        ("prompt_cache_key", "string"),
        ("safe_prompt", "bool"),
    ] {
        check_type(&mut d, obj, k, t, &[]);
    }
    if let Some(stop) = obj.get("stop") {
        let ok = stop.is_null()
            || stop.is_string()
            || stop
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            d.push(
                "string_type",
                &[json!("stop")],
                "Input should be a valid string",
                stop,
            );
        }
    }
    if let Some(e) = obj.get("reasoning_effort").filter(|v| !v.is_null()) {
        let ok = e
            .as_str()
            .is_some_and(|s| ["none", "minimal", "low", "medium", "high", "xhigh"].contains(&s));
        if !ok {
            d.push(
                "enum",
                &[json!("reasoning_effort")],
                "Input should be 'none', 'minimal', 'low', 'medium', 'high' or 'xhigh'",
                e,
            );
        }
    }
    if let Some(rf) = obj.get("response_format").and_then(Value::as_object) {
        d.extra(rf, &["type", "json_schema"], &[json!("response_format")]);
        if let Some(t) = rf.get("type") {
            if !t
                .as_str()
                .is_some_and(|s| ["text", "json_object", "json_schema"].contains(&s))
            {
                d.push(
                    "enum",
                    &[json!("response_format"), json!("type")],
                    "Input should be 'text', 'json_object' or 'json_schema'",
                    t,
                );
            }
        }
    }
    if let Some(tc) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        match tc {
            Value::String(s) if ["auto", "none", "any", "required"].contains(&s.as_str()) => {}
            Value::Object(o) => {
                d.extra(o, &["type", "function"], &[json!("tool_choice")]);
                if !o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .is_some_and(Value::is_string)
                {
                    d.push(
                        "missing",
                        &[json!("tool_choice"), json!("function"), json!("name")],
                        "Field required",
                        tc,
                    );
                }
            }
            _ => d.push(
                "enum",
                &[json!("tool_choice")],
                "Input should be 'auto', 'none', 'any' or 'required'",
                tc,
            ),
        }
    }
    if let Some(tools) = obj.get("tools").and_then(Value::as_array) {
        for (i, t) in tools.iter().enumerate() {
            let l = loc(&[&"tools", &i]);
            let Some(to) = t.as_object() else {
                d.push(
                    "model_type",
                    &l,
                    "Input should be a valid dictionary or instance of Tool",
                    t,
                );
                continue;
            };
            d.extra(to, &["type", "function"], &l);
            if let Some(ty) = to.get("type") {
                if ty.as_str() != Some("function") {
                    let mut l2 = l.clone();
                    l2.push(json!("type"));
                    d.push("literal_error", &l2, "Input should be 'function'", ty);
                }
            }
            let mut lf = l.clone();
            lf.push(json!("function"));
            match to.get("function").and_then(Value::as_object) {
                None => d.push("missing", &lf, "Field required", t),
                Some(f) => {
                    d.extra(f, &["name", "description", "parameters", "strict"], &lf);
                    if !f.get("name").is_some_and(Value::is_string) {
                        let mut l2 = lf.clone();
                        l2.push(json!("name"));
                        d.push("missing", &l2, "Field required", &Value::Object(f.clone()));
                    }
                    if !f.contains_key("parameters") {
                        let mut l2 = lf.clone();
                        l2.push(json!("parameters"));
                        d.push("missing", &l2, "Field required", &Value::Object(f.clone()));
                    }
                    check_type(&mut d, f, "parameters", "object", &lf);
                    check_type(&mut d, f, "description", "string", &lf);
                    check_type(&mut d, f, "strict", "bool", &lf);
                }
            }
        }
    }
    if let Some(msgs) = obj.get("messages").and_then(Value::as_array) {
        for (i, m) in msgs.iter().enumerate() {
            validate_message(&mut d, i, m);
        }
    }
    d.0
}

fn validate_message(d: &mut Detail, i: usize, m: &Value) {
    let base = loc(&[&"messages", &i]);
    let Some(o) = m.as_object() else {
        d.push(
            "model_attributes_type",
            &base,
            "Input should be a valid dictionary or object to extract fields from",
            m,
        );
        return;
    };
    let role = o.get("role").and_then(Value::as_str).unwrap_or("");
    let allowed: &[&str] = match role {
        "system" => &["role", "content"],
        "user" => &["role", "content"],
        "assistant" => &["role", "content", "tool_calls", "prefix"],
        "tool" => &["role", "content", "tool_call_id", "name"],
        _ => {
            d.0.push(json!({
                "type": "union_tag_invalid", "loc": ["body", "messages", i],
                "msg": format!("Input tag '{role}' found using 'role' does not match any of the expected tags: 'assistant', 'system', 'tool', 'user'"),
                "input": m,
            }));
            return;
        }
    };
    let mut l = base.clone();
    l.push(json!(role));
    d.extra(o, allowed, &l);
    if role != "assistant" && !o.contains_key("content") {
        let mut l2 = l.clone();
        l2.push(json!("content"));
        d.push("missing", &l2, "Field required", m);
    }
    if let Some(c) = o.get("content") {
        let ok = c.is_string()
            || (c.is_null() && role == "assistant")
            || c.as_array().is_some_and(|a| {
                a.iter()
                    .all(|p| p.get("type").is_some_and(Value::is_string))
            });
        if !ok {
            let mut l2 = l.clone();
            l2.push(json!("content"));
            d.push("string_type", &l2, "Input should be a valid string", c);
        }
    }
    check_type(d, o, "prefix", "bool", &l);
    check_type(d, o, "tool_call_id", "string", &l);
    check_type(d, o, "name", "string", &l);
    if let Some(calls) = o.get("tool_calls").filter(|v| !v.is_null()) {
        let Some(calls) = calls.as_array() else {
            let mut l2 = l.clone();
            l2.push(json!("tool_calls"));
            d.push("list_type", &l2, "Input should be a valid list", calls);
            return;
        };
        for (j, c) in calls.iter().enumerate() {
            let mut lc = l.clone();
            lc.push(json!("tool_calls"));
            lc.push(json!(j));
            let Some(co) = c.as_object() else {
                d.push(
                    "model_type",
                    &lc,
                    "Input should be a valid dictionary or instance of ToolCall",
                    c,
                );
                continue;
            };
            d.extra(co, &["id", "type", "function", "index"], &lc);
            let mut lf = lc.clone();
            lf.push(json!("function"));
            match co.get("function").and_then(Value::as_object) {
                None => d.push("missing", &lf, "Field required", c),
                Some(f) => {
                    d.extra(f, &["name", "arguments"], &lf);
                    if !f.get("name").is_some_and(Value::is_string) {
                        let mut l2 = lf.clone();
                        l2.push(json!("name"));
                        d.push("missing", &l2, "Field required", c);
                    }
                    match f.get("arguments") {
                        Some(a) if a.is_string() || a.is_object() => {}
                        Some(a) => {
                            let mut l2 = lf.clone();
                            l2.push(json!("arguments"));
                            d.push("string_type", &l2, "Input should be a valid string", a);
                        }
                        None => {
                            let mut l2 = lf.clone();
                            l2.push(json!("arguments"));
                            d.push("missing", &l2, "Field required", c);
                        }
                    }
                }
            }
        }
    }
}

fn order_error(message: String) -> Value {
    error_body(
        json!(message),
        "invalid_request_message_order",
        Some("3230"),
    )
}

fn valid_tool_id(id: &str) -> bool {
    id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric())
}

fn tool_id_error(id: &str) -> Value {
    error_body(
        json!(format!(
            "Tool call id was {id} but must be a-z, A-Z, 0-9, with a length of 9."
        )),
        "invalid_request_error",
        Some("3280"),
    )
}

/// Message-order rules, tool-call ids, last role (400).
pub(crate) fn validate_semantics(req: &Value) -> Result<(), Value> {
    let msgs = req["messages"].as_array().cloned().unwrap_or_default();
    if msgs.is_empty() {
        return Err(error_body(
            json!(
                "Expected last role User or Tool (or Assistant with prefix True) for serving but got none"
            ),
            "invalid_request_error",
            None,
        ));
    }
    let mut prev = "";
    let mut open_calls: Option<Vec<String>> = None;
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        if role != "tool" {
            if let Some(calls) = open_calls.take() {
                if !calls.is_empty() {
                    return Err(order_error(
                        "Not the same number of function calls and responses".into(),
                    ));
                }
            }
        }
        match role {
            "system" if !prev.is_empty() && prev != "system" => {
                return Err(order_error(format!(
                    "Unexpected role 'system' after role '{prev}'"
                )));
            }
            "user" if prev == "tool" => {
                return Err(order_error(
                    "Unexpected role 'user' after role 'tool'".into(),
                ));
            }
            "tool" => {
                let id = m["tool_call_id"].as_str().unwrap_or("");
                match open_calls.as_mut() {
                    None => {
                        return Err(order_error(format!(
                            "Unexpected role 'tool' after role '{prev}'"
                        )));
                    }
                    Some(calls) => {
                        if !valid_tool_id(id) {
                            return Err(tool_id_error(id));
                        }
                        match calls.iter().position(|c| c == id) {
                            Some(p) => {
                                calls.remove(p);
                            }
                            None if calls.is_empty() => {
                                return Err(order_error(
                                    "Not the same number of function calls and responses".into(),
                                ));
                            }
                            None => {
                                return Err(error_body(
                                    json!(format!("Unexpected tool call id {id} in tool results")),
                                    "invalid_request_error",
                                    None,
                                ));
                            }
                        }
                    }
                }
            }
            "assistant" => {
                let calls: Vec<String> = m["tool_calls"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|c| c["id"].as_str().unwrap_or("").to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                for id in &calls {
                    if !valid_tool_id(id) {
                        return Err(tool_id_error(id));
                    }
                }
                let has_content = match &m["content"] {
                    Value::String(s) => !s.is_empty(),
                    Value::Array(a) => !a.is_empty(),
                    _ => false,
                };
                if !calls.is_empty() && has_content {
                    // api.mistral.ai: text and tool calls go in separate assistant messages.
                    return Err(order_error(
                        "Assistant message must have either content or tool_calls, but not both."
                            .into(),
                    ));
                }
                if calls.is_empty() && !has_content && m["prefix"].as_bool() != Some(true) {
                    return Err(error_body(
                        json!(
                            "Assistant message must have either content or tool_calls, but not none."
                        ),
                        "invalid_request_error",
                        None,
                    ));
                }
                if m["prefix"].as_bool() == Some(true) && i + 1 != msgs.len() {
                    return Err(error_body(
                        json!("Only the last message can be an assistant message with prefix True"),
                        "invalid_request_error",
                        None,
                    ));
                }
                if !calls.is_empty() {
                    open_calls = Some(calls);
                }
            }
            _ => {}
        }
        prev = role;
    }
    if let Some(calls) = open_calls {
        if !calls.is_empty() && prev == "tool" {
            return Err(order_error(
                "Not the same number of function calls and responses".into(),
            ));
        }
    }
    let last = &msgs[msgs.len() - 1];
    let last_role = last["role"].as_str().unwrap_or("");
    let ok = last_role == "user"
        || last_role == "tool"
        || (last_role == "assistant" && last["prefix"].as_bool() == Some(true));
    if !ok {
        return Err(error_body(
            json!(format!(
                "Expected last role User or Tool (or Assistant with prefix True) for serving but got {last_role}"
            )),
            "invalid_request_error",
            None,
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Answers

struct Answer {
    tokens: Vec<String>,
    tool_calls: Vec<(String, String, String)>,
    finish_reason: String,
    prompt_tokens: u64,
}

impl Answer {
    fn completion_tokens(&self) -> u64 {
        self.tokens.len() as u64 + self.tool_calls.len() as u64 * 8
    }
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Splits an answer into stream tokens: words keep their leading space, long words are cut.
pub(crate) fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        if ch == ' ' && !cur.trim().is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(ch);
        if cur.trim_start().chars().count() >= 6 && ch != ' ' {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn is_goodbye(text: &str) -> bool {
    let t = text.to_lowercase();
    GOODBYES.iter().any(|g| {
        t.match_indices(g).any(|(i, _)| {
            let before = t[..i].chars().last();
            let after = t[i + g.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
    })
}

fn plan_answer(state: &SimState, script: &SimScript, req: &Value) -> Answer {
    let msgs = req["messages"].as_array().cloned().unwrap_or_default();
    let prompt_chars: usize = msgs.iter().map(|m| text_of(&m["content"]).len() + 4).sum();
    let prompt_tokens = (prompt_chars / 4).max(1) as u64;
    let last = msgs.last().cloned().unwrap_or(Value::Null);
    let last_user = msgs
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let tools: Vec<String> = req["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["function"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let tool_choice = req.get("tool_choice").cloned().unwrap_or(Value::Null);
    let tools_allowed = tool_choice.as_str() != Some("none");
    let fr = script.language.starts_with("fr");

    let reply = choose_reply(state, script, &last_user, last["role"] == "tool");
    let (mut text, mut calls, finish_override) = match reply {
        Some(r) => (
            r.text.clone().unwrap_or_default(),
            r.tool_calls
                .iter()
                .map(|c| {
                    let args = match &c.arguments {
                        Value::String(s) => s.clone(),
                        Value::Null => "{}".to_string(),
                        v => v.to_string(),
                    };
                    (alnum(9), c.name.clone(), args)
                })
                .collect::<Vec<_>>(),
            r.finish_reason.clone(),
        ),
        None => {
            if last["role"] == "tool" {
                let name = last["name"].as_str().unwrap_or("tool");
                let out = text_of(&last["content"]);
                let t = if name == "end_call" {
                    if fr {
                        "Au revoir !".to_string()
                    } else {
                        "Goodbye!".to_string()
                    }
                } else if fr {
                    format!("L'outil {name} a répondu : {out}")
                } else {
                    format!("The tool {name} returned: {out}")
                };
                (t, Vec::new(), None)
            } else if tools_allowed
                && tools.iter().any(|t| t == "end_call")
                && is_goodbye(&last_user)
            {
                (
                    String::new(),
                    vec![(alnum(9), "end_call".to_string(), "{}".to_string())],
                    None,
                )
            } else {
                let said = last_user.trim();
                let t = if said.is_empty() {
                    if fr {
                        "Je n'ai rien entendu. Pouvez-vous répéter ?".to_string()
                    } else {
                        "I did not hear anything. Could you repeat?".to_string()
                    }
                } else if fr {
                    format!("Vous avez dit : « {said} ».")
                } else {
                    format!("You said: \"{said}\".")
                };
                (t, Vec::new(), None)
            }
        }
    };
    // Forced tool choice without a scripted call: call the named (or first) tool.
    if calls.is_empty() && tools_allowed && !tools.is_empty() && last["role"] != "tool" {
        let forced = match &tool_choice {
            Value::String(s) if s == "any" || s == "required" => tools.first().cloned(),
            Value::Object(o) => o
                .get("function")
                .and_then(|f| f["name"].as_str())
                .map(str::to_string),
            _ => None,
        };
        if let Some(name) = forced {
            text.clear();
            calls.push((alnum(9), name, "{}".to_string()));
        }
    }
    if !tools_allowed {
        calls.clear();
    }
    let mut tokens = tokenize(&text);
    let mut finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    }
    .to_string();
    if let Some(max) = req["max_tokens"].as_u64() {
        if tokens.len() as u64 > max {
            tokens.truncate(max as usize);
            calls.clear();
            finish = "length".into();
        }
    }
    if let Some(f) = finish_override {
        finish = f;
    }
    Answer {
        tokens,
        tool_calls: calls,
        finish_reason: finish,
        prompt_tokens,
    }
}

fn choose_reply<'a>(
    state: &SimState,
    script: &'a SimScript,
    last_user: &str,
    after_tool: bool,
) -> Option<&'a ScriptedReply> {
    let lower = last_user.to_lowercase();
    if !after_tool {
        if let Some(r) = script.mistral.replies.iter().find(|r| {
            r.when
                .as_ref()
                .is_some_and(|w| !w.is_empty() && lower.contains(&w.to_lowercase()))
        }) {
            return Some(r);
        }
    }
    let ordered: Vec<&ScriptedReply> = script
        .mistral
        .replies
        .iter()
        .filter(|r| r.when.is_none())
        .collect();
    let i = state.mistral_reply_cursor.load(Ordering::SeqCst);
    let r = ordered.get(i)?;
    state.mistral_reply_cursor.fetch_add(1, Ordering::SeqCst);
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_keeps_text() {
        let t = tokenize("Bonjour, comment allez-vous aujourd'hui ?");
        assert!(t.len() >= 5);
        assert_eq!(t.concat(), "Bonjour, comment allez-vous aujourd'hui ?");
    }

    #[test]
    fn goodbye_detection() {
        assert!(is_goodbye("Merci, au revoir !"));
        assert!(is_goodbye("OK bye"));
        assert!(!is_goodbye("Byers street"));
        assert!(!is_goodbye("Bonjour"));
    }

    #[test]
    fn schema_rejects_unknown_fields_with_their_location() {
        let d = validate_schema(&json!({
            "model": "mistral-small-latest",
            "messages": [{"role": "user", "content": "hi", "name": "bob"}],
            "max_completion_tokens": 10,
        }));
        let locs: Vec<Value> = d.iter().map(|x| x["loc"].clone()).collect();
        assert!(locs.contains(&json!(["body", "max_completion_tokens"])));
        assert!(locs.contains(&json!(["body", "messages", 0, "user", "name"])));
        assert!(d.iter().all(|x| x["type"] == "extra_forbidden"));
    }

    #[test]
    fn order_rules() {
        let ok = json!({"messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "abcDEF123", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "abcDEF123", "name": "f", "content": "42"},
        ]});
        assert!(validate_semantics(&ok).is_ok());
        let bad = json!({"messages": [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "abcDEF123", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "abcDEF123", "content": "42"},
            {"role": "user", "content": "u"},
        ]});
        let e = validate_semantics(&bad).unwrap_err();
        assert_eq!(e["code"], "3230");
        assert_eq!(e["message"], "Unexpected role 'user' after role 'tool'");
        let bad_id = json!({"messages": [
            {"role": "user", "content": "u"},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ]});
        assert!(
            validate_semantics(&bad_id).unwrap_err()["message"]
                .as_str()
                .unwrap()
                .contains("length of 9")
        );
        let last_assistant = json!({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]});
        assert!(
            validate_semantics(&last_assistant).unwrap_err()["message"]
                .as_str()
                .unwrap()
                .starts_with("Expected last role")
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop_oneof![
                Just("user"),
                Just("assistant"),
                Just("tool"),
                Just("system"),
                Just("x")
            ]
            .prop_map(Value::from),
            "[a-z_]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("role".to_string()),
                        Just("content".to_string()),
                        Just("messages".to_string()),
                        Just("tool_calls".to_string()),
                        Just("function".to_string()),
                        Just("tools".to_string()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Arbitrary request bodies never panic the validators.
        #[test]
        fn validators_never_panic(v in json_value()) {
            let _ = validate_schema(&v);
            if validate_schema(&v).is_empty() {
                let _ = validate_semantics(&v);
            }
        }

        #[test]
        fn tokenize_round_trips(text in "\\PC{0,60}") {
            prop_assert_eq!(tokenize(&text).concat(), text);
        }
    }
}
