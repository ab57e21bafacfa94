//! The agent layer, provider-independent: tools, the tool loop, automatic tools, `extract`,
//! the `on_before_answer` hook. An [`Agent`] turns a conversation into a stream of
//! [`AgentEvent`]s using any [`ChatModel`].

mod extract;
mod model;

use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

pub use extract::{Extract, ExtractCallback};
pub use model::{ChatChunk, ChatMessage, ChatModel, ChatRequest, ChatToolCall, ToolSpec};

use crate::conversation::{ConversationItem, Role};
use crate::error::AgentError;
use crate::protocol::ToolCallOutput;
use extract::ExtractStream;

/// Default number of model steps per answer (a step is one model request).
pub const DEFAULT_MAX_STEPS: usize = 5;

/// Name of the automatic end-of-call tool.
pub const END_CALL_TOOL: &str = "end_call";
/// Name of the automatic semantic-turn tool.
pub const SEMANTIC_TURN_TOOL: &str = "semantic_turn";
/// Name of the automatic noise tool.
pub const IGNORE_USER_NOISE_TOOL: &str = "ignore_user_noise";

/// Default description of `end_call`.
pub const END_CALL_DESCRIPTION: &str = "End the call. Call this tool only when the user says goodbye or explicitly asks to end the call.";
/// Default description of `semantic_turn`.
pub const SEMANTIC_TURN_DESCRIPTION: &str = "Call this tool only if the last user message is obviously incomplete (cut in the middle of a sentence), so that you wait for the user to finish instead of answering.";
/// Default description of `ignore_user_noise`.
pub const IGNORE_USER_NOISE_DESCRIPTION: &str = "Call this tool only if the last user message is empty or contains only noise or filler sounds (like \"uh\", \"um\", \"hmm\"), so that it is ignored.";

/// The async handler of a tool: receives the parsed arguments, returns the output or an error
/// message (given back to the model as `{"error": message}`).
pub type ToolHandler =
    Arc<dyn Fn(Value) -> BoxFuture<'static, Result<Value, String>> + Send + Sync>;

tokio::task_local! {
    static CALL_ID: Arc<str>;
}

/// Runs `fut` (an answer, a tool handler) on behalf of the call `call_id`: inside it,
/// [`current_call_id`] returns that id. The call engine wraps each answer with it, so that tool
/// handlers can tell their callee which call they serve (webhooks send `X-Micdrop-Call-Id`).
pub async fn scope_call_id<F: std::future::Future>(
    call_id: impl Into<Arc<str>>,
    fut: F,
) -> F::Output {
    CALL_ID.scope(call_id.into(), fut).await
}

/// The id of the call this task works for (inside [`scope_call_id`]), if any.
pub fn current_call_id() -> Option<Arc<str>> {
    CALL_ID.try_with(Arc::clone).ok()
}

/// The value extracted by the last assistant answer that carried one (`metadata.extracted`,
/// see [`Extract`]), e.g. from a call's end conversation.
pub fn last_extracted(conversation: &[ConversationItem]) -> Option<&Value> {
    conversation.iter().rev().find_map(|item| match item {
        ConversationItem::Assistant {
            metadata: Some(m), ..
        } => m.get("extracted"),
        _ => None,
    })
}

/// A tool the model may call.
#[derive(Clone)]
pub struct Tool {
    /// Name.
    pub name: String,
    /// Description for the model.
    pub description: String,
    /// JSON Schema of the parameters.
    pub parameters: Value,
    /// The handler (none: the output is `null`).
    pub handler: Option<ToolHandler>,
    /// Stop the answer after this tool runs (no follow-up model step).
    pub skip_answer: bool,
    /// Send a `ToolCall` frame with the output to the client.
    pub emit_output: bool,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("skip_answer", &self.skip_answer)
            .field("emit_output", &self.emit_output)
            .finish()
    }
}

