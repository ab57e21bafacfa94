//! Mistral chat completions (streaming SSE), also an OpenAI-compatible client (vLLM, llama.cpp
//! server, Ollama) with another base URL, key and [`Dialect`].
//!
//! - [`MistralModel`] implements [`ChatModel`]: it maps a [`ChatRequest`] to Mistral's body
//!   (message-order rules, 9-character tool-call ids, `random_seed`, no unknown fields), streams
//!   `chat.completion.chunk` events and yields [`ChatChunk`]s.
//! - Retries (network errors, timeouts, 429, 5xx) happen before the first chunk reaches the
//!   caller; once text has been yielded a failure ends the stream with an `Err` (re-asking would
//!   repeat words already spoken). After the last retry the stream yields one `Err` and ends.
//! - Dropping the stream drops the HTTP response at once, which closes the connection.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::stream::{BoxStream, Stream, StreamExt};
use micdrop_core::agent::{ChatChunk, ChatMessage, ChatModel, ChatRequest, ChatToolCall};
use micdrop_core::{AgentError, ProviderErrorKind};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use url::Url;

use crate::http::{join, reqwest_error, retry_after, status_error};
use crate::retry::RetryPolicy;
use crate::secret::ApiKey;

/// The default Mistral endpoint (the SDK's "EU Production server").
pub const MISTRAL_BASE_URL: &str = "https://api.mistral.ai";
/// The default Mistral model: `mistral-small-latest`, chosen for voice. A spoken answer waits for
/// the model's first token, and Mistral Small's time to first token on Mistral's API (≈0.3 s) is
/// well below Mistral Large's (≈0.5 s and more); Small follows system prompts, speaks French and
/// calls tools well enough for voice agents, at a fraction of the price. Set `model =
/// "mistral-medium-latest"` or `"mistral-large-latest"` for harder reasoning, at the cost of a
/// slower first word (see `docs/providers.md`).
pub const MISTRAL_DEFAULT_MODEL: &str = "mistral-small-latest";

/// Which flavour of the chat-completions API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Mistral: `random_seed`, `safe_prompt`, strict message order and 9-character tool ids.
    #[default]
    Mistral,
    /// OpenAI-compatible servers: `seed` instead of `random_seed`, no `safe_prompt`. Message
    /// order and tool ids are normalized the same way (harmless, and needed when the server
    /// runs a Mistral model).
    OpenAi,
}

/// Generation settings (all optional: the server's defaults apply).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatSettings {
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Maximum tokens of the answer.
    pub max_tokens: Option<u32>,
    /// Seed (`random_seed` for Mistral, `seed` for OpenAI-compatible servers).
    pub random_seed: Option<u64>,
    /// Mistral's `safe_prompt` (ignored for OpenAI-compatible servers).
    pub safe_prompt: Option<bool>,
    /// `tool_choice` when tools are offered (`auto`, `any`, `none`, `required`).
    pub tool_choice: Option<String>,
    /// `parallel_tool_calls` when tools are offered.
    pub parallel_tool_calls: Option<bool>,
    /// `presence_penalty`.
    pub presence_penalty: Option<f64>,
    /// `frequency_penalty`.
    pub frequency_penalty: Option<f64>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Extra body fields, sent as given (Mistral rejects unknown fields with 422: use only
    /// documented ones, such as `prompt_mode` or `reasoning_effort`).
    pub extra: Map<String, Value>,
}

/// Everything a [`MistralModel`] needs.
#[derive(Debug, Clone)]
pub struct MistralOptions {
    /// Name for logs and errors (`mistral`, `openai-compatible`, ...).
    pub name: String,
    /// Dialect of the server.
    pub dialect: Dialect,
    /// Base URL: the server root (`https://api.mistral.ai`), or a URL ending in `/v1`
    /// (`http://127.0.0.1:11434/v1`); `/v1/chat/completions` is completed accordingly.
    pub base_url: Url,
    /// Bearer key (none for a local server without auth).
    pub api_key: Option<ApiKey>,
    /// Model name.
    pub model: String,
    /// Generation settings.
    pub settings: ChatSettings,
    /// Retries.
    pub retry: RetryPolicy,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Time from sending the request to the first SSE event.
    pub first_token_timeout: Duration,
    /// Longest silence between two SSE events once streaming.
    pub idle_timeout: Duration,
}

