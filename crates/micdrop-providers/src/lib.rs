//! # micdrop-providers
//!
//! Sovereign providers for micdrop-rs: the Mistral agent model (also any OpenAI-compatible
//! server), Gladia speech-to-text, Gradium text-to-speech and speech-to-text, fallbacks between
//! providers, and the TOML configuration that selects them.
//!
//! Layout:
//! - [`config`]: [`ProvidersConfig`] (`[agent]`, `[stt]`, `[tts]`, `[sovereignty]`), keys from
//!   the environment, the EU data policy, and [`ProvidersConfig::build`] → [`Providers`].
//! - [`mistral`]: [`MistralModel`], a [`ChatModel`](micdrop_core::agent::ChatModel).
//! - [`gladia`]: [`GladiaStt`]; [`gradium`]: [`GradiumTts`] and [`GradiumStt`].
//! - [`fallback`]: [`FallbackModel`], [`FallbackStt`], [`FallbackTts`].
//! - [`retry`], [`http`], [`secret`]: retries with backoff, error bodies, redacted keys.
//! - [`link`]: the reconnecting WebSocket link of the Gladia and Gradium sessions (backoff,
//!   bounded retries, on-demand opening, idle close, recycling before a session cap).
//! - [`audio`], [`text`]: resampling and word/sentence chunking; [`ws`]: WebSocket plumbing.
//!
//! ```no_run
//! use micdrop_providers::ProvidersConfig;
//!
//! // With MISTRAL_API_KEY, GLADIA_API_KEY and GRADIUM_API_KEY set, the defaults are the
//! // sovereign stack: Mistral + Gladia (eu-west) + Gradium (eu), a French voice.
//! let config = ProvidersConfig::default();
//! assert!(config.missing_keys().is_empty(), "set {:?}", config.missing_keys());
//! config.check_sovereignty().expect("EU endpoints only");
//! let providers = config.build().expect("valid configuration");
//! println!("agent model: {}", providers.model.name());
//! ```

pub mod audio;
pub mod config;
pub mod fallback;
pub mod gladia;
pub mod gradium;
pub mod http;
pub mod link;
pub mod local;
pub mod mistral;
pub mod retry;
pub mod secret;
pub mod text;
pub mod ws;

#[cfg(test)]
mod testutil;

pub use config::{
    AgentProviderConfig, ConfigError, Providers, ProvidersConfig, SovereigntyConfig,
    SovereigntyError, SttProviderConfig, TtsProviderConfig,
};
pub use fallback::{FallbackModel, FallbackStt, FallbackTts};
pub use gladia::GladiaStt;
pub use gradium::{GradiumStt, GradiumTts};
pub use mistral::{MistralModel, MistralOptions};
pub use retry::RetryPolicy;
pub use secret::ApiKey;