impl Tool {
    /// A tool with no parameters and no handler.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            parameters: json!({"type": "object", "properties": {}}),
            handler: None,
            skip_answer: false,
            emit_output: false,
        }
    }

    /// Sets the JSON Schema of the parameters.
    pub fn parameters(mut self, schema: Value) -> Self {
        self.parameters = schema;
        self
    }

    /// Sets the async handler.
    pub fn handler<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Value, String>> + Send + 'static,
    {
        self.handler = Some(Arc::new(move |v| Box::pin(f(v))));
        self
    }

    /// Stops the answer after the tool runs.
    pub fn skip_answer(mut self, yes: bool) -> Self {
        self.skip_answer = yes;
        self
    }

    /// Sends the output to the client as a `ToolCall` frame.
    pub fn emit_output(mut self, yes: bool) -> Self {
        self.emit_output = yes;
        self
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            parameters: self.parameters.clone(),
        }
    }
}

/// What the `on_before_answer` hook decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeforeAnswer {
    /// Generate the answer with the model.
    Continue,
    /// Do not answer (the client gets `SkipAnswer`).
    Skip,
    /// Answer with this text instead of calling the model.
    Answer(String),
}

/// The hook run before each answer, with the conversation so far.
pub type BeforeAnswerHook =
    Arc<dyn Fn(Vec<ConversationItem>) -> BoxFuture<'static, BeforeAnswer> + Send + Sync>;

/// What an answer produces, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// Text to speak (extracted data withheld), as the model writes it.
    Text(String),
    /// A settled conversation item (assistant answer, tool call, tool result).
    Message(ConversationItem),
    /// The last user message was noise: remove it.
    CancelLastUserMessage,
    /// The agent asked to end the call.
    EndCall,
    /// A tool with `emit_output` ran.
    ToolCall(ToolCallOutput),
    /// The model failed (after its retries); the answer ends.
    Failed(AgentError),
}

/// A provider-independent agent: a model, a system prompt, tools and options.
/// Cheap to clone (shared by every call of a server).
#[derive(Clone)]
pub struct Agent {
    model: Arc<dyn ChatModel>,
    system_prompt: String,
    tools: Vec<Tool>,
    extract: Option<Extract>,
    on_before_answer: Option<BeforeAnswerHook>,
    max_steps: usize,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("model", &self.model.name())
            .field("tools", &self.tools)
            .field("extract", &self.extract)
            .field("max_steps", &self.max_steps)
            .finish()
    }
}

impl Agent {
    /// An agent using `model` with a system prompt.
    pub fn new(model: Arc<dyn ChatModel>, system_prompt: impl Into<String>) -> Self {
        Self {
            model,
            system_prompt: system_prompt.into(),
            tools: Vec::new(),
            extract: None,
            on_before_answer: None,
            max_steps: DEFAULT_MAX_STEPS,
        }
    }

    /// The system prompt (the first item of every call's conversation).
    pub fn system_prompt(&self) -> &str {
        &self.system_prompt
    }

