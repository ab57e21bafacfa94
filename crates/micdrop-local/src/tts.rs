//! The session of the local text-to-speech engines (espeak-ng, Piper).
//!
//! Text arrives in any chunks; it is cut into sentences, each synthesized as soon as it is
//! complete (so the first audio does not wait for the whole answer), one at a time, in the order
//! of the utterances. [`TtsCommand::Cancel`] drops everything: the synthesis in flight is dropped
//! with it (an `espeak-ng` process is killed).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use micdrop_core::error::{ProviderErrorKind, TtsError};
use micdrop_core::tts::{TtsCommand, TtsEvent, TtsSessionIo, UtteranceId};

use crate::error::LocalError;

/// Audio is sent to the call in chunks of this many bytes (250 ms at 16 kHz).
const CHUNK_BYTES: usize = 8_000;
/// A sentence without punctuation is cut at a space after this many characters.
const MAX_SENTENCE_CHARS: usize = 240;

/// A local speech synthesizer: text in, PCM s16le 16 kHz mono out.
pub trait Synthesizer: Send + Sync + 'static {
    /// Its name (`espeak`, `piper`).
    fn name(&self) -> &'static str;
    /// Speaks `text`. Dropping the future cancels the synthesis.
    fn synthesize(&self, text: String) -> BoxFuture<'static, Result<Vec<u8>, LocalError>>;
}

struct Utterance {
    id: UtteranceId,
    text: String,
    ended: bool,
}

/// Cuts the first complete sentence off `text` (all of it if `ended`).
fn next_sentence(text: &mut String, ended: bool) -> Option<String> {
    let mut cut = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | '!' | '?' | ';' | ':' | '…' | '\n') {
            match chars.peek() {
                Some((_, next)) if next.is_whitespace() => {
                    cut = Some(i + c.len_utf8());
                    break;
                }
                None if ended => {}
                _ => {}
            }
        }
    }
    if cut.is_none() && text.chars().count() > MAX_SENTENCE_CHARS {
        cut = text
            .char_indices()
            .skip(MAX_SENTENCE_CHARS / 2)
            .find(|(_, c)| c.is_whitespace())
            .map(|(i, _)| i);
    }
    let cut = match cut {
        Some(c) => c,
        None if ended => text.len(),
        None => return None,
    };
    let sentence: String = text[..cut].trim().to_string();
    text.replace_range(..cut, "");
    if !sentence.chars().any(char::is_alphanumeric) {
        // Only whitespace or punctuation: nothing to say; look again (or report nothing).
        return if text.trim().is_empty() {
            text.clear();
            None
        } else {
            next_sentence(text, ended)
        };
    }
    Some(sentence)
}

/// Runs one call's TTS session with `synth` until the command channel closes.
pub fn run_session(synth: Arc<dyn Synthesizer>, io: TtsSessionIo) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let TtsSessionIo {
            mut commands,
            events,
        } = io;
        let mut queue: VecDeque<Utterance> = VecDeque::new();
        type Job = (
            UtteranceId,
            String,
            BoxFuture<'static, Result<Vec<u8>, LocalError>>,
        );
        let mut current: Option<Job> = None;
        loop {
            // Start the next synthesis, and finish utterances that have nothing left to say.
            while current.is_none() {
                let Some(head) = queue.front_mut() else { break };
                if let Some(sentence) = next_sentence(&mut head.text, head.ended) {
                    let fut = synth.synthesize(sentence.clone());
                    current = Some((head.id, sentence, fut));
                } else if head.ended {
                    let id = head.id;
                    queue.pop_front();
                    if events.send(TtsEvent::Done(id)).await.is_err() {
                        return;
                    }
                } else {
                    break;
                }
            }
            tokio::select! {
                command = commands.recv() => match command {
                    None => return,
                    Some(TtsCommand::Speak(id)) => queue.push_back(Utterance { id, text: String::new(), ended: false }),
                    Some(TtsCommand::Text(id, text)) => {
                        if let Some(u) = queue.iter_mut().find(|u| u.id == id && !u.ended) {
                            u.text.push_str(&text);
                        }
                    }
                    Some(TtsCommand::EndText(id)) => {
                        if let Some(u) = queue.iter_mut().find(|u| u.id == id) {
                            u.ended = true;
                        }
                    }
                    Some(TtsCommand::Cancel) => {
                        queue.clear();
                        current = None;
                    }
                },
                result = async { match current.as_mut() { Some((_, _, fut)) => fut.await, None => std::future::pending().await } } => {
                    let Some((id, sentence, _)) = current.take() else { continue };
                    match result {
                        Ok(pcm) => {
                            for chunk in pcm.chunks(CHUNK_BYTES) {
                                if events.send(TtsEvent::Audio(id, Bytes::copy_from_slice(chunk))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(engine = synth.name(), error = %e, "synthesis failed");
                            let mut unspoken = vec![sentence];
                            if let Some(pos) = queue.iter().position(|u| u.id == id)
                                && let Some(u) = queue.remove(pos)
                                && !u.text.trim().is_empty()
                            {
                                unspoken.push(u.text);
                            }
                            let error = TtsError::new(synth.name(), ProviderErrorKind::Protocol(e.to_string()));
                            if events.send(TtsEvent::Failed { utterance: id, error, unspoken }).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_cut_at_punctuation_followed_by_space() {
        let mut t = String::from("Bonjour. Il est 3.5 h");
        assert_eq!(next_sentence(&mut t, false).as_deref(), Some("Bonjour."));
        assert_eq!(next_sentence(&mut t, false), None);
        t.push_str("! Merci");
        assert_eq!(
            next_sentence(&mut t, false).as_deref(),
            Some("Il est 3.5 h!")
        );
        assert_eq!(next_sentence(&mut t, false), None);
        assert_eq!(next_sentence(&mut t, true).as_deref(), Some("Merci"));
        assert_eq!(next_sentence(&mut t, true), None);
        let mut t = String::from(" ...  ");
        assert_eq!(next_sentence(&mut t, true), None);
    }

    #[test]
    fn long_text_without_punctuation_is_cut_at_a_space() {
        let mut t = "mot ".repeat(100);
        let s = next_sentence(&mut t, false).unwrap();
        assert!(
            s.len() >= MAX_SENTENCE_CHARS / 2 && s.len() < 200,
            "{}",
            s.len()
        );
    }
}
