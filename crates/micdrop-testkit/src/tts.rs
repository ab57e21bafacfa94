use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use micdrop_core::tts::{TextToSpeech, TtsCommand, TtsEvent, TtsSessionIo};
use micdrop_core::{ProviderErrorKind, TtsError};

#[derive(Debug, Default)]
struct Shared {
    commands: Vec<TtsCommand>,
    sessions_open: usize,
}

/// A scripted TTS: for each text chunk, emits `bytes_per_char × len` bytes of PCM (value = the
/// first byte of the text), split into chunks of odd length to exercise re-alignment, with a
/// delay between chunks. `Done` follows `EndText`. A text containing `FAIL` makes it emit
/// `Failed`.
#[derive(Debug, Clone)]
pub struct ScriptedTts {
    shared: Arc<Mutex<Shared>>,
    chunk_delay: Duration,
    bytes_per_char: usize,
}

impl ScriptedTts {
    /// A TTS with 1 ms between chunks and 4 bytes of audio per character.
    pub fn new() -> Self {
        Self {
            shared: Arc::default(),
            chunk_delay: Duration::from_millis(1),
            bytes_per_char: 4,
        }
    }

    /// Sets the delay between audio chunks.
    pub fn with_chunk_delay(mut self, d: Duration) -> Self {
        self.chunk_delay = d;
        self
    }

    /// Sets how many bytes of audio each character gives.
    pub fn with_bytes_per_char(mut self, n: usize) -> Self {
        self.bytes_per_char = n;
        self
    }

    /// The commands received so far.
    pub fn commands(&self) -> Vec<TtsCommand> {
        self.shared.lock().unwrap().commands.clone()
    }

    /// How many `Cancel` commands were received.
    pub fn cancels(&self) -> usize {
        self.commands()
            .iter()
            .filter(|c| **c == TtsCommand::Cancel)
            .count()
    }

    /// Number of sessions currently running.
    pub fn sessions_open(&self) -> usize {
        self.shared.lock().unwrap().sessions_open
    }
}

impl Default for ScriptedTts {
    fn default() -> Self {
        Self::new()
    }
}

impl TextToSpeech for ScriptedTts {
    fn name(&self) -> &str {
        "scripted-tts"
    }

    fn run(&self, mut io: TtsSessionIo) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move {
            this.shared.lock().unwrap().sessions_open += 1;
            struct Guard(Arc<Mutex<Shared>>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    self.0.lock().unwrap().sessions_open -= 1;
                }
            }
            let _guard = Guard(this.shared.clone());
            // Synthesis runs in a worker fed in order; Cancel aborts it and starts a new one.
            let (work_tx, work_rx) = tokio::sync::mpsc::unbounded_channel::<TtsCommand>();
            let mut worker = tokio::spawn(Self::worker(this.clone(), work_rx, io.events.clone()));
            let mut work_tx = Some(work_tx);
            while let Some(cmd) = io.commands.recv().await {
                this.shared.lock().unwrap().commands.push(cmd.clone());
                if cmd == TtsCommand::Cancel {
                    worker.abort();
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    worker = tokio::spawn(Self::worker(this.clone(), rx, io.events.clone()));
                    work_tx = Some(tx);
                } else if let Some(tx) = &work_tx {
                    let _ = tx.send(cmd);
                }
            }
            worker.abort();
        })
    }
}

impl ScriptedTts {
    async fn worker(
        this: ScriptedTts,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<TtsCommand>,
        events: tokio::sync::mpsc::Sender<TtsEvent>,
    ) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                TtsCommand::Text(u, text) => {
                    if text.contains("FAIL") {
                        let _ = events
                            .send(TtsEvent::Failed {
                                utterance: u,
                                error: TtsError::new(
                                    "scripted-tts",
                                    ProviderErrorKind::Network("scripted".into()),
                                ),
                                unspoken: vec![text],
                            })
                            .await;
                        continue;
                    }
                    let n = text.chars().count() * this.bytes_per_char;
                    let value = text.bytes().next().unwrap_or(0);
                    let pcm = vec![value; n];
                    for chunk in pcm.chunks(7) {
                        tokio::time::sleep(this.chunk_delay).await;
                        if events
                            .send(TtsEvent::Audio(u, Bytes::copy_from_slice(chunk)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                TtsCommand::EndText(u) => {
                    let _ = events.send(TtsEvent::Done(u)).await;
                }
                TtsCommand::Speak(_) | TtsCommand::Cancel => {}
            }
        }
    }
}
