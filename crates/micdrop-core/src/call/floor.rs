//! The I/O floor of a call: what a turn of `micdrop bench --light` costs the server below the
//! call engine (`micdrop bench --stack floor`, docs/BENCHMARKS.md).
//!
//! Over the call's own socket stack (whatever the caller built: the server's is `LeanIo`,
//! tungstenite and the fail-fast adapters) and the call's own [`Outbox`] (the pacing, one burst
//! and one flush a wake-up), each `StopSpeaking` gets the frames the bench's engine stack sends
//! for a turn, at once: the user's message, the assistant's, and the answer's audio in 100 ms
//! chunks; the call starts with `SkipAnswer`, as one without a first message does. No STT,
//! model or TTS, no provider task, no channel, no span, no metric: the CPU a turn costs here is
//! the floor that the socket stack and the pacing set, and the engine stack's figure minus this
//! one is what the call engine adds. A `StartSpeaking` cancels the audio not yet written, as a
//! barge-in does. Not a call: nothing else of the protocol is served.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use super::outbox::Outbox;
use crate::conversation::ConversationItem;
use crate::protocol::{ClientCommand, ClientFrame, ServerFrame, decode_client_frame};
use crate::socket::{SocketSink, SocketStream};

/// What each turn of an [`io_floor`] call answers.
#[derive(Debug, Clone)]
pub struct FloorAnswer {
    /// The user's message (the engine stack's STT gives `tour N`).
    pub user: String,
    /// The assistant's message.
    pub assistant: String,
    /// The answer's audio, PCM s16le 16 kHz, sent in [`FLOOR_CHUNK`]-byte chunks (slices of
    /// this one buffer: nothing is copied a turn).
    pub audio: Bytes,
}

/// Audio chunk of an [`io_floor`] answer: 100 ms, the engine stack's TTS frame.
pub const FLOOR_CHUNK: usize = 3200;

/// Serves one connection as the I/O floor (see the module docs) until the client closes it or
/// it fails; `lead` is the pacing lead ([`super::CallConfig::audio_lead`]).
pub async fn io_floor(
    sink: SocketSink,
    mut stream: SocketStream,
    lead: Option<Duration>,
    answer: FloorAnswer,
) {
    let mut outbox = Outbox::new(sink, lead);
    // As a call without a first message starts (the engine stack's).
    outbox.push_frame(ServerFrame::SkipAnswer.encode());
    let mut utterance = 0;
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    loop {
        let now = Instant::now();
        let write_due = outbox.is_due(now);
        let pace = outbox.pace_deadline(now);
        if let Some(at) = pace {
            if at != timer.deadline() {
                timer.as_mut().reset(at);
            }
        }
        tokio::select! {
            biased;
            msg = stream.next() => match msg.map(|m| m.map(decode_client_frame)) {
                Some(Ok(ClientFrame::Command(ClientCommand::StopSpeaking))) => {
                    utterance += 1;
                    push_answer(&mut outbox, utterance, &answer);
                }
                Some(Ok(ClientFrame::Command(ClientCommand::StartSpeaking))) => {
                    outbox.cancel_below(utterance + 1);
                }
                Some(Ok(ClientFrame::Close)) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            r = outbox.write(), if write_due => {
                if r.is_err() {
                    break;
                }
                // Taken as the engine takes it (for its latency figures): the outbox writes
                // the first frame of the next utterance only once this one's was taken.
                outbox.take_first_written();
            }
            _ = &mut timer, if pace.is_some() => {}
        }
    }
    outbox.finish(None).await;
}

fn push_answer(outbox: &mut Outbox, utterance: u64, answer: &FloorAnswer) {
    let message = |item| ServerFrame::Message(item).encode();
    outbox.push_frame(message(ConversationItem::user(answer.user.as_str())));
    outbox.push_frame(message(ConversationItem::assistant(
        answer.assistant.as_str(),
    )));
    let mut at = 0;
    while at < answer.audio.len() {
        let end = (at + FLOOR_CHUNK).min(answer.audio.len());
        outbox.push_audio(utterance, answer.audio.slice(at..end), false);
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WsMessage;
    use crate::socket::channel_socket;
    use futures::SinkExt;

    /// A turn's frames, paced: the messages and the first `lead` of audio at once, the rest
    /// when half the lead has played; a `StartSpeaking` drops what is left.
    #[tokio::test(start_paused = true)]
    async fn turns_are_answered_with_paced_audio_and_a_barge_in_drops_the_rest() {
        let (sink, stream, mut input, mut out) = channel_socket(64);
        let answer = FloorAnswer {
            user: "tour 1".into(),
            assistant: "Bonjour.".into(),
            audio: Bytes::from(vec![0u8; 10 * FLOOR_CHUNK]),
        };
        let call = tokio::spawn(io_floor(
            sink,
            stream,
            Some(Duration::from_millis(300)),
            answer,
        ));
        input
            .send(Ok(WsMessage::Text("StopSpeaking".into())))
            .await
            .unwrap();
        assert!(matches!(out.next().await, Some(WsMessage::Text(t)) if t == "SkipAnswer"));
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(out.next().await.unwrap());
        }
        assert!(
            matches!(&got[0], WsMessage::Text(t) if t.contains("tour 1")),
            "{got:?}"
        );
        assert!(
            matches!(&got[1], WsMessage::Text(t) if t.contains("Bonjour.")),
            "{got:?}"
        );
        // 300 ms of lead, and the frame that starts when 300 ms are left: 4 frames at once.
        assert!(
            got[2..]
                .iter()
                .all(|m| matches!(m, WsMessage::Binary(b) if b.len() == FLOOR_CHUNK))
        );
        let start = Instant::now();
        assert!(matches!(out.next().await, Some(WsMessage::Binary(_))));
        // The next burst when 150 ms are left to play.
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        input
            .send(Ok(WsMessage::Text("StartSpeaking".into())))
            .await
            .unwrap();
        // The next turn: the burst's second frame (written with the first, before the
        // barge-in), then the new answer; the 4 frames of the first answer not written yet are
        // dropped.
        input
            .send(Ok(WsMessage::Text("StopSpeaking".into())))
            .await
            .unwrap();
        assert!(matches!(out.next().await, Some(WsMessage::Binary(_))));
        assert!(matches!(out.next().await, Some(WsMessage::Text(t)) if t.contains("tour 1")));
        assert!(matches!(out.next().await, Some(WsMessage::Text(t)) if t.contains("Bonjour.")));
        // Paced from the start again, then the rest unpaced at the end of the call: all 10.
        for _ in 0..4 {
            assert!(matches!(out.next().await, Some(WsMessage::Binary(_))));
        }
        drop(input);
        call.await.unwrap();
        let rest: Vec<_> = out.collect().await;
        assert_eq!(rest.len(), 6, "{rest:?}");
        assert!(rest.iter().all(|m| matches!(m, WsMessage::Binary(_))));
    }
}