    /// Replaces the system prompt (e.g. one rendered from a call's params).
    pub fn with_system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.system_prompt = prompt.into();
        self
    }

    /// The model's name.
    pub fn model_name(&self) -> &str {
        self.model.name()
    }

    /// The tools.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// Adds a tool (replacing one of the same name).
    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.retain(|t| t.name != tool.name);
        self.tools.push(tool);
        self
    }

    /// Removes a tool by name.
    pub fn remove_tool(mut self, name: &str) -> Self {
        self.tools.retain(|t| t.name != name);
        self
    }

    /// Adds the `end_call` tool (`description` overrides the default).
    pub fn auto_end_call(self, description: Option<&str>) -> Self {
        self.tool(Tool::new(
            END_CALL_TOOL,
            description.unwrap_or(END_CALL_DESCRIPTION),
        ))
    }

    /// Adds the `semantic_turn` tool (skip-answer).
    pub fn auto_semantic_turn(self, description: Option<&str>) -> Self {
        self.tool(
            Tool::new(
                SEMANTIC_TURN_TOOL,
                description.unwrap_or(SEMANTIC_TURN_DESCRIPTION),
            )
            .skip_answer(true),
        )
    }

    /// Adds the `ignore_user_noise` tool (skip-answer; removes the last user message).
    pub fn auto_ignore_user_noise(self, description: Option<&str>) -> Self {
        self.tool(
            Tool::new(
                IGNORE_USER_NOISE_TOOL,
                description.unwrap_or(IGNORE_USER_NOISE_DESCRIPTION),
            )
            .skip_answer(true),
        )
    }

    /// Sets the extract option.
    pub fn extract(mut self, extract: Extract) -> Self {
        self.extract = Some(extract);
        self
    }

    /// Sets the hook run before each answer.
    pub fn on_before_answer<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Vec<ConversationItem>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = BeforeAnswer> + Send + 'static,
    {
        self.on_before_answer = Some(Arc::new(move |c| Box::pin(f(c))));
        self
    }

    /// Sets the maximum number of model steps per answer (default 5).
    pub fn max_steps(mut self, n: usize) -> Self {
        self.max_steps = n.max(1);
        self
    }

    /// Splits an answer's text with the extract option (message, extracted value).
    pub fn split_extract(&self, text: &str) -> (String, Option<Value>) {
        match &self.extract {
            Some(e) => e.split(text),
            None => (text.to_owned(), None),
        }
    }

    /// The assistant item for a whole answer text (extract applied), or `None` for blank text.
    pub fn assistant_item(&self, text: &str) -> Option<ConversationItem> {
        let (content, extracted) = self.split_extract(text);
        if let (Some(value), Some(e)) = (&extracted, &self.extract) {
            if let Some(cb) = &e.callback {
                cb(value.clone());
            }
        }
        if content.trim().is_empty() && extracted.is_none() {
            return None;
        }
        let metadata = match (&self.extract, extracted) {
            (Some(e), Some(value)) if e.save_in_metadata => {
                let mut m = Map::new();
                m.insert("extracted".into(), value);
                Some(m)
            }
            _ => None,
        };
        Some(ConversationItem::Assistant { content, metadata })
    }

    /// Runs one answer over `conversation`, sending events to `events`. Ends when the answer is
    /// complete; dropping the future cancels it (and the model request with it). Emits no text
    /// when the answer is skipped, empty or failed.
    pub async fn answer(
        &self,
        mut conversation: Vec<ConversationItem>,
        events: mpsc::Sender<AgentEvent>,
    ) {
        if let Some(hook) = &self.on_before_answer {
            match hook(conversation.clone()).await {
                BeforeAnswer::Continue => {}
                BeforeAnswer::Skip => return,
                BeforeAnswer::Answer(text) => {
                    self.finish_text(&text, true, &events).await;
                    return;
                }
            }
        }
        // Like Micdrop's agents, tools are not offered for a greeting generated from the
        // system prompt alone.
        let only_system = conversation.iter().all(|i| i.role() == Role::System);
        for step in 0..self.max_steps {
            let tools: Vec<ToolSpec> = if only_system {
                Vec::new()
            } else {
                self.tools.iter().map(Tool::spec).collect()
            };
            let request = ChatRequest::from_conversation(&conversation, tools);
            // The model request's span (a child of the turn's: the answer runs in it); its
            // outcome is `cancelled` if the answer is dropped before the request ends.
            let traced = crate::trace::Stage::new(tracing::info_span!(
                "llm.request",
                provider = self.model.name(),
                step = crate::trace::int(step),
                outcome = tracing::field::Empty,
                tool_calls = tracing::field::Empty,
            ));
            let mut stream = self.model.stream(request);
            let mut extractor = ExtractStream::new(self.extract.as_ref());
            let mut calls = Vec::new();
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(ChatChunk::Text(delta)) => {
                        let speak = extractor.push(&delta);
                        if !speak.is_empty() && events.send(AgentEvent::Text(speak)).await.is_err()
                        {
                            return;
                        }
                    }
                    Ok(ChatChunk::ToolCall(call)) => calls.push(call),
                    Err(error) => {
                        traced.finish("failed");
                        let _ = events.send(AgentEvent::Failed(error)).await;
                        return;
                    }
                }
            }
            drop(stream);
            traced
                .span()
                .record("tool_calls", crate::trace::int(calls.len()));
            traced.finish(if calls.is_empty() {
                "text"
            } else {
                "tool_calls"
            });
            let rest = extractor.flush();
            if !rest.is_empty() && events.send(AgentEvent::Text(rest)).await.is_err() {
                return;
            }
            if calls.is_empty() {
                self.finish_text(extractor.text(), false, &events).await;
                return;
            }
            if let Some(item) = self.assistant_item(extractor.text()) {
                conversation.push(item.clone());
                let _ = events.send(AgentEvent::Message(item)).await;
            }
            let mut skip = false;
            for call in calls {
                skip |= self.run_tool(call, &mut conversation, &events).await;
            }
            if skip {
                return;
            }
        }
        tracing::warn!(
            max_steps = self.max_steps,
            "agent stopped after its maximum steps"
        );
    }

    async fn finish_text(&self, text: &str, speak: bool, events: &mpsc::Sender<AgentEvent>) {
        let Some(item) = self.assistant_item(text) else {
            return;
        };
        if speak {
            let spoken = item.content().unwrap_or_default().to_owned();
            if !spoken.is_empty() {
                let _ = events.send(AgentEvent::Text(spoken)).await;
            }
        }
        let _ = events.send(AgentEvent::Message(item)).await;
    }

    /// Runs one tool call; returns whether the answer must stop (skip-answer tool).
    async fn run_tool(
        &self,
        call: ChatToolCall,
        conversation: &mut Vec<ConversationItem>,
        events: &mpsc::Sender<AgentEvent>,
    ) -> bool {
        let tool = self.tools.iter().find(|t| t.name == call.name);
        let call_item = ConversationItem::ToolCall {
            tool_call_id: call.id.clone(),
            tool_name: call.name.clone(),
            parameters: call.arguments.clone(),
        };
        conversation.push(call_item.clone());
        let _ = events.send(AgentEvent::Message(call_item)).await;
        let args: Value = if call.arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(&call.arguments).unwrap_or(Value::Null)
        };
        let output = match tool {
            None => json!({"error": format!("Unknown tool: {}", call.name)}),
            Some(tool) if args.is_null() => {
                let _ = tool;
                json!({"error": "Invalid JSON arguments"})
            }
            Some(tool) => match &tool.handler {
                None => Value::Null,
                Some(handler) => match handler(args.clone()).await {
                    Ok(v) => v,
                    Err(message) => json!({ "error": message }),
                },
            },
        };
        let result_item = ConversationItem::ToolResult {
            tool_call_id: call.id.clone(),
            tool_name: call.name.clone(),
            output: output.to_string(),
        };
        conversation.push(result_item.clone());
        let _ = events.send(AgentEvent::Message(result_item)).await;
        let Some(tool) = tool else {
            return false;
        };
        if tool.emit_output {
            let _ = events
                .send(AgentEvent::ToolCall(ToolCallOutput {
                    name: call.name.clone(),
                    parameters: args,
                    output,
                }))
                .await;
        }
        match tool.name.as_str() {
            END_CALL_TOOL => {
                let _ = events.send(AgentEvent::EndCall).await;
            }
            IGNORE_USER_NOISE_TOOL => {
                if let Some(pos) = conversation.iter().rposition(|i| i.role() == Role::User) {
                    conversation.remove(pos);
                }
                let _ = events.send(AgentEvent::CancelLastUserMessage).await;
            }
            _ => {}
        }
        tool.skip_answer
    }
}
