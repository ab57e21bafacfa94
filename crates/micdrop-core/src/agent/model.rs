//! The chat model trait: what an LLM provider implements (Mistral, any OpenAI-compatible
//! endpoint, the testkit's scripted model). The [`Agent`](super::Agent) runs the tool loop on top.

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conversation::ConversationItem;
use crate::error::AgentError;

/// A tool as offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Name (`[a-zA-Z0-9_-]{1,64}`).
    pub name: String,
    /// What the tool does and when to call it.
    pub description: String,
    /// JSON Schema of the parameters (an object schema).
    pub parameters: Value,
}

/// A tool call made by the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatToolCall {
    /// The id the model gave (Mistral: 9 alphanumeric characters).
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// A message of a chat request, in the OpenAI/Mistral shape.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatMessage {
    /// System prompt.
    System(String),
    /// User message.
    User(String),
    /// Assistant message, possibly with tool calls.
    Assistant {
        /// Text (may be empty when there are tool calls).
        content: String,
        /// Tool calls made in this message.
        tool_calls: Vec<ChatToolCall>,
    },
    /// The result of a tool call.
    Tool {
        /// The call id.
        tool_call_id: String,
        /// The tool's name.
        name: String,
        /// The output as JSON text.
        content: String,
    },
}

/// A chat request: the whole conversation and the tools offered.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// Messages, system first.
    pub messages: Vec<ChatMessage>,
    /// Tools offered (empty: no tools).
    pub tools: Vec<ToolSpec>,
}

impl ChatRequest {
    /// Maps a Micdrop conversation to chat messages: consecutive `tool_call` items become one
    /// assistant message with `tool_calls`, each `tool_result` a tool message.
    pub fn from_conversation(items: &[ConversationItem], tools: Vec<ToolSpec>) -> Self {
        let mut messages: Vec<ChatMessage> = Vec::with_capacity(items.len());
        for item in items {
            match item {
                ConversationItem::System { content, .. } => {
                    messages.push(ChatMessage::System(content.clone()))
                }
                ConversationItem::User { content, .. } => {
                    messages.push(ChatMessage::User(content.clone()))
                }
                ConversationItem::Assistant { content, .. } => {
                    messages.push(ChatMessage::Assistant {
                        content: content.clone(),
                        tool_calls: Vec::new(),
                    })
                }
                ConversationItem::ToolCall {
                    tool_call_id,
                    tool_name,
                    parameters,
                } => {
                    let call = ChatToolCall {
                        id: tool_call_id.clone(),
                        name: tool_name.clone(),
                        arguments: parameters.clone(),
                    };
                    match messages.last_mut() {
                        Some(ChatMessage::Assistant { tool_calls, .. })
                            if !tool_calls.is_empty() =>
                        {
                            tool_calls.push(call)
                        }
                        _ => messages.push(ChatMessage::Assistant {
                            content: String::new(),
                            tool_calls: vec![call],
                        }),
                    }
                }
                ConversationItem::ToolResult {
                    tool_call_id,
                    tool_name,
                    output,
                } => messages.push(ChatMessage::Tool {
                    tool_call_id: tool_call_id.clone(),
                    name: tool_name.clone(),
                    content: output.clone(),
                }),
            }
        }
        ChatRequest { messages, tools }
    }
}

/// A piece of a streamed model answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatChunk {
    /// A text delta.
    Text(String),
    /// A whole tool call.
    ToolCall(ChatToolCall),
}

/// A chat model (object-safe). The stream ends when the model's answer ends; dropping it must
/// abort the request at once (close the HTTP stream). Retries happen inside the implementation;
/// an `Err` item means it gave up.
pub trait ChatModel: Send + Sync + 'static {
    /// A short name for logs (`mistral`, `openai-compatible`, ...).
    fn name(&self) -> &str;

    /// Streams the answer to `request`.
    fn stream(&self, request: ChatRequest) -> BoxStream<'static, Result<ChatChunk, AgentError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_tool_calls() {
        let items = vec![
            ConversationItem::system("s"),
            ConversationItem::user("u"),
            ConversationItem::ToolCall {
                tool_call_id: "a".into(),
                tool_name: "t".into(),
                parameters: "{}".into(),
            },
            ConversationItem::ToolCall {
                tool_call_id: "b".into(),
                tool_name: "t".into(),
                parameters: "{}".into(),
            },
            ConversationItem::ToolResult {
                tool_call_id: "a".into(),
                tool_name: "t".into(),
                output: "1".into(),
            },
        ];
        let r = ChatRequest::from_conversation(&items, vec![]);
        assert_eq!(r.messages.len(), 4);
        match &r.messages[2] {
            ChatMessage::Assistant { tool_calls, .. } => assert_eq!(tool_calls.len(), 2),
            m => panic!("unexpected {m:?}"),
        }
    }
}
