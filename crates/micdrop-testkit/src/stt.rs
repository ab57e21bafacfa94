use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use micdrop_core::stt::{SpeechToText, SttCommand, SttEvent, SttSessionIo};
use micdrop_core::{ProviderErrorKind, SttError};

/// What the scripted STT does for one user turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttScript {
    /// Emit these transcripts after `EndTurn` (after the delay).
    AfterStop(Vec<String>),
    /// Emit these transcripts as soon as the first audio chunk of the turn arrives (streaming
    /// STT finishing before `StopSpeaking`).
    OnFirstAudio(Vec<String>),
    /// Never answer for this turn.
    Hang,
    /// Emit `Failed` after `EndTurn`.
    Fail,
}

#[derive(Debug, Default)]
struct Shared {
    script: VecDeque<SttScript>,
    commands: Vec<SttCommand>,
    sessions_open: usize,
}

/// A scripted speech-to-text provider.
#[derive(Debug, Clone)]
pub struct ScriptedStt {
    shared: Arc<Mutex<Shared>>,
    delay: Duration,
}

impl ScriptedStt {
    /// A provider that plays `script` turn by turn (then answers `""`).
    pub fn new(script: impl IntoIterator<Item = SttScript>) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                script: script.into_iter().collect(),
                ..Default::default()
            })),
            delay: Duration::ZERO,
        }
    }

    /// One final transcript per turn, after `StopSpeaking`.
    pub fn transcripts(texts: &[&str]) -> Self {
        Self::new(
            texts
                .iter()
                .map(|t| SttScript::AfterStop(vec![(*t).to_owned()])),
        )
    }

    /// Delay before transcripts after `EndTurn`.
    pub fn with_delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// The commands received so far (audio included).
    pub fn commands(&self) -> Vec<SttCommand> {
        self.shared.lock().unwrap().commands.clone()
    }

    /// Number of sessions currently running.
    pub fn sessions_open(&self) -> usize {
        self.shared.lock().unwrap().sessions_open
    }
}

impl SpeechToText for ScriptedStt {
    fn name(&self) -> &str {
        "scripted-stt"
    }

    fn run(&self, mut io: SttSessionIo) -> BoxFuture<'static, ()> {
        let shared = self.shared.clone();
        let delay = self.delay;
        Box::pin(async move {
            shared.lock().unwrap().sessions_open += 1;
            struct Guard(Arc<Mutex<Shared>>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    self.0.lock().unwrap().sessions_open -= 1;
                }
            }
            let _guard = Guard(shared.clone());
            let mut current: Option<SttScript> = None;
            let mut fired = false;
            let mut had_audio = false;
            while let Some(cmd) = io.commands.recv().await {
                shared.lock().unwrap().commands.push(cmd.clone());
                match cmd {
                    SttCommand::StartTurn => {
                        current = None;
                        fired = false;
                        had_audio = false;
                    }
                    SttCommand::Audio(_) => {
                        // A turn takes its script entry at its first audio: a turn without
                        // audio produces nothing, as a real STT.
                        if !had_audio {
                            had_audio = true;
                            current = shared.lock().unwrap().script.pop_front();
                        }
                        if let Some(SttScript::OnFirstAudio(texts)) = &current {
                            if !fired {
                                fired = true;
                                for t in texts {
                                    let _ = io.events.send(SttEvent::Transcript(t.clone())).await;
                                }
                            }
                        }
                    }
                    SttCommand::EndTurn | SttCommand::DiscardTurn => {
                        if !std::mem::take(&mut had_audio) {
                            continue;
                        }
                        let script = current.take();
                        let events = io.events.clone();
                        let discard = cmd == SttCommand::DiscardTurn;
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            match script {
                                Some(SttScript::AfterStop(texts)) if !discard => {
                                    for t in texts {
                                        let _ = events.send(SttEvent::Transcript(t)).await;
                                    }
                                }
                                None if !discard => {
                                    let _ = events.send(SttEvent::Transcript(String::new())).await;
                                }
                                Some(SttScript::Fail) => {
                                    let _ = events
                                        .send(SttEvent::Failed {
                                            error: SttError::new(
                                                "scripted-stt",
                                                ProviderErrorKind::Network("scripted".into()),
                                            ),
                                            pending: vec![],
                                        })
                                        .await;
                                }
                                _ => {}
                            }
                        });
                    }
                }
            }
        })
    }
}
