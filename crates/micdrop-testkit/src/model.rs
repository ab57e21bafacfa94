use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use micdrop_core::agent::{ChatChunk, ChatModel, ChatRequest, ChatToolCall};
use micdrop_core::{AgentError, ProviderErrorKind};

/// One model step (one request's answer).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelStep {
    /// Stream these text deltas.
    Text(Vec<String>),
    /// Call these tools `(name, arguments JSON)`.
    Tools(Vec<(String, String)>),
    /// Text deltas, then tool calls.
    TextThenTools(Vec<String>, Vec<(String, String)>),
    /// Fail with a network error (after retries).
    Fail,
    /// Never answer.
    Hang,
}

impl ModelStep {
    /// A text answer streamed word by word.
    pub fn words(text: &str) -> Self {
        let mut deltas = Vec::new();
        for (i, w) in text.split(' ').enumerate() {
            deltas.push(if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            });
        }
        ModelStep::Text(deltas)
    }
    /// One tool call.
    pub fn tool(name: &str, args: &str) -> Self {
        ModelStep::Tools(vec![(name.to_owned(), args.to_owned())])
    }
}

#[derive(Debug, Default)]
struct Shared {
    script: VecDeque<ModelStep>,
    requests: Vec<ChatRequest>,
}

/// A scripted chat model. When the script is empty it answers `You said: <last user text>`.
#[derive(Debug, Clone, Default)]
pub struct ScriptedModel {
    shared: Arc<Mutex<Shared>>,
    delta_delay: Duration,
    dropped_early: Arc<AtomicUsize>,
    completed: Arc<AtomicUsize>,
    ids: Arc<AtomicUsize>,
}

impl ScriptedModel {
    /// A model playing `steps` in order, one per request.
    pub fn new(steps: impl IntoIterator<Item = ModelStep>) -> Self {
        let m = Self::default();
        m.shared.lock().unwrap().script = steps.into_iter().collect();
        m
    }

    /// Delay before each text delta.
    pub fn with_delta_delay(mut self, d: Duration) -> Self {
        self.delta_delay = d;
        self
    }

    /// The requests received.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// How many streams were dropped before their end (cancelled answers).
    pub fn cancelled(&self) -> usize {
        self.dropped_early.load(Ordering::SeqCst)
    }

    /// How many streams ran to their end.
    pub fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }
}

struct DropProbe {
    done: bool,
    dropped_early: Arc<AtomicUsize>,
    completed: Arc<AtomicUsize>,
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        if self.done {
            self.completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.dropped_early.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl ChatModel for ScriptedModel {
    fn name(&self) -> &str {
        "scripted-model"
    }

    fn stream(&self, request: ChatRequest) -> BoxStream<'static, Result<ChatChunk, AgentError>> {
        let step = {
            let mut s = self.shared.lock().unwrap();
            s.requests.push(request.clone());
            s.script.pop_front()
        };
        let step = step.unwrap_or_else(|| {
            let last = request
                .messages
                .iter()
                .rev()
                .find_map(|m| match m {
                    micdrop_core::agent::ChatMessage::User(t) => Some(t.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            ModelStep::words(&format!("You said: {last}"))
        });
        let delay = self.delta_delay;
        let probe = DropProbe {
            done: false,
            dropped_early: self.dropped_early.clone(),
            completed: self.completed.clone(),
        };
        let ids = self.ids.clone();
        async_stream(move |tx| async move {
            // Move the whole probe in (not just its field): it reports when the task ends.
            let mut probe = probe;
            let (texts, tools) = match step {
                ModelStep::Text(t) => (t, vec![]),
                ModelStep::Tools(c) => (vec![], c),
                ModelStep::TextThenTools(t, c) => (t, c),
                ModelStep::Fail => {
                    let _ = tx
                        .send(Err(AgentError::new(
                            "scripted-model",
                            ProviderErrorKind::Exhausted {
                                attempts: 3,
                                last: "scripted failure".into(),
                            },
                        )))
                        .await;
                    probe.done = true;
                    return;
                }
                ModelStep::Hang => {
                    std::future::pending::<()>().await;
                    return;
                }
            };
            for t in texts {
                tokio::time::sleep(delay).await;
                if tx.send(Ok(ChatChunk::Text(t))).await.is_err() {
                    return;
                }
            }
            for (name, arguments) in tools {
                let n = ids.fetch_add(1, Ordering::SeqCst);
                let call = ChatToolCall {
                    id: format!("call{n:05}"),
                    name,
                    arguments,
                };
                if tx.send(Ok(ChatChunk::ToolCall(call))).await.is_err() {
                    return;
                }
            }
            probe.done = true;
        })
    }
}

/// A tiny stream built from a producer task writing into a channel; dropping the stream aborts
/// the producer (so a dropped stream is observable through its probe).
fn async_stream<F, Fut>(f: F) -> BoxStream<'static, Result<ChatChunk, AgentError>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<ChatChunk, AgentError>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(f(tx));
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let abort = Abort(task);
    Box::pin(futures::stream::unfold(
        (rx, abort),
        |(mut rx, abort)| async move { rx.recv().await.map(|item| (item, (rx, abort))) },
    ))
}
