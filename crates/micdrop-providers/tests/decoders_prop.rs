//! Property tests: decoders of untrusted bytes never panic; text plumbing loses nothing.

use micdrop_providers::audio::PcmResampler;
use micdrop_providers::mistral::StreamParser;
use micdrop_providers::text::{SentenceChunker, WordBuffer};
use micdrop_providers::{gladia, gradium, http};
use proptest::prelude::*;

/// Strings that look like provider JSON often enough to reach deep branches.
fn jsonish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\{\"type\":\"(transcript|audio_chunk|audio|text|flushed|error|ready|end_of_stream)\"(,\"[a-z_]{1,12}\":(null|[0-9.]{1,6}|\"[a-z ]{0,8}\"|\\[[0-9, ]{0,10}\\]|\\{\\}))*\\}",
        "\\{\"choices\":\\[\\{\"index\":[0-2],\"delta\":\\{(\"content\":(null|\"[a-z ]{0,8}\"|\\[\\{\"type\":\"text\",\"text\":\"x\"\\}\\])|\"tool_calls\":\\[\\{(\"index\":[0-3],)?(\"id\":\"[a-z0-9]{0,12}\",)?\"function\":\\{\"name\":\"[a-z]{0,5}\",\"arguments\":(\"[{}a-z]{0,6}\"|\\{\\}|null)\\}\\}\\])?\\},\"finish_reason\":(null|\"stop\"|\"tool_calls\")\\}\\]\\}",
    ]
}

proptest! {
    #[test]
    fn gladia_parser_never_panics(s in jsonish()) {
        let _ = gladia::parse_message(&s);
    }

    #[test]
    fn gradium_parser_never_panics(s in jsonish()) {
        let _ = gradium::parse_message(&s);
    }

    #[test]
    fn mistral_stream_parser_never_panics(lines in proptest::collection::vec(jsonish(), 0..8)) {
        let mut p = StreamParser::default();
        for l in &lines {
            let _ = p.feed(l);
        }
        let _ = p.take_calls();
    }

    #[test]
    fn error_bodies_never_panic(s in jsonish()) {
        let m = http::error_message(&s);
        prop_assert!(m.len() <= http::MAX_ERROR_BODY + 4);
    }

    #[test]
    fn word_buffer_keeps_every_character(pieces in proptest::collection::vec(any::<String>(), 0..10)) {
        let mut w = WordBuffer::new();
        let mut out = String::new();
        for p in &pieces {
            if let Some(s) = w.push(p) {
                prop_assert!(s.ends_with(char::is_whitespace));
                out.push_str(&s);
            }
        }
        out.push_str(&w.flush().unwrap_or_default());
        prop_assert_eq!(out, pieces.concat());
    }

    #[test]
    fn sentence_chunker_keeps_every_word(pieces in proptest::collection::vec("[a-zé .!?\n]{0,12}", 0..12)) {
        let mut c = SentenceChunker::default();
        let mut out = Vec::new();
        for p in &pieces {
            out.extend(c.push(p));
        }
        out.extend(c.flush());
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        prop_assert_eq!(words(&out.join(" ")), words(&pieces.concat()));
    }

    #[test]
    fn resampler_output_length_matches_the_ratio(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 0..6),
        to in prop_oneof![Just(16_000u32), Just(24_000u32), Just(8_000u32)],
    ) {
        let mut r = PcmResampler::new(48_000, to).unwrap();
        let mut n = 0;
        let mut total_in = 0;
        for c in &chunks {
            total_in += c.len();
            n += r.push(c).len();
        }
        n += r.flush().len();
        let expected = (total_in / 2) as u64 * u64::from(to) / 48_000;
        prop_assert_eq!(n as u64, expected * 2);
    }
}
