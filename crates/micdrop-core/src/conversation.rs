//! The conversation: the items of Micdrop's `MicdropConversationItem`, with their exact JSON shapes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One item of the conversation, serialized exactly as Micdrop does:
/// `{"role":"user","content":"…","metadata":{…}}`,
/// `{"role":"tool_call","toolCallId":"…","toolName":"…","parameters":"<json text>"}`,
/// `{"role":"tool_result","toolCallId":"…","toolName":"…","output":"<json text>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum ConversationItem {
    /// The system prompt.
    System {
        /// Text.
        content: String,
        /// Optional metadata.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<Map<String, Value>>,
    },
    /// A user transcript.
    User {
        /// Text.
        content: String,
        /// Optional metadata.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<Map<String, Value>>,
    },
    /// An assistant answer.
    Assistant {
        /// Text (extracted data cut off).
        content: String,
        /// Optional metadata (`extracted` when the extract option saves it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<Map<String, Value>>,
    },
    /// A tool call made by the model.
    ToolCall {
        /// The call id given by the model.
        #[serde(rename = "toolCallId")]
        tool_call_id: String,
        /// The tool's name.
        #[serde(rename = "toolName")]
        tool_name: String,
        /// The parameters, as JSON text.
        parameters: String,
    },
    /// The result of a tool call.
    ToolResult {
        /// The call id.
        #[serde(rename = "toolCallId")]
        tool_call_id: String,
        /// The tool's name.
        #[serde(rename = "toolName")]
        tool_name: String,
        /// The output, as JSON text.
        output: String,
    },
}

/// The role of a conversation item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// System prompt.
    System,
    /// User.
    User,
    /// Assistant.
    Assistant,
    /// Tool call.
    ToolCall,
    /// Tool result.
    ToolResult,
}

impl ConversationItem {
    /// A system item.
    pub fn system(content: impl Into<String>) -> Self {
        ConversationItem::System {
            content: content.into(),
            metadata: None,
        }
    }
    /// A user item.
    pub fn user(content: impl Into<String>) -> Self {
        ConversationItem::User {
            content: content.into(),
            metadata: None,
        }
    }
    /// An assistant item.
    pub fn assistant(content: impl Into<String>) -> Self {
        ConversationItem::Assistant {
            content: content.into(),
            metadata: None,
        }
    }

    /// The role of the item.
    pub fn role(&self) -> Role {
        match self {
            ConversationItem::System { .. } => Role::System,
            ConversationItem::User { .. } => Role::User,
            ConversationItem::Assistant { .. } => Role::Assistant,
            ConversationItem::ToolCall { .. } => Role::ToolCall,
            ConversationItem::ToolResult { .. } => Role::ToolResult,
        }
    }

    /// The text of a system, user or assistant item.
    pub fn content(&self) -> Option<&str> {
        match self {
            ConversationItem::System { content, .. }
            | ConversationItem::User { content, .. }
            | ConversationItem::Assistant { content, .. } => Some(content),
            _ => None,
        }
    }
}

/// The output of a tool call whose answer was cancelled (barge-in) before the tool returned
/// (the call engine gives it to such calls, and the Mistral client to any call it would
/// otherwise send without a result).
pub const CANCELLED_TOOL_OUTPUT: &str = r#"{"error":"cancelled: the user interrupted the answer"}"#;

/// The results missing in `items`: one [`ConversationItem::ToolResult`] with
/// [`CANCELLED_TOOL_OUTPUT`] for each tool call that has no result, in call order.
pub fn dangling_tool_results(items: &[ConversationItem]) -> Vec<ConversationItem> {
    dangling(items.iter())
}