impl MistralOptions {
    /// Mistral's defaults with `api_key`.
    pub fn mistral(api_key: Option<ApiKey>) -> Self {
        Self {
            name: "mistral".into(),
            dialect: Dialect::Mistral,
            base_url: Url::parse(MISTRAL_BASE_URL).expect("valid constant URL"),
            api_key,
            model: MISTRAL_DEFAULT_MODEL.into(),
            settings: ChatSettings::default(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            first_token_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
        }
    }

    /// The chat-completions URL.
    pub fn endpoint(&self) -> Url {
        let path = self.base_url.path().trim_end_matches('/');
        if path.ends_with("/v1") {
            join(&self.base_url, "chat/completions")
        } else {
            join(&self.base_url, "v1/chat/completions")
        }
    }
}

/// A chat model over Mistral's (or an OpenAI-compatible) chat-completions API.
#[derive(Debug, Clone)]
pub struct MistralModel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: MistralOptions,
    endpoint: Url,
    client: reqwest::Client,
}

impl MistralModel {
    /// A model with `options`.
    pub fn new(options: MistralOptions) -> Result<Self, AgentError> {
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|e| {
                AgentError::new(&options.name, ProviderErrorKind::Config(e.to_string()))
            })?;
        let endpoint = options.endpoint();
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                endpoint,
                client,
            }),
        })
    }

    /// The options.
    pub fn options(&self) -> &MistralOptions {
        &self.inner.options
    }

    /// The JSON body sent for `request` (streaming).
    pub fn request_body(&self, request: &ChatRequest) -> Value {
        build_body(&self.inner.options, request)
    }
}

impl ChatModel for MistralModel {
    fn name(&self) -> &str {
        &self.inner.options.name
    }

    fn stream(&self, request: ChatRequest) -> BoxStream<'static, Result<ChatChunk, AgentError>> {
        let body = build_body(&self.inner.options, &request);
        let driver = Driver {
            inner: self.inner.clone(),
            body: Arc::new(body),
            retries: 0,
            yielded: false,
            got_event: false,
            events: None,
            parser: StreamParser::default(),
            queue: VecDeque::new(),
            done: false,
        };
        futures::stream::unfold(driver, |d| d.next()).boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// Request mapping
// ---------------------------------------------------------------------------------------------

/// Placeholder content of the assistant message inserted between a tool result and a user
/// message (Mistral refuses `user` right after `tool`, and may refuse an empty assistant).
pub const BRIDGE_ASSISTANT_CONTENT: &str = ".";

/// Builds the request body: model, normalized messages, tools and settings.
pub fn build_body(options: &MistralOptions, request: &ChatRequest) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(options.model));
    body.insert(
        "messages".into(),
        Value::Array(normalize_messages(&request.messages)),
    );
    body.insert("stream".into(), json!(true));
    let s = &options.settings;
    if let Some(t) = s.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(t) = s.top_p {
        body.insert("top_p".into(), json!(t));
    }
    if let Some(t) = s.max_tokens {
        body.insert("max_tokens".into(), json!(t));
    }
    if let Some(seed) = s.random_seed {
        let key = match options.dialect {
            Dialect::Mistral => "random_seed",
            Dialect::OpenAi => "seed",
        };
        body.insert(key.into(), json!(seed));
    }
    if let (Some(sp), Dialect::Mistral) = (s.safe_prompt, options.dialect) {
        body.insert("safe_prompt".into(), json!(sp));
    }
    if let Some(p) = s.presence_penalty {
        body.insert("presence_penalty".into(), json!(p));
    }
    if let Some(p) = s.frequency_penalty {
        body.insert("frequency_penalty".into(), json!(p));
    }
    if !s.stop.is_empty() {
        body.insert("stop".into(), json!(s.stop));
    }
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let parameters = match &t.parameters {
                    Value::Object(_) => t.parameters.clone(),
                    _ => json!({"type": "object", "properties": {}}),
                };
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": parameters,
                    }
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        if let Some(c) = &s.tool_choice {
            body.insert("tool_choice".into(), json!(c));
        }
        if let Some(p) = s.parallel_tool_calls {
            body.insert("parallel_tool_calls".into(), json!(p));
        }
    }
    for (k, v) in &s.extra {
        body.insert(k.clone(), v.clone());
    }
    Value::Object(body)
}

