//! Shared helpers: the models of the cache (pulled by `scripts/test` before the tests).

#![allow(dead_code)]

use std::path::PathBuf;

use micdrop_local::models::ModelsDir;

/// The models cache of the tests (`MICDROP_MODELS_DIR` or the default).
pub fn models() -> ModelsDir {
    ModelsDir::from_env()
}

/// A Whisper model of the cache; panics with the command to run if it is missing.
pub fn whisper_model(name: &str) -> PathBuf {
    models().whisper_model(name).unwrap_or_else(|e| {
        panic!("{e} (scripts/test pulls the models the tests need: scripts/pull-models)")
    })
}

/// Accent- and case-insensitive form, for comparing transcripts.
pub fn fold(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| match c {
            'à' | 'â' | 'ä' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'î' | 'ï' => 'i',
            'ô' | 'ö' => 'o',
            'ù' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            c => c,
        })
        .collect()
}

/// Whether `text` contains at least `min` of `words` (Whisper's spelling may vary).
pub fn has_words(text: &str, words: &[&str], min: usize) -> bool {
    let t = fold(text);
    words.iter().filter(|w| t.contains(&fold(w))).count() >= min
}
