//! Micdrop's wire protocol, to the byte (see `docs/protocol.md`).
//!
//! Client → server: the text commands `StartSpeaking`, `StopSpeaking` and `Mute`, and binary
//! frames of raw PCM s16le, 16 kHz, mono. Server → client: text commands (name alone, or name,
//! one space and JSON) and binary PCM frames of even length.

use bytes::Bytes;
use serde::Serialize;

use crate::conversation::ConversationItem;

/// Sample rate of every PCM frame on the wire, both ways.
pub const SAMPLE_RATE: u32 = 16_000;

/// Frames shorter than this many bytes are decoded as commands, whatever their opcode, exactly as
/// Micdrop's Node server does; longer binary frames are audio.
pub const COMMAND_MAX_LEN: usize = 15;

/// Close code: bad request (missing or invalid params).
pub const CLOSE_BAD_REQUEST: u16 = 4400;
/// Close code: unauthorized (bad or missing token).
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code: not found.
pub const CLOSE_NOT_FOUND: u16 = 4404;
/// Close code: internal server error.
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a frame was larger than the configured limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the peer broke the WebSocket protocol (RFC 6455: bad RSV bits, an unmasked client
/// frame, an unknown opcode, a control frame over 125 bytes, ...).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code: a text frame that is not valid UTF-8 (RFC 6455 "invalid frame payload data").
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code for the abnormal end of a connection (no close frame): RFC 6455 reserves it for
/// reports; it is never sent in a close frame.
pub const CLOSE_ABNORMAL: u16 = 1006;

/// A command sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCommand {
    /// The user started speaking (the VAD confirmed speech): opens a user turn.
    StartSpeaking,
    /// The user stopped speaking: closes the user turn.
    StopSpeaking,
    /// The client paused: cancel everything and drop the current user stream.
    Mute,
}

impl ClientCommand {
    /// The exact wire text of the command.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientCommand::StartSpeaking => "StartSpeaking",
            ClientCommand::StopSpeaking => "StopSpeaking",
            ClientCommand::Mute => "Mute",
        }
    }

    /// Parses the exact wire text of a command.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "StartSpeaking" => Some(ClientCommand::StartSpeaking),
            "StopSpeaking" => Some(ClientCommand::StopSpeaking),
            "Mute" => Some(ClientCommand::Mute),
            _ => None,
        }
    }
}

/// A WebSocket message, independent of the WebSocket library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
    /// A ping (answered by the WebSocket library or ignored).
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame with its code and reason, if any.
    Close(Option<(u16, String)>),
}

/// What a client frame means to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// One of the three commands.
    Command(ClientCommand),
    /// A chunk of user audio (PCM s16le 16 kHz mono).
    Audio(Bytes),
    /// Something to ignore silently: an empty frame, an unknown short text, a long text frame,
    /// a ping or a pong.
    Ignored,
    /// The client closed the socket.
    Close,
}

/// Decodes one client frame with Micdrop's rule: empty → ignored; shorter than 15 bytes →
/// decoded as UTF-8 and compared to the three commands (anything else ignored); otherwise audio
/// if binary. Long text frames are ignored (Micdrop would misread them as audio, which no client
/// relies on). Never panics, whatever the bytes.
pub fn decode_client_frame(msg: WsMessage) -> ClientFrame {
    match msg {
        WsMessage::Text(text) => {
            if text.len() < COMMAND_MAX_LEN {
                ClientCommand::parse(&text).map_or(ClientFrame::Ignored, ClientFrame::Command)
            } else {
                ClientFrame::Ignored
            }
        }
        WsMessage::Binary(bytes) => {
            if bytes.is_empty() {
                ClientFrame::Ignored
            } else if bytes.len() < COMMAND_MAX_LEN {
                std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(ClientCommand::parse)
                    .map_or(ClientFrame::Ignored, ClientFrame::Command)
            } else {
                ClientFrame::Audio(bytes)
            }
        }
        WsMessage::Ping(_) | WsMessage::Pong(_) => ClientFrame::Ignored,
        WsMessage::Close(_) => ClientFrame::Close,
    }
}