/// Whether `id` is a valid Mistral tool-call id (`[a-zA-Z0-9]{9}`).
pub fn is_mistral_tool_id(id: &str) -> bool {
    id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Maps any tool-call id to a valid Mistral id. Valid ids are kept; others are hashed to 9
/// alphanumeric characters, deterministically (the same id maps to the same value in every
/// request of a conversation, in every process).
pub fn mistral_tool_id(id: &str) -> String {
    if is_mistral_tool_id(id) {
        return id.to_owned();
    }
    hashed_id(id, 0)
}

fn hashed_id(id: &str, salt: u64) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    // FNV-1a 64: stable across processes, unlike std's RandomState.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut out = String::with_capacity(9);
    for _ in 0..9 {
        out.push(ALPHABET[(h % 62) as usize] as char);
        h /= 62;
        // Refill entropy for the last characters.
        if h == 0 {
            h = 0x9e37_79b9_7f4a_7c15;
        }
    }
    out
}

/// Maps the conversation's ids to Mistral ids, resolving the (astronomically rare) collision of
/// two different ids on the same hash.
struct IdMap {
    map: HashMap<String, String>,
    used: HashMap<String, String>,
}

impl IdMap {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
            used: HashMap::new(),
        }
    }

    fn get(&mut self, id: &str) -> String {
        if let Some(v) = self.map.get(id) {
            return v.clone();
        }
        let mut candidate = mistral_tool_id(id);
        let mut salt = 1;
        while self.used.get(&candidate).is_some_and(|orig| orig != id) {
            candidate = hashed_id(id, salt);
            salt += 1;
        }
        self.used.insert(candidate.clone(), id.to_owned());
        self.map.insert(id.to_owned(), candidate.clone());
        candidate
    }
}

/// The content of the tool message given to a tool call that has no result (an answer cancelled
/// by a barge-in while its tool ran): Mistral refuses a request whose tool calls lack results.
pub use micdrop_core::conversation::CANCELLED_TOOL_OUTPUT;