fn dangling<'a, I>(items: I) -> Vec<ConversationItem>
where
    I: Iterator<Item = &'a ConversationItem> + Clone,
{
    let answered: std::collections::HashSet<&str> = items
        .clone()
        .filter_map(|i| match i {
            ConversationItem::ToolResult { tool_call_id, .. } => Some(tool_call_id.as_str()),
            _ => None,
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    items
        .filter_map(|i| match i {
            ConversationItem::ToolCall {
                tool_call_id,
                tool_name,
                ..
            } if !answered.contains(tool_call_id.as_str())
                && seen.insert(tool_call_id.as_str()) =>
            {
                Some(ConversationItem::ToolResult {
                    tool_call_id: tool_call_id.clone(),
                    tool_name: tool_name.clone(),
                    output: CANCELLED_TOOL_OUTPUT.to_owned(),
                })
            }
            _ => None,
        })
        .collect()
}

/// A conversation: its items, each with a stable id so that "already answered" can be told by
/// identity, as Micdrop does with object identity.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    items: Vec<(u64, ConversationItem)>,
    next_id: u64,
}

impl Conversation {
    /// An empty conversation.
    pub fn new() -> Self {
        Self::default()
    }

    /// A conversation starting with a system prompt.
    pub fn with_system(prompt: impl Into<String>) -> Self {
        let mut c = Self::new();
        // Exactly one item: an idle call's conversation holds no spare capacity.
        c.items.reserve_exact(1);
        c.push(ConversationItem::system(prompt));
        c
    }

    /// Appends an item and returns its id.
    pub fn push(&mut self, item: ConversationItem) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.items.push((id, item));
        id
    }

    /// The items, in order.
    pub fn items(&self) -> impl Iterator<Item = &ConversationItem> {
        self.items.iter().map(|(_, i)| i)
    }

    /// A copy of the items.
    pub fn to_vec(&self) -> Vec<ConversationItem> {
        self.items().cloned().collect()
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there is no item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The last item with its id.
    pub fn last(&self) -> Option<(u64, &ConversationItem)> {
        self.items.last().map(|(id, i)| (*id, i))
    }

    /// Appends a cancelled result ([`CANCELLED_TOOL_OUTPUT`]) for every tool call that has none
    /// and returns the appended items. Call it when an answer is cancelled (barge-in) while a
    /// tool runs: models such as Mistral refuse every later request whose tool calls lack
    /// results ("Not the same number of function calls and responses").
    pub fn cancel_dangling_tool_calls(&mut self) -> Vec<ConversationItem> {
        let missing = dangling(self.items.iter().map(|(_, i)| i));
        for item in &missing {
            self.push(item.clone());
        }
        missing
    }

    /// Removes the last user item (for `CancelLastUserMessage`); returns whether one was found.
    pub fn remove_last_user(&mut self) -> bool {
        if let Some(pos) = self.items.iter().rposition(|(_, i)| i.role() == Role::User) {
            self.items.remove(pos);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_json_shapes() {
        let s = |i: &ConversationItem| serde_json::to_string(i).unwrap();
        assert_eq!(
            s(&ConversationItem::system("sys")),
            r#"{"role":"system","content":"sys"}"#
        );
        let mut meta = Map::new();
        meta.insert("extracted".into(), serde_json::json!({"a": 1}));
        assert_eq!(
            s(&ConversationItem::Assistant {
                content: "hi".into(),
                metadata: Some(meta)
            }),
            r#"{"role":"assistant","content":"hi","metadata":{"extracted":{"a":1}}}"#
        );
        assert_eq!(
            s(&ConversationItem::ToolCall {
                tool_call_id: "abc".into(),
                tool_name: "t".into(),
                parameters: "{}".into()
            }),
            r#"{"role":"tool_call","toolCallId":"abc","toolName":"t","parameters":"{}"}"#
        );
        assert_eq!(
            s(&ConversationItem::ToolResult {
                tool_call_id: "abc".into(),
                tool_name: "t".into(),
                output: "1".into()
            }),
            r#"{"role":"tool_result","toolCallId":"abc","toolName":"t","output":"1"}"#
        );
    }

    #[test]
    fn dangling_tool_calls_get_cancelled_results() {
        let call = |id: &str| ConversationItem::ToolCall {
            tool_call_id: id.into(),
            tool_name: "t".into(),
            parameters: "{}".into(),
        };
        let mut c = Conversation::with_system("s");
        c.push(ConversationItem::user("a"));
        c.push(call("one"));
        c.push(ConversationItem::ToolResult {
            tool_call_id: "one".into(),
            tool_name: "t".into(),
            output: "1".into(),
        });
        c.push(call("two"));
        c.push(call("three"));
        let added = c.cancel_dangling_tool_calls();
        assert_eq!(added.len(), 2);
        assert_eq!(
            serde_json::to_string(&added[0]).unwrap(),
            r#"{"role":"tool_result","toolCallId":"two","toolName":"t","output":"{\"error\":\"cancelled: the user interrupted the answer\"}"}"#
        );
        assert_eq!(c.len(), 8);
        assert!(c.cancel_dangling_tool_calls().is_empty(), "idempotent");
    }

    #[test]
    fn remove_last_user() {
        let mut c = Conversation::with_system("s");
        c.push(ConversationItem::user("a"));
        c.push(ConversationItem::assistant("b"));
        assert!(c.remove_last_user());
        assert!(!c.remove_last_user());
        assert_eq!(c.len(), 2);
    }
}