/// The payload of a `ToolCall` frame: a tool declared with `emit_output` ran.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ToolCallOutput {
    /// The tool's name.
    pub name: String,
    /// The parameters the model passed (parsed JSON).
    pub parameters: serde_json::Value,
    /// What the tool returned.
    pub output: serde_json::Value,
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// `Message {json}`: a settled conversation item.
    Message(ConversationItem),
    /// `PartialAssistantMessage "<json string>"`: the whole answer text so far.
    PartialAssistantMessage(String),
    /// `CancelLastUserMessage`: the last user message was noise.
    CancelLastUserMessage,
    /// `SkipAnswer`: no (more) answer is coming; listen again.
    SkipAnswer,
    /// `EndCall`: the agent asked to end the call.
    EndCall,
    /// `ToolCall {json}`: a tool with `emit_output` ran.
    ToolCall(ToolCallOutput),
    /// Assistant audio: PCM s16le 16 kHz mono, even length.
    Audio(Bytes),
}

impl ServerFrame {
    /// Encodes the frame exactly as Micdrop's server does.
    pub fn encode(&self) -> WsMessage {
        fn with_json<T: Serialize>(name: &str, value: &T) -> WsMessage {
            // Serializing our own plain data types cannot fail.
            let json = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
            WsMessage::Text(format!("{name} {json}"))
        }
        match self {
            ServerFrame::Message(item) => with_json("Message", item),
            ServerFrame::PartialAssistantMessage(text) => {
                with_json("PartialAssistantMessage", text)
            }
            ServerFrame::CancelLastUserMessage => WsMessage::Text("CancelLastUserMessage".into()),
            ServerFrame::SkipAnswer => WsMessage::Text("SkipAnswer".into()),
            ServerFrame::EndCall => WsMessage::Text("EndCall".into()),
            ServerFrame::ToolCall(call) => with_json("ToolCall", call),
            ServerFrame::Audio(pcm) => WsMessage::Binary(pcm.clone()),
        }
    }

    /// Decodes a server frame (used by clients). Unknown text gives `None`, as Micdrop's client
    /// ignores it.
    pub fn decode(msg: &WsMessage) -> Option<ServerFrame> {
        match msg {
            WsMessage::Binary(b) => Some(ServerFrame::Audio(b.clone())),
            WsMessage::Text(t) => {
                let t = t.as_str();
                if let Some(json) = t.strip_prefix("Message ") {
                    serde_json::from_str(json).ok().map(ServerFrame::Message)
                } else if let Some(json) = t.strip_prefix("PartialAssistantMessage ") {
                    serde_json::from_str(json)
                        .ok()
                        .map(ServerFrame::PartialAssistantMessage)
                } else if let Some(json) = t.strip_prefix("ToolCall ") {
                    serde_json::from_str(json).ok().map(ServerFrame::ToolCall)
                } else {
                    match t {
                        "EndCall" => Some(ServerFrame::EndCall),
                        "SkipAnswer" => Some(ServerFrame::SkipAnswer),
                        "CancelLastUserMessage" => Some(ServerFrame::CancelLastUserMessage),
                        _ => None,
                    }
                }
            }
            _ => None,
        }
    }
}

/// Re-aligns a stream of PCM s16le chunks of arbitrary lengths into chunks of even length:
/// an odd trailing byte is held back and prefixed to the next chunk.
#[derive(Debug, Default)]
pub struct PcmAligner {
    carry: Option<u8>,
}

impl PcmAligner {
    /// Returns the even-length part of `carry + chunk`, or `None` if nothing complete is left.
    pub fn push(&mut self, chunk: &[u8]) -> Option<Bytes> {
        let mut buf = Vec::with_capacity(chunk.len() + 1);
        if let Some(b) = self.carry.take() {
            buf.push(b);
        }
        buf.extend_from_slice(chunk);
        if buf.len() % 2 == 1 {
            self.carry = buf.pop();
        }
        if buf.is_empty() {
            None
        } else {
            Some(Bytes::from(buf))
        }
    }

    /// Like [`push`](Self::push), without copying when no byte is held back: an even chunk is
    /// returned as is, an odd one as a slice of itself (no allocation per frame).
    pub fn push_bytes(&mut self, mut chunk: Bytes) -> Option<Bytes> {
        if self.carry.is_some() {
            return self.push(&chunk);
        }
        if chunk.len() % 2 == 1 {
            self.carry = chunk.last().copied();
            chunk.truncate(chunk.len() - 1);
        }
        (!chunk.is_empty()).then_some(chunk)
    }