/// Maps the messages to Mistral's rules (api.mistral.ai answers 400 otherwise):
/// - system messages only in the leading block (later ones become user messages);
/// - assistant messages without text and tool calls are dropped; an assistant message never has
///   both: text and tool calls become two assistant messages (the text, then the calls with
///   `"content": ""`), as Micdrop's `MistralAgent` sends them; consecutive tool-call messages
///   are merged;
/// - every tool call has its tool message right after its assistant message: a result found
///   later in the conversation is moved there, a missing one becomes
///   [`CANCELLED_TOOL_OUTPUT`]; a tool message without its call is dropped;
/// - a user message right after a tool result gets an assistant message before it (the case
///   of a skip-answer tool: the conversation ends with a tool result);
/// - the last message must be a user or tool message: an empty user message is appended after
///   a lone system prompt or a trailing assistant message (as Micdrop's `MistralAgent` does);
/// - tool-call ids become 9 alphanumeric characters, consistently within the request.
///
/// The same rules hold whatever was removed from the conversation before (e.g. the user message
/// removed by `ignore_user_noise`).
pub fn normalize_messages(messages: &[ChatMessage]) -> Vec<Value> {
    #[derive(Debug)]
    enum M {
        System(String),
        User(String),
        Assistant(String),
        Calls(Vec<ChatToolCall>),
        Tool(String, String, String),
    }
    // Results by call id (the first one wins), to place each after its call.
    let mut results: HashMap<&str, (&str, &str)> = HashMap::new();
    for m in messages {
        if let ChatMessage::Tool {
            tool_call_id,
            name,
            content,
        } = m
        {
            results
                .entry(tool_call_id.as_str())
                .or_insert((name.as_str(), content.as_str()));
        }
    }
    let mut out: Vec<M> = Vec::with_capacity(messages.len() + 2);
    let mut in_leading_system = true;
    for m in messages {
        match m {
            ChatMessage::System(s) => {
                if in_leading_system {
                    out.push(M::System(s.clone()));
                } else {
                    out.push(M::User(s.clone()));
                }
                continue;
            }
            ChatMessage::User(s) => out.push(M::User(s.clone())),
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                if !content.trim().is_empty() {
                    out.push(M::Assistant(content.clone()));
                }
                if !tool_calls.is_empty() {
                    match out.last_mut() {
                        Some(M::Calls(prev)) => prev.extend(tool_calls.iter().cloned()),
                        _ => out.push(M::Calls(tool_calls.clone())),
                    }
                }
                if content.trim().is_empty() && tool_calls.is_empty() {
                    continue;
                }
            }
            // Placed after their calls below.
            ChatMessage::Tool { .. } => continue,
        }
        in_leading_system = false;
    }
    // Each call followed by its result (or a cancelled one); `tool` → `user` bridged.
    let mut bridged: Vec<M> = Vec::with_capacity(out.len() + 4);
    let mut answered: std::collections::HashSet<String> = std::collections::HashSet::new();
    for m in out {
        if matches!(m, M::User(_)) && matches!(bridged.last(), Some(M::Tool(..))) {
            bridged.push(M::Assistant(BRIDGE_ASSISTANT_CONTENT.into()));
        }
        match m {
            M::Calls(mut calls) => {
                // A call id seen twice would get two results: keep the first call.
                calls.retain(|c| answered.insert(c.id.clone()));
                if calls.is_empty() {
                    continue;
                }
                let tools: Vec<M> = calls
                    .iter()
                    .map(|c| match results.get(c.id.as_str()) {
                        Some((name, content)) => {
                            M::Tool(c.id.clone(), (*name).to_owned(), (*content).to_owned())
                        }
                        None => M::Tool(
                            c.id.clone(),
                            c.name.clone(),
                            CANCELLED_TOOL_OUTPUT.to_owned(),
                        ),
                    })
                    .collect();
                bridged.push(M::Calls(calls));
                bridged.extend(tools);
            }
            other => bridged.push(other),
        }
    }
    match bridged.last() {
        None | Some(M::System(_)) | Some(M::Assistant(_)) => {
            bridged.push(M::User(String::new()));
        }
        _ => {}
    }
    let mut ids = IdMap::new();
    bridged
        .into_iter()
        .map(|m| match m {
            M::System(s) => json!({"role": "system", "content": s}),
            M::User(s) => json!({"role": "user", "content": s}),
            M::Assistant(content) => json!({"role": "assistant", "content": content}),
            M::Calls(calls) => {
                let calls: Vec<Value> = calls
                    .iter()
                    .map(|c| {
                        let args = if c.arguments.trim().is_empty() {
                            "{}".to_owned()
                        } else {
                            c.arguments.clone()
                        };
                        json!({
                            "id": ids.get(&c.id),
                            "type": "function",
                            "function": {"name": c.name, "arguments": args},
                        })
                    })
                    .collect();
                json!({"role": "assistant", "content": "", "tool_calls": calls})
            }
            M::Tool(id, name, content) => json!({
                "role": "tool",
                "tool_call_id": ids.get(&id),
                "name": name,
                "content": content,
            }),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Stream parsing
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChoice>,
}

#[derive(Debug, Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Debug, Default, Clone)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Incremental parser of a chat-completions SSE stream (the `data:` payloads).
///
/// Text deltas come out at once; tool calls are merged by `index` (whole calls as Mistral sends
/// them, or OpenAI-style pieces) and come out when the stream finishes.
#[derive(Debug, Default)]
pub struct StreamParser {
    calls: BTreeMap<usize, PartialCall>,
    next_index: usize,
    finish_reason: Option<String>,
    done: bool,
}

/// What the parser made of one `data:` payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Chunks to pass on (possibly none).
    Chunks(Vec<ChatChunk>),
    /// `[DONE]`: the stream is over; the chunks are the collected tool calls.
    Done(Vec<ChatChunk>),
}

