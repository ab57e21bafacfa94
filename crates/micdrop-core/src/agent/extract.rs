//! The `extract` option: structured data at the end of an answer, withheld from speech while
//! streaming, cut from the message and saved in `metadata.extracted`.

use std::sync::Arc;

use serde_json::Value;

/// Callback receiving the extracted value.
pub type ExtractCallback = Arc<dyn Fn(Value) + Send + Sync>;

/// How to find the extracted data.
#[derive(Clone)]
pub struct Extract {
    start: String,
    end: String,
    json: bool,
    /// Save the value in `metadata.extracted` of the assistant message (default true).
    pub save_in_metadata: bool,
    /// Called with the value when an answer carried one.
    pub callback: Option<ExtractCallback>,
}

impl std::fmt::Debug for Extract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extract")
            .field("start", &self.start)
            .field("end", &self.end)
            .field("json", &self.json)
            .field("save_in_metadata", &self.save_in_metadata)
            .finish()
    }
}

impl Extract {
    /// JSON at the end of the answer: from the first `{` to the last `}`, parsed.
    pub fn json() -> Self {
        Self {
            start: "{".into(),
            end: "}".into(),
            json: true,
            save_in_metadata: true,
            callback: None,
        }
    }

    /// Text between `start` and `end` tags at the end of the answer.
    pub fn tags(start: impl Into<String>, end: impl Into<String>) -> Self {
        Self {
            start: start.into(),
            end: end.into(),
            json: false,
            save_in_metadata: true,
            callback: None,
        }
    }

    /// Sets the callback.
    pub fn with_callback(mut self, f: impl Fn(Value) + Send + Sync + 'static) -> Self {
        self.callback = Some(Arc::new(f));
        self
    }

    /// Splits a whole answer into the spoken message and the extracted value.
    pub fn split(&self, text: &str) -> (String, Option<Value>) {
        let Some(start) = text.find(&self.start) else {
            return (text.to_owned(), None);
        };
        let message = text[..start].trim_end().to_owned();
        let rest = &text[start..];
        let value = if self.json {
            rest.rfind(&self.end)
                .and_then(|end| serde_json::from_str::<Value>(&rest[..end + self.end.len()]).ok())
        } else {
            let inner = &rest[self.start.len()..];
            let inner = inner.find(&self.end).map_or(inner, |end| &inner[..end]);
            Some(Value::String(inner.trim().to_owned()))
        };
        (message, value)
    }
}

/// Withholds streamed text from the start tag on (and a tail that could be the start of it).
#[derive(Debug)]
pub(crate) struct ExtractStream {
    start: String,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl ExtractStream {
    pub(crate) fn new(extract: Option<&Extract>) -> Self {
        Self {
            start: extract.map(|e| e.start.clone()).unwrap_or_default(),
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Adds a delta; returns the text that may be spoken now.
    pub(crate) fn push(&mut self, delta: &str) -> String {
        self.text.push_str(delta);
        if self.stopped {
            return String::new();
        }
        if self.start.is_empty() {
            self.emitted = self.text.len();
            return delta.to_owned();
        }
        let limit = match self.text.find(&self.start) {
            Some(pos) => {
                self.stopped = true;
                pos
            }
            None => {
                // Hold back a tail that is a prefix of the start tag.
                let mut limit = self.text.len();
                for k in (1..self.start.len()).rev() {
                    if self.text.len() >= k
                        && self.text.is_char_boundary(self.text.len() - k)
                        && self.start.starts_with(&self.text[self.text.len() - k..])
                    {
                        limit = self.text.len() - k;
                        break;
                    }
                }
                limit
            }
        };
        if limit <= self.emitted {
            return String::new();
        }
        let out = self.text[self.emitted..limit].to_owned();
        self.emitted = limit;
        out
    }

    /// The whole text received.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Text withheld as a possible tag prefix that turned out not to be one (at the end).
    pub(crate) fn flush(&mut self) -> String {
        if self.stopped || self.emitted >= self.text.len() {
            return String::new();
        }
        let out = self.text[self.emitted..].to_owned();
        self.emitted = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_split() {
        let e = Extract::json();
        let (m, v) = e.split("Très bien. {\"age\": 42}");
        assert_eq!(m, "Très bien.");
        assert_eq!(v, Some(serde_json::json!({"age": 42})));
        assert_eq!(e.split("No data").1, None);
    }

    #[test]
    fn tag_split_and_stream() {
        let e = Extract::tags("<data>", "</data>");
        let (m, v) = e.split("Hello <data> x </data>");
        assert_eq!(m, "Hello");
        assert_eq!(v, Some(serde_json::json!("x")));
        let mut s = ExtractStream::new(Some(&e));
        let mut spoken = String::new();
        for d in ["Hel", "lo <", "da", "ta> x", " </data>"] {
            spoken.push_str(&s.push(d));
        }
        spoken.push_str(&s.flush());
        assert_eq!(spoken, "Hello ");
        let mut s = ExtractStream::new(Some(&e));
        let mut spoken = s.push("a <b");
        spoken.push_str(&s.flush());
        assert_eq!(spoken, "a <b");
    }
}
