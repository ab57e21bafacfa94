use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use micdrop_core::turn::TurnDetector;

/// A turn detector answering from a script (`true` = complete), then `true`; records how many
/// samples each turn had.
#[derive(Debug, Clone, Default)]
pub struct ScriptedTurnDetector {
    script: Arc<Mutex<VecDeque<bool>>>,
    samples: Arc<Mutex<Vec<usize>>>,
}

impl ScriptedTurnDetector {
    /// A detector answering `verdicts` in order.
    pub fn new(verdicts: impl IntoIterator<Item = bool>) -> Self {
        Self {
            script: Arc::new(Mutex::new(verdicts.into_iter().collect())),
            samples: Arc::default(),
        }
    }

    /// The number of samples of each predicted turn.
    pub fn samples(&self) -> Vec<usize> {
        self.samples.lock().unwrap().clone()
    }
}

impl TurnDetector for ScriptedTurnDetector {
    fn name(&self) -> &str {
        "scripted-turn"
    }

    fn predict(&self, samples: Vec<i16>) -> BoxFuture<'static, bool> {
        self.samples.lock().unwrap().push(samples.len());
        let verdict = self.script.lock().unwrap().pop_front().unwrap_or(true);
        Box::pin(async move { verdict })
    }
}