impl StreamParser {
    /// Parses one `data:` payload.
    pub fn feed(&mut self, data: &str) -> Result<Parsed, String> {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(Parsed::Done(self.take_calls()));
        }
        let chunk: WireChunk = serde_json::from_str(data).map_err(|e| {
            format!(
                "malformed stream chunk ({e}): {}",
                crate::http::truncate(data, 200)
            )
        })?;
        let mut out = Vec::new();
        for choice in chunk.choices {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                if let Some(content) = delta.content {
                    let text = content_text(&content);
                    if !text.is_empty() {
                        out.push(ChatChunk::Text(text));
                    }
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    self.merge_call(call);
                }
            }
            if let Some(reason) = choice.finish_reason {
                if reason == "error" {
                    return Err("the model reported finish_reason \"error\"".into());
                }
                self.finish_reason = Some(reason);
            }
        }
        Ok(Parsed::Chunks(out))
    }

    /// Whether a `finish_reason` arrived (the answer is complete even without `[DONE]`).
    pub fn finished(&self) -> bool {
        self.finish_reason.is_some() || self.done
    }

    /// The `finish_reason`, if any.
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_deref()
    }

    /// The tool calls collected so far (ids kept as the model gave them; a missing id gets a
    /// generated Mistral-style id).
    pub fn take_calls(&mut self) -> Vec<ChatChunk> {
        std::mem::take(&mut self.calls)
            .into_values()
            .filter(|c| !c.name.is_empty())
            .map(|c| {
                let id = if c.id.is_empty() {
                    random_tool_id()
                } else {
                    c.id
                };
                ChatChunk::ToolCall(ChatToolCall {
                    id,
                    name: c.name,
                    arguments: if c.arguments.trim().is_empty() {
                        "{}".into()
                    } else {
                        c.arguments
                    },
                })
            })
            .collect()
    }

    fn merge_call(&mut self, call: WireToolCall) {
        let id = call.id.filter(|s| !s.is_empty());
        let index = match call.index {
            Some(i) => i,
            // No index (Mistral 2026): a new id is a new call; a piece without an id continues
            // the last call.
            None => match &id {
                Some(id) => self
                    .calls
                    .iter()
                    .find(|(_, c)| &c.id == id)
                    .map(|(i, _)| *i)
                    .unwrap_or(self.next_index),
                None => self
                    .calls
                    .keys()
                    .next_back()
                    .copied()
                    .unwrap_or(self.next_index),
            },
        };
        self.next_index = self.next_index.max(index + 1);
        let entry = self.calls.entry(index).or_default();
        if let Some(id) = id {
            entry.id = id;
        }
        if let Some(f) = call.function {
            if let Some(n) = f.name.filter(|n| !n.is_empty()) {
                entry.name = n;
            }
            match f.arguments {
                Some(Value::String(s)) => entry.arguments.push_str(&s),
                Some(Value::Null) | None => {}
                Some(other) => entry.arguments.push_str(&other.to_string()),
            }
        }
    }
}

/// The spoken text of a delta's `content`: a string, or the `text` parts of an array
/// (reasoning models' `thinking` parts are skipped).
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// A random Mistral-style tool-call id.
pub fn random_tool_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..9)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The streaming driver
// ---------------------------------------------------------------------------------------------

type EventStream = Pin<
    Box<
        dyn Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

struct Driver {
    inner: Arc<Inner>,
    body: Arc<Value>,
    retries: u32,
    /// A chunk reached the caller: no more transparent retries.
    yielded: bool,
    /// An SSE event arrived on the current attempt (first-token timeout satisfied).
    got_event: bool,
    events: Option<EventStream>,
    parser: StreamParser,
    queue: VecDeque<ChatChunk>,
    done: bool,
}

enum Step {
    Retry(ProviderErrorKind, Option<Duration>),
    Fatal(ProviderErrorKind),
}

impl Driver {
    fn err(&self, kind: ProviderErrorKind) -> AgentError {
        AgentError::new(&self.inner.options.name, kind)
    }

