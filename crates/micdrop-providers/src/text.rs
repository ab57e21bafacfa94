//! Text plumbing for TTS: whole words for streaming synthesizers, whole sentences for those that
//! need them.

/// Buffers streamed text and releases it up to the last whitespace, so a synthesizer that
/// concatenates its input never receives half a word (Micdrop does the same for Gradium and
/// ElevenLabs).
#[derive(Debug, Default, Clone)]
pub struct WordBuffer {
    pending: String,
}

impl WordBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `text`; returns the text that ends with a whole word (with its trailing
    /// whitespace), if any.
    pub fn push(&mut self, text: &str) -> Option<String> {
        self.pending.push_str(text);
        let cut = self
            .pending
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map(|(i, c)| i + c.len_utf8())?;
        let rest = self.pending.split_off(cut);
        let out = std::mem::replace(&mut self.pending, rest);
        (!out.is_empty()).then_some(out)
    }

    /// Returns whatever is left (the last word), emptying the buffer.
    pub fn flush(&mut self) -> Option<String> {
        let out = std::mem::take(&mut self.pending);
        (!out.is_empty()).then_some(out)
    }
}

/// Splits streamed text into sentences, for synthesizers that speak one sentence per request.
///
/// A sentence ends at `.`, `!`, `?`, `…`, `;` or `:` followed by whitespace, or at a line break,
/// once it holds at least `min_chars` characters (so that "M. Dupont" or "1. " do not make
/// fragments).
#[derive(Debug, Clone)]
pub struct SentenceChunker {
    pending: String,
    min_chars: usize,
}

impl Default for SentenceChunker {
    fn default() -> Self {
        Self::new(12)
    }
}

impl SentenceChunker {
    /// A chunker whose sentences hold at least `min_chars` characters.
    pub fn new(min_chars: usize) -> Self {
        Self {
            pending: String::new(),
            min_chars,
        }
    }

    /// Adds `text`; returns the sentences completed by it (trimmed, non-empty).
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        while let Some(end) = self.find_end() {
            let rest = self.pending.split_off(end);
            let sentence = std::mem::replace(&mut self.pending, rest);
            let s = sentence.trim();
            if !s.is_empty() {
                out.push(s.to_owned());
            }
        }
        out
    }

    /// The rest of the text as a last sentence, if any.
    pub fn flush(&mut self) -> Option<String> {
        let s = std::mem::take(&mut self.pending);
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_owned())
    }

    /// Byte index just after the end of the first complete sentence.
    fn find_end(&self) -> Option<usize> {
        let mut chars = self.pending.char_indices().peekable();
        let mut count = 0usize;
        while let Some((i, c)) = chars.next() {
            count += 1;
            let next = chars.peek().map(|(_, n)| *n);
            let boundary = match c {
                '\n' => true,
                '.' | '!' | '?' | '…' | ';' | ':' => next.is_some_and(char::is_whitespace),
                _ => false,
            };
            if boundary && (count >= self.min_chars || c == '\n') {
                return Some(i + c.len_utf8());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_buffer_releases_whole_words() {
        let mut w = WordBuffer::new();
        assert_eq!(w.push("Bonj"), None);
        assert_eq!(w.push("our, comm"), Some("Bonjour, ".to_owned()));
        assert_eq!(w.push("ent "), Some("comment ".to_owned()));
        assert_eq!(w.push("ça va ?"), Some("ça va ".to_owned()));
        assert_eq!(w.flush(), Some("?".to_owned()));
        assert_eq!(w.flush(), None);
    }

    #[test]
    fn word_buffer_keeps_every_character() {
        let text = "Le chat mange. Il dort ensuite, très longtemps !";
        let mut w = WordBuffer::new();
        let mut out = String::new();
        for c in text.chars() {
            if let Some(s) = w.push(&c.to_string()) {
                out.push_str(&s);
            }
        }
        out.push_str(&w.flush().unwrap_or_default());
        assert_eq!(out, text);
    }

    #[test]
    fn sentences_split_on_punctuation_followed_by_space() {
        let mut c = SentenceChunker::new(5);
        let mut got = Vec::new();
        for tok in [
            "Bonjour à tous",
            ". Comment",
            " allez-vous ? Tr",
            "ès bien",
            ".",
        ] {
            got.extend(c.push(tok));
        }
        assert_eq!(got, vec!["Bonjour à tous.", "Comment allez-vous ?"]);
        assert_eq!(c.flush(), Some("Très bien.".to_owned()));
    }

    #[test]
    fn short_fragments_are_kept_together() {
        let mut c = SentenceChunker::new(12);
        let got = c.push("M. Dupont est là. Il attend. ");
        // "M." is too short to end a sentence; "Il attend." too, until the rest comes.
        assert_eq!(got, vec!["M. Dupont est là."]);
        assert_eq!(c.push("Puis il part. "), vec!["Il attend. Puis il part."]);
        let mut c = SentenceChunker::new(12);
        assert!(c.push("3.14 est pi").is_empty());
        assert_eq!(c.push("\nSuite"), vec!["3.14 est pi"]);
    }
}
