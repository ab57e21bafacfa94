//! What the store holds and returns (the admin API's JSON shapes).

use micdrop_core::conversation::ConversationItem;
use serde::Serialize;
use serde_json::Value;

/// A call as it starts.
#[derive(Debug, Clone)]
pub struct NewCall {
    /// The call id (unique across instances).
    pub id: String,
    /// The conversation: the call's own id for a new one, the resumed one's id otherwise.
    pub conversation_id: String,
    /// Start, Unix milliseconds.
    pub started_at: i64,
    /// The application's reference of the data subject (params `user_ref`).
    pub user_ref: Option<String>,
    /// Whether the call resumed an existing conversation.
    pub resumed: bool,
    /// The provider hosts the call reaches (`host[:port]`).
    pub provider_hosts: Vec<String>,
    /// The params, secrets removed (see [`crate::session::redact_params`]).
    pub params: Value,
}

/// A call in the admin API.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallSummary {
    /// Call id.
    pub id: String,
    /// Conversation id.
    pub conversation_id: String,
    /// Start (RFC 3339, UTC).
    pub started_at: String,
    /// Start, Unix milliseconds (not serialized).
    #[serde(skip)]
    pub started_at_ms: i64,
    /// End (RFC 3339, UTC); null while the call runs, or if the process died during it.
    pub ended_at: Option<String>,
    /// Duration in milliseconds.
    pub duration_ms: Option<i64>,
    /// The close code of the frame that ended the call (the server's or the client's; null: none).
    pub close_code: Option<i64>,
    /// Its reason.
    pub close_reason: Option<String>,
    /// Why the call ended (`client_closed`, `idle`, `shutdown`, `hung_up`, `socket_error`).
    pub end_reason: Option<String>,
    /// The application's reference of the data subject.
    pub user_ref: Option<String>,
    /// Whether the call resumed an existing conversation.
    pub resumed: bool,
    /// Provider hosts reached.
    pub provider_hosts: Vec<String>,
    /// Params metadata, secrets removed.
    pub params: Value,
    /// Where the recording is on the server's disk (not serialized: see `has_recording`).
    #[serde(skip)]
    pub recording_path: Option<String>,
    /// Whether `GET /api/calls/{id}/recording` has a file.
    pub has_recording: bool,
}

impl CallSummary {
    pub(crate) fn with_recording_flag(mut self) -> Self {
        self.has_recording = self.recording_path.is_some();
        self
    }
}

/// A stored conversation item.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredItem {
    /// The call it was added in.
    pub call_id: String,
    /// Its rank in that call.
    pub seq: i64,
    /// When it was added (RFC 3339).
    pub at: String,
    /// The item, exactly as Micdrop's `Message` frame carries it.
    pub item: ConversationItem,
}

/// One turn's latencies by stage (milliseconds; null when not measured).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct TurnRecord {
    /// The call.
    pub call_id: String,
    /// The turn's rank in the call.
    pub seq: i64,
    /// When it was measured (Unix ms; not serialized).
    #[serde(skip)]
    pub at_ms: i64,
    /// When it was measured (RFC 3339).
    pub at: String,
    /// `StopSpeaking` to final transcript.
    pub stt_ms: Option<f64>,
    /// Request to the model to its first token.
    pub llm_first_token_ms: Option<f64>,
    /// First text to the TTS to its first audio.
    pub tts_first_audio_ms: Option<f64>,
    /// `StopSpeaking` to the first assistant audio frame written.
    pub voice_to_voice_ms: Option<f64>,
}

/// Data extracted from an assistant answer (`metadata.extracted`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExtractedData {
    /// The call.
    pub call_id: String,
    /// When (RFC 3339).
    pub at: String,
    /// The data.
    pub data: Value,
}

/// `GET /api/calls/{id}`: the call, and its whole conversation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallDetail {
    /// The call asked for.
    #[serde(flatten)]
    pub call: CallSummary,
    /// Every call of the conversation, oldest first (this one included).
    pub calls: Vec<CallSummary>,
    /// The conversation's items, oldest first, across all its calls.
    pub items: Vec<StoredItem>,
    /// Per-turn latencies across all its calls.
    pub turns: Vec<TurnRecord>,
    /// Extracted data across all its calls.
    pub extracted: Vec<ExtractedData>,
    /// (Same as `call.conversation_id`.)
    #[serde(skip)]
    pub conversation_id: String,
}

/// `GET /api/calls` filters.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// At most this many calls (1 to 1000).
    pub limit: usize,
    /// Only calls older than this call (its id: the last id of the previous page).
    pub before: Option<String>,
    /// Only this data subject's calls.
    pub user_ref: Option<String>,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            limit: 50,
            before: None,
            user_ref: None,
        }
    }
}

/// What an erasure removed.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Erased {
    /// Conversations erased.
    pub conversations: usize,
    /// Their calls' ids.
    pub calls: Vec<String>,
    /// Recording files removed.
    pub recordings: usize,
}