    async fn next(mut self) -> Option<(Result<ChatChunk, AgentError>, Self)> {
        loop {
            if let Some(c) = self.queue.pop_front() {
                self.yielded = true;
                return Some((Ok(c), self));
            }
            if self.done {
                return None;
            }
            let step = if self.events.is_none() {
                match connect(self.inner.clone(), self.body.clone()).await {
                    Ok(es) => {
                        self.events = Some(es);
                        self.got_event = false;
                        continue;
                    }
                    Err(step) => step,
                }
            } else {
                match self.read_event().await {
                    Ok(()) => continue,
                    Err(step) => step,
                }
            };
            // A failure: retry transparently if nothing reached the caller yet.
            self.events = None;
            match step {
                Step::Retry(kind, hint)
                    if !self.yielded && self.inner.options.retry.allows(self.retries) =>
                {
                    let delay = self.inner.options.retry.delay_with_hint(self.retries, hint);
                    micdrop_core::telemetry::provider_error(&self.inner.options.name, "llm");
                    micdrop_core::telemetry::provider_retry(&self.inner.options.name, "llm");
                    tracing::warn!(
                        model = %self.inner.options.name,
                        error = %kind,
                        retry = self.retries + 1,
                        delay_ms = delay.as_millis() as u64,
                        "chat request failed; retrying"
                    );
                    self.retries += 1;
                    self.parser = StreamParser::default();
                    tokio::time::sleep(delay).await;
                }
                Step::Retry(kind, _) => {
                    micdrop_core::telemetry::provider_error(&self.inner.options.name, "llm");
                    self.done = true;
                    let kind = if self.yielded {
                        kind
                    } else {
                        ProviderErrorKind::Exhausted {
                            attempts: self.retries + 1,
                            last: kind.to_string(),
                        }
                    };
                    return Some((Err(self.err(kind)), self));
                }
                Step::Fatal(kind) => {
                    micdrop_core::telemetry::provider_error(&self.inner.options.name, "llm");
                    self.done = true;
                    return Some((Err(self.err(kind)), self));
                }
            }
        }
    }
}

async fn connect(inner: Arc<Inner>, body: Arc<Value>) -> Result<EventStream, Step> {
    {
        let o = &inner.options;
        micdrop_core::telemetry::provider_request(&o.name, "llm");
        let mut req = inner
            .client
            .post(inner.endpoint.clone())
            .header(http::header::ACCEPT, "text/event-stream")
            .json(&*body);
        if let Some(key) = &o.api_key {
            req = req.bearer_auth(key.expose());
        }
        let resp = match tokio::time::timeout(o.first_token_timeout, req.send()).await {
            Err(_) => {
                return Err(Step::Retry(
                    ProviderErrorKind::Timeout(format!(
                        "no response within {} ms",
                        o.first_token_timeout.as_millis()
                    )),
                    None,
                ));
            }
            Ok(Err(e)) => return Err(Step::Retry(reqwest_error(&e), None)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_success() {
            let es: EventStream = Box::pin(resp.bytes_stream().eventsource());
            return Ok(es);
        }
        let hint = retry_after(resp.headers());
        let body = tokio::time::timeout(Duration::from_secs(5), resp.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let kind = status_error(status.as_u16(), &body);
        if kind.is_retryable() {
            Err(Step::Retry(kind, hint))
        } else {
            Err(Step::Fatal(kind))
        }
    }
}

impl Driver {
    async fn read_event(&mut self) -> Result<(), Step> {
        let o = &self.inner.options;
        let timeout = if self.got_event {
            o.idle_timeout
        } else {
            o.first_token_timeout
        };
        let Some(events) = self.events.as_mut() else {
            return Ok(());
        };
        match tokio::time::timeout(timeout, events.next()).await {
            Err(_) => Err(Step::Retry(
                ProviderErrorKind::Timeout(format!(
                    "no stream event within {} ms",
                    timeout.as_millis()
                )),
                None,
            )),
            Ok(None) => {
                if self.parser.finished() {
                    self.queue.extend(self.parser.take_calls());
                    self.done = true;
                    self.events = None;
                    Ok(())
                } else {
                    Err(Step::Retry(
                        ProviderErrorKind::Network(
                            "stream ended before the answer was complete".into(),
                        ),
                        None,
                    ))
                }
            }
            Ok(Some(Err(e))) => Err(Step::Retry(
                match e {
                    eventsource_stream::EventStreamError::Transport(e) => reqwest_error(&e),
                    other => ProviderErrorKind::Protocol(other.to_string()),
                },
                None,
            )),
            Ok(Some(Ok(ev))) => {
                self.got_event = true;
                if ev.data.trim().is_empty() {
                    return Ok(());
                }
                match self.parser.feed(&ev.data) {
                    Ok(Parsed::Chunks(chunks)) => {
                        self.queue.extend(chunks);
                        Ok(())
                    }
                    Ok(Parsed::Done(calls)) => {
                        self.queue.extend(calls);
                        self.done = true;
                        self.events = None;
                        Ok(())
                    }
                    Err(e) => Err(Step::Retry(ProviderErrorKind::Protocol(e), None)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