    /// Forgets any held-back byte (at the end of an utterance).
    pub fn reset(&mut self) {
        self.carry = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_in_text_and_short_binary() {
        for c in [
            ClientCommand::StartSpeaking,
            ClientCommand::StopSpeaking,
            ClientCommand::Mute,
        ] {
            assert_eq!(
                decode_client_frame(WsMessage::Text(c.as_str().into())),
                ClientFrame::Command(c)
            );
            assert_eq!(
                decode_client_frame(WsMessage::Binary(Bytes::from_static(c.as_str().as_bytes()))),
                ClientFrame::Command(c)
            );
        }
        assert_eq!(
            decode_client_frame(WsMessage::Text("startspeaking".into())),
            ClientFrame::Ignored
        );
        assert_eq!(
            decode_client_frame(WsMessage::Binary(Bytes::from_static(&[1, 2, 3]))),
            ClientFrame::Ignored
        );
        assert_eq!(
            decode_client_frame(WsMessage::Binary(Bytes::new())),
            ClientFrame::Ignored
        );
        let audio = Bytes::from(vec![0u8; 3200]);
        assert_eq!(
            decode_client_frame(WsMessage::Binary(audio.clone())),
            ClientFrame::Audio(audio)
        );
    }

    #[test]
    fn server_frames_to_the_byte() {
        let item = ConversationItem::user("Bonjour \"toi\"");
        assert_eq!(
            ServerFrame::Message(item.clone()).encode(),
            WsMessage::Text(r#"Message {"role":"user","content":"Bonjour \"toi\""}"#.into())
        );
        assert_eq!(
            ServerFrame::PartialAssistantMessage("Hello th".into()).encode(),
            WsMessage::Text(r#"PartialAssistantMessage "Hello th""#.into())
        );
        assert_eq!(
            ServerFrame::SkipAnswer.encode(),
            WsMessage::Text("SkipAnswer".into())
        );
        let tc = ServerFrame::ToolCall(ToolCallOutput {
            name: "t".into(),
            parameters: serde_json::json!({"a": 1}),
            output: serde_json::json!("ok"),
        });
        assert_eq!(
            tc.encode(),
            WsMessage::Text(r#"ToolCall {"name":"t","parameters":{"a":1},"output":"ok"}"#.into())
        );
        for f in [
            ServerFrame::Message(item),
            ServerFrame::PartialAssistantMessage("x".into()),
            ServerFrame::SkipAnswer,
            ServerFrame::EndCall,
            ServerFrame::CancelLastUserMessage,
            tc,
        ] {
            assert_eq!(ServerFrame::decode(&f.encode()), Some(f));
        }
    }

    #[test]
    fn aligner_keeps_even_lengths() {
        let mut a = PcmAligner::default();
        assert_eq!(a.push(&[1, 2, 3]).unwrap().as_ref(), &[1, 2]);
        assert_eq!(a.push(&[4]).unwrap().as_ref(), &[3, 4]);
        assert_eq!(a.push(&[5]), None);
        assert_eq!(a.push(&[6, 7, 8]).unwrap().as_ref(), &[5, 6, 7, 8]);
        let mut a = PcmAligner::default();
        let even = Bytes::from_static(&[1, 2, 3, 4]);
        let out = a.push_bytes(even.clone()).unwrap();
        assert_eq!(out.as_ptr(), even.as_ptr(), "an even chunk is not copied");
        assert_eq!(
            a.push_bytes(Bytes::from_static(&[5, 6, 7]))
                .unwrap()
                .as_ref(),
            &[5, 6]
        );
        assert_eq!(
            a.push_bytes(Bytes::from_static(&[8])).unwrap().as_ref(),
            &[7, 8]
        );
        assert_eq!(a.push_bytes(Bytes::from_static(&[9])), None);
        assert_eq!(
            a.push_bytes(Bytes::from_static(&[10, 11, 12]))
                .unwrap()
                .as_ref(),
            &[9, 10, 11, 12]
        );
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64), text in ".{0,40}") {
            let _ = decode_client_frame(WsMessage::Binary(Bytes::from(bytes.clone())));
            let _ = decode_client_frame(WsMessage::Text(text.clone()));
            let _ = ServerFrame::decode(&WsMessage::Text(text));
            let _ = ServerFrame::decode(&WsMessage::Text(format!("Message {}", String::from_utf8_lossy(&bytes))));
        }
    }
}
