//! Barge-in, measured inside the server: no audio frame of a cancelled answer is written to the
//! socket after the call has read the `StartSpeaking` that cancelled it.
//!
//! The socket is a pair of channels wrapped so that every read and every write takes a number
//! from one shared counter: the write numbers of all audio frames must be below the read number
//! of `StartSpeaking`, or belong to a later answer.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use micdrop_core::agent::Agent;
use micdrop_core::call::{CallConfig, run_call};
use micdrop_core::protocol::WsMessage;
use micdrop_core::socket::{SocketError, SocketSink, SocketStream};
use micdrop_testkit::{ModelStep, ScriptedModel, ScriptedStt, ScriptedTts};

struct Counted<S> {
    inner: S,
    clock: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<(u64, WsMessage)>>>,
}

impl<S: Stream<Item = Result<WsMessage, SocketError>> + Unpin> Stream for Counted<S> {
    type Item = Result<WsMessage, SocketError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let p = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(Some(Ok(m))) = &p {
            let n = self.clock.fetch_add(1, Ordering::SeqCst);
            self.log.lock().unwrap().push((n, m.clone()));
        }
        p
    }
}

impl<S: Sink<WsMessage, Error = SocketError> + Unpin> Sink<WsMessage> for Counted<S> {
    type Error = SocketError;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        self.inner.poll_ready_unpin(cx)
    }
    fn start_send(mut self: Pin<&mut Self>, item: WsMessage) -> Result<(), SocketError> {
        let n = self.clock.fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap().push((n, item.clone()));
        self.inner.start_send_unpin(item)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        self.inner.poll_flush_unpin(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        self.inner.poll_close_unpin(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_audio_of_a_cancelled_answer_after_start_speaking_is_read() {
    for round in 0..20 {
        let clock = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(Mutex::new(Vec::new()));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (to_call, call_rx) = futures::channel::mpsc::channel(64);
        let (call_tx, mut from_call) = futures::channel::mpsc::channel(1024);
        let stream: SocketStream = Box::pin(Counted {
            inner: call_rx,
            clock: clock.clone(),
            log: reads.clone(),
        });
        let sink: SocketSink = Box::pin(Counted {
            inner: call_tx.sink_map_err(|e| SocketError::Disconnected(e.to_string())),
            clock: clock.clone(),
            log: writes.clone(),
        });
        let model = ScriptedModel::new([ModelStep::words(
            "a long answer with many many words to speak so that audio keeps flowing for a while",
        )])
        .with_delta_delay(Duration::from_millis(2));
        let tts = ScriptedTts::new().with_chunk_delay(Duration::from_micros(200));
        let config = CallConfig::new(Arc::new(ScriptedStt::transcripts(&["go"])))
            .agent(Agent::new(Arc::new(model.clone()), "sys"))
            .tts(Arc::new(tts));
        let call = tokio::spawn(run_call(config, sink, stream));
        let mut to_call = to_call;
        let send = |m: WsMessage| Ok::<_, SocketError>(m);
        to_call
            .send(send(WsMessage::Text("StartSpeaking".into())))
            .await
            .unwrap();
        to_call
            .send(send(WsMessage::Binary(vec![1u8; 3200].into())))
            .await
            .unwrap();
        to_call
            .send(send(WsMessage::Text("StopSpeaking".into())))
            .await
            .unwrap();
        // Wait for some audio, then interrupt at a varying moment.
        let mut audio_seen = 0;
        while let Some(m) = from_call.next().await {
            if matches!(m, WsMessage::Binary(_)) {
                audio_seen += 1;
                if audio_seen > round {
                    break;
                }
            }
        }
        to_call
            .send(send(WsMessage::Text("StartSpeaking".into())))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        to_call.send(send(WsMessage::Close(None))).await.unwrap();
        let end = call.await.unwrap();
        let start_read = reads
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| *m == WsMessage::Text("StartSpeaking".into()))
            .map(|(n, _)| *n)
            .nth(1)
            .expect("second StartSpeaking read");
        let late: Vec<u64> = writes
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, m)| matches!(m, WsMessage::Binary(_)) && *n > start_read)
            .map(|(n, _)| *n)
            .collect();
        assert!(
            late.is_empty(),
            "round {round}: audio written after StartSpeaking was read: {late:?}"
        );
        assert_eq!(
            model.cancelled(),
            1,
            "round {round}: the answer's model stream was dropped"
        );
        assert!(
            end.conversation
                .iter()
                .all(|i| i.content() != Some("a long answer"))
        );
    }
}
