//! The assistant's answer in progress: the agent task and its events, as a value. Dropping it
//! aborts the agent (and its model request).

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::agent::{Agent, AgentEvent};
use crate::conversation::ConversationItem;
use crate::tts::UtteranceId;

/// Capacity of an answer's event channel.
const ANSWER_EVENTS: usize = 32;

/// An answer in progress.
pub(super) struct Answer {
    events: mpsc::Receiver<AgentEvent>,
    task: JoinHandle<()>,
    /// The utterance opened at the first text (if a TTS is configured).
    pub utterance: Option<UtteranceId>,
    /// The answer text so far (for partial messages).
    pub text: String,
    /// Tool calls of this answer that have no result yet: (id, tool name).
    open_tool_calls: Vec<(String, String)>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Answer {
    /// Starts the agent on the conversation `items`, in the current span.
    pub fn start(agent: Agent, items: Vec<ConversationItem>) -> Self {
        let (tx, events) = mpsc::channel(ANSWER_EVENTS);
        let task = tokio::spawn(
            async move { agent.answer(items, tx).await }.instrument(tracing::Span::current()),
        );
        Self {
            events,
            task,
            utterance: None,
            text: String::new(),
            open_tool_calls: Vec::new(),
        }
    }

    /// The next event; `None` when the answer is complete.
    pub async fn next_event(&mut self) -> Option<AgentEvent> {
        self.events.recv().await
    }

    /// An event already waiting, if any (`None` also when the answer is complete: the next
    /// [`next_event`](Self::next_event) says so).
    pub fn try_next_event(&mut self) -> Option<AgentEvent> {
        self.events.try_recv().ok()
    }

    /// Notes a settled item of this answer (tool calls and their results are tracked).
    pub fn note_item(&mut self, item: &ConversationItem) {
        match item {
            ConversationItem::ToolCall {
                tool_call_id,
                tool_name,
                ..
            } => self
                .open_tool_calls
                .push((tool_call_id.clone(), tool_name.clone())),
            ConversationItem::ToolResult { tool_call_id, .. } => {
                self.open_tool_calls.retain(|(id, _)| id != tool_call_id)
            }
            _ => {}
        }
    }

    /// Cancels the answer: aborts the agent and returns the tool results it already produced
    /// (still in its channel) for calls already in the conversation. Calls left without a
    /// result are the conversation's business (`Conversation::cancel_dangling_tool_calls`).
    pub fn cancel(mut self) -> Vec<ConversationItem> {
        self.task.abort();
        let mut settled = Vec::new();
        while let Ok(ev) = self.events.try_recv() {
            if let AgentEvent::Message(item @ ConversationItem::ToolResult { .. }) = ev {
                if let ConversationItem::ToolResult { tool_call_id, .. } = &item {
                    if self
                        .open_tool_calls
                        .iter()
                        .any(|(id, _)| id == tool_call_id)
                    {
                        self.note_item(&item);
                        settled.push(item);
                    }
                }
            }
        }
        settled
    }
}
