//! The server's TOML configuration file.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"      # --listen overrides it
//! path = "/call"                 # WebSocket path
//! max_frame_bytes = 65536        # larger client frames close the call (1009)
//! max_calls = 10000              # beyond: HTTP 503 before the upgrade
//! idle_timeout_secs = 900        # no client frame for this long: close 1000 "Idle timeout"
//! allowed_origins = ["self", "loopback"]  # browser origins allowed to call ("*": any); others 403
//! max_calls_per_ip = 0           # concurrent calls per client address (0: no limit); beyond 503
//! trusted_proxies = []           # IPs/CIDRs whose X-Forwarded-For is believed
//! auth_failures_per_minute = 10  # failed authentications per address, then 429 for auth_block_secs
//! auth_block_secs = 60
//! header_read_timeout_secs = 10  # time to send the request headers (slowloris)
//! audio_burst_secs = 5           # user audio ahead of real time beyond this: close 1008 (0: off)
//! demo_page = true               # serve the web page and micdrop.js
//! drain_timeout_secs = 300       # on SIGTERM/SIGINT: calls in progress get this long to end
//!
//! [call]
//! system_prompt = "..."
//! first_message = "..."          # optional
//! generate_first_message = false
//! partial_messages = false
//! auto_end_call = true           # or a string: the tool's description
//! auto_semantic_turn = false
//! auto_ignore_user_noise = false
//! max_steps = 5
//! audio_lead_ms = 500            # assistant audio paced at real time + this lead; 0: unpaced
//! transcript_timeout_ms = 12000   # wait for a turn's transcript (Whisper default: 60000)
//!
//! extract = { json = true, description = "..." }   # optional: [call.extract]
//!
//! [params]                        # optional: JSON Schema of the first frame's params
//! type = "object"
//! properties = { name = { type = "string" } }
//!
//! [[tools]]                       # webhook tools; [[mcp]]: MCP servers (docs/agents.md)
//! name = "get_weather"
//! description = "..."
//! url = "https://tools.example.eu/weather"
//!
//! [auth]                          # optional section
//! bearer_tokens = ["..."]         # params {"authorization": "Bearer <token>"} then required
//! bearer_tokens_env = "MICDROP_BEARER_TOKENS"  # comma-separated tokens from the environment
//!
//! [telemetry]
//! metrics = true                 # GET /metrics (Prometheus) on the same listener
//! metrics_token = "..."          # optional: then /metrics needs "Authorization: Bearer <token>"
//! metrics_token_env = "MICDROP_METRICS_TOKEN"
//! otlp_endpoint = "http://127.0.0.1:4318"  # optional: export traces over OTLP/HTTP (docs/deploy.md)
//! service_name = "micdrop"       # service.name of the exported traces
//!
//! [store]                         # optional: without it nothing is persisted (docs/store.md)
//! url = "sqlite://micdrop-data/micdrop.db"   # or postgres://user:pass@host:5432/db
//! create_on_unknown = false       # unknown params conversation_id: 4404 (true: create it)
//! record_audio = false            # stereo WAV per call under recordings_dir
//! recordings_dir = "micdrop-data/recordings"
//! retention_days = 0              # 0: keep forever
//! webhook_url = "https://..."     # POST each call at its end, signed (X-Micdrop-Signature)
//! webhook_secret_env = "MICDROP_WEBHOOK_SECRET"
//!
//! [admin]                         # the admin API under /api (needs [store])
//! bearer_tokens = ["..."]         # admin tokens (never call tokens)
//! bearer_tokens_env = "MICDROP_ADMIN_TOKENS"
//! ```

use std::path::Path;
use std::time::Duration;

use micdrop_providers::config::{
    AgentProviderConfig, ProvidersConfig, SovereigntyConfig, SttProviderConfig, TtsKind,
    TtsProviderConfig,
};
use serde::Deserialize;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default transcript timeout with the in-process Whisper STT.
pub const WHISPER_TRANSCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Default WebSocket path.
pub const DEFAULT_PATH: &str = "/call";
/// Default maximum size of a client frame: 64 KiB (a 100 ms PCM frame is 3,200 bytes).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
/// Default maximum number of concurrent calls.
pub const DEFAULT_MAX_CALLS: usize = 10_000;
/// Default French system prompt of the sovereign stack.
pub const DEFAULT_SYSTEM_PROMPT: &str = "Tu es un assistant vocal serviable et chaleureux. Tu réponds en français, en phrases courtes et naturelles, faites pour être dites à voix haute : pas de listes, pas de markdown, pas d'emoji.";

/// An error in the configuration file, with the file and what is wrong (line and column
/// included for syntax and type errors).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has wrong keys or types.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// File path.
        path: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// `bool` or a custom description.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ToolToggle {
    /// On (default description) or off.
    Enabled(bool),
    /// On, with this description.
    Description(String),
}

impl Default for ToolToggle {
    fn default() -> Self {
        ToolToggle::Enabled(false)
    }
}

impl ToolToggle {
    /// `None` when off, `Some(None)` for the default description, `Some(Some(d))` for a custom one.
    pub fn description(&self) -> Option<Option<&str>> {
        match self {
            ToolToggle::Enabled(false) => None,
            ToolToggle::Enabled(true) => Some(None),
            ToolToggle::Description(d) => Some(Some(d)),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Listen address.
    pub listen: String,
    /// WebSocket path.
    pub path: String,
    /// Maximum client frame size in bytes.
    pub max_frame_bytes: usize,
    /// Maximum concurrent calls.
    pub max_calls: usize,
    /// Idle timeout in seconds.
    pub idle_timeout_secs: u64,
    /// Browser origins allowed to open calls (see [`crate::guard::GuardOptions`]).
    pub allowed_origins: Vec<String>,
    /// Maximum concurrent calls per client address (0: no limit).
    pub max_calls_per_ip: usize,
    /// Proxies whose `X-Forwarded-For` is believed (IPs or CIDRs).
    pub trusted_proxies: Vec<String>,
    /// Failed authentications per address and minute before HTTP 429 (0: no limit).
    pub auth_failures_per_minute: u32,
    /// How long an address gets HTTP 429 after too many failed authentications.
    pub auth_block_secs: u64,
    /// Time a client gets to send its request headers, in seconds (0: no limit).
    pub header_read_timeout_secs: u64,
    /// How far a user turn's audio may run ahead of real time, in seconds, before the call is
    /// closed with 1008 `Audio faster than real time` (0: no check; clients that send recorded
    /// audio as fast as they can, such as `micdrop call --fast`, need 0).
    pub audio_burst_secs: u64,
    /// Serve the demo web page and `micdrop.js`.
    pub demo_page: bool,
    /// WebSocket URLs of other servers the demo page may connect to (`?url=`), besides its own
    /// host.
    pub demo_allowed_urls: Vec<String>,
    /// On SIGTERM/SIGINT, how long calls in progress may go on before they get 1001.
    pub drain_timeout_secs: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            path: DEFAULT_PATH.into(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_calls: DEFAULT_MAX_CALLS,
            idle_timeout_secs: micdrop_core::call::DEFAULT_IDLE_TIMEOUT.as_secs(),
            allowed_origins: crate::guard::default_allowed_origins(),
            max_calls_per_ip: 0,
            trusted_proxies: Vec::new(),
            auth_failures_per_minute: crate::guard::DEFAULT_AUTH_FAILURES_PER_MINUTE,
            auth_block_secs: crate::guard::DEFAULT_AUTH_BLOCK.as_secs(),
            header_read_timeout_secs: crate::http::DEFAULT_HEADER_READ_TIMEOUT.as_secs(),
            audio_burst_secs: micdrop_core::call_budget::DEFAULT_AUDIO_BURST.as_secs(),
            demo_page: true,
            demo_allowed_urls: Vec::new(),
            drain_timeout_secs: crate::drain::DEFAULT_DRAIN_TIMEOUT.as_secs(),
        }
    }
}

impl ServerSection {
    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The guards' options.
    pub fn guard_options(&self) -> crate::guard::GuardOptions {
        crate::guard::GuardOptions {
            allowed_origins: self.allowed_origins.clone(),
            max_calls_per_ip: self.max_calls_per_ip,
            trusted_proxies: self.trusted_proxies.clone(),
            auth_failures_per_minute: self.auth_failures_per_minute,
            auth_block: Duration::from_secs(self.auth_block_secs),
        }
    }

    /// The header-read timeout (`None` when 0).
    pub fn header_read_timeout(&self) -> Option<Duration> {
        (self.header_read_timeout_secs > 0)
            .then(|| Duration::from_secs(self.header_read_timeout_secs))
    }

    /// The audio burst allowance (`None` when 0: no check).
    pub fn audio_burst(&self) -> Option<Duration> {
        (self.audio_burst_secs > 0).then(|| Duration::from_secs(self.audio_burst_secs))
    }

    /// The drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

/// `[call]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallSection {
    /// The agent's system prompt.
    pub system_prompt: String,
    /// A fixed first message.
    pub first_message: Option<String>,
    /// Ask the agent for the first message.
    pub generate_first_message: bool,
    /// Send partial assistant messages.
    pub partial_messages: bool,
    /// The `end_call` tool.
    pub auto_end_call: ToolToggle,
    /// The `semantic_turn` tool.
    pub auto_semantic_turn: ToolToggle,
    /// The `ignore_user_noise` tool.
    pub auto_ignore_user_noise: ToolToggle,
    /// Maximum model steps per answer.
    pub max_steps: usize,
    /// Without an agent: dictation (every transcript answered with `SkipAnswer`).
    pub dictation: bool,
    /// `[call.extract]`: structured data at the end of answers (see docs/agents.md).
    pub extract: Option<micdrop_tools::config::ExtractConfig>,
    /// Assistant audio is sent at real time plus this lead (ms); 0 sends it as fast as the TTS
    /// produces it.
    pub audio_lead_ms: u64,
    /// How long the end of a user turn waits for its transcript before the answer is skipped
    /// (ms). Default: 12 000, or 60 000 with `[stt] provider = "whisper"` (in-process, the
    /// transcript always comes, but a busy CPU or a queue of turns can make it late).
    pub transcript_timeout_ms: Option<u64>,
}

impl CallSection {
    /// The pacing lead of assistant audio (`None`: unpaced).
    pub fn audio_lead(&self) -> Option<Duration> {
        (self.audio_lead_ms > 0).then(|| Duration::from_millis(self.audio_lead_ms))
    }

    /// The transcript timeout: `transcript_timeout_ms`, else the default for the STT (see the
    /// field).
    pub fn transcript_timeout(&self, whisper: bool) -> Duration {
        match self.transcript_timeout_ms {
            Some(ms) => Duration::from_millis(ms.max(1)),
            None if whisper => WHISPER_TRANSCRIPT_TIMEOUT,
            None => micdrop_core::call::DEFAULT_TRANSCRIPT_TIMEOUT,
        }
    }
}

impl Default for CallSection {
    fn default() -> Self {
        Self {
            system_prompt: DEFAULT_SYSTEM_PROMPT.into(),
            first_message: None,
            generate_first_message: false,
            partial_messages: false,
            auto_end_call: ToolToggle::Enabled(true),
            auto_semantic_turn: ToolToggle::default(),
            auto_ignore_user_noise: ToolToggle::default(),
            max_steps: micdrop_core::agent::DEFAULT_MAX_STEPS,
            dictation: false,
            extract: None,
            audio_lead_ms: micdrop_core::call::DEFAULT_AUDIO_LEAD.as_millis() as u64,
            transcript_timeout_ms: None,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Accepted bearer tokens.
    pub bearer_tokens: Vec<String>,
    /// An environment variable holding more tokens, comma-separated.
    pub bearer_tokens_env: Option<String>,
}

impl AuthSection {
    /// Every accepted token (file and environment).
    pub fn tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .bearer_tokens
            .iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect();
        if let Some(var) = &self.bearer_tokens_env {
            if let Ok(v) = std::env::var(var) {
                tokens.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned),
                );
            }
        }
        tokens
    }
}

/// `[admin]`: the admin API's tokens (separate from the call tokens of `[auth]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Accepted admin bearer tokens.
    pub bearer_tokens: Vec<String>,
    /// An environment variable holding more admin tokens, comma-separated.
    pub bearer_tokens_env: Option<String>,
}

impl AdminSection {
    /// Every accepted admin token (file and environment).
    pub fn tokens(&self) -> Vec<String> {
        AuthSection {
            bearer_tokens: self.bearer_tokens.clone(),
            bearer_tokens_env: self.bearer_tokens_env.clone(),
        }
        .tokens()
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`.
    pub server: ServerSection,
    /// `[call]`.
    pub call: CallSection,
    /// `[auth]` (optional).
    pub auth: Option<AuthSection>,
    /// `[store]` (optional): the conversation store (docs/store.md).
    pub store: Option<micdrop_store::StoreConfig>,
    /// `[admin]` (optional): the admin API (needs `[store]`).
    pub admin: Option<AdminSection>,
    /// `[agent]`: the agent's model provider (see docs/providers.md).
    pub agent: AgentProviderConfig,
    /// `[stt]`: speech-to-text provider.
    pub stt: SttProviderConfig,
    /// `[tts]`: text-to-speech provider (`provider = "none"`: text-only answers).
    pub tts: TtsProviderConfig,
    /// `[sovereignty]`: the EU data policy.
    pub sovereignty: SovereigntyConfig,
    /// `[sim]`: the simulators' script for `serve --sim` (see docs/simulators.md).
    #[cfg(feature = "sim")]
    pub sim: Option<micdrop_sim::SimScript>,
    /// `[sim]`: accepted and ignored in a build without the simulators (feature `sim` off).
    #[cfg(not(feature = "sim"))]
    pub sim: Option<toml::Table>,
    /// `[telemetry]`: metrics and traces (see docs/deploy.md).
    pub telemetry: crate::telemetry::TelemetrySection,
    /// `[[tools]]`: webhook tools (see docs/agents.md).
    pub tools: Vec<micdrop_tools::config::WebhookToolConfig>,
    /// `[[mcp]]`: MCP servers whose tools the agent may call (see docs/agents.md).
    pub mcp: Vec<micdrop_tools::config::McpServerConfig>,
    /// `[params]`: the JSON Schema of the params a client sends in its first frame; the
    /// prompt templates see them as `params` (see docs/agents.md).
    pub params: Option<micdrop_tools::config::ParamsConfig>,
}

impl Config {
    /// The providers' part of the configuration.
    pub fn providers(&self) -> ProvidersConfig {
        ProvidersConfig {
            agent: self.agent.clone(),
            stt: self.stt.clone(),
            tts: (self.tts.provider != TtsKind::None).then(|| self.tts.clone()),
            sovereignty: self.sovereignty.clone(),
        }
    }

    /// Parses a TOML text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.server.path.starts_with('/') {
            return Err(ConfigError::Invalid(format!(
                "[server] path must start with '/', got {:?}",
                self.server.path
            )));
        }
        if self.server.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "[server] max_frame_bytes must be at least 1024".into(),
            ));
        }
        if self.server.max_calls == 0 {
            return Err(ConfigError::Invalid(
                "[server] max_calls must be at least 1".into(),
            ));
        }
        if self.server.idle_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "[server] idle_timeout_secs must be at least 1".into(),
            ));
        }
        self.server
            .guard_options()
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("[server] {e}")))?;
        for u in &self.server.demo_allowed_urls {
            if !(u.starts_with("ws://") || u.starts_with("wss://")) {
                return Err(ConfigError::Invalid(format!(
                    "[server] demo_allowed_urls: {u:?} is not a ws:// or wss:// URL"
                )));
            }
        }
        #[cfg(feature = "sim")]
        if let Some(sim) = &self.sim {
            sim.validate()
                .map_err(|e| ConfigError::Invalid(format!("[sim] {e}")))?;
        }
        if self.call.dictation && (!self.tools.is_empty() || !self.mcp.is_empty()) {
            return Err(ConfigError::Invalid(
                "[[tools]] and [[mcp]] need an agent: [call] dictation = true has none".into(),
            ));
        }
        if let Some(extract) = &self.call.extract {
            extract.to_extract().map_err(ConfigError::Invalid)?;
        }
        if let Some(store) = &self.store {
            store.validate().map_err(ConfigError::Invalid)?;
        }
        if let Some(admin) = &self.admin {
            if self.store.is_none() {
                return Err(ConfigError::Invalid(
                    "[admin] needs a [store] (the admin API serves stored calls)".into(),
                ));
            }
            if admin.bearer_tokens.is_empty() && admin.bearer_tokens_env.is_none() {
                return Err(ConfigError::Invalid(
                    "[admin] needs bearer_tokens or bearer_tokens_env".into(),
                ));
            }
            if let Some(auth) = &self.auth {
                if admin
                    .bearer_tokens
                    .iter()
                    .any(|t| auth.bearer_tokens.contains(t))
                {
                    return Err(ConfigError::Invalid(
                        "[admin] bearer_tokens must differ from the call tokens of [auth]".into(),
                    ));
                }
            }
        }
        if let Some(auth) = &self.auth {
            if auth.bearer_tokens.is_empty() && auth.bearer_tokens_env.is_none() {
                return Err(ConfigError::Invalid(
                    "[auth] needs bearer_tokens or bearer_tokens_env".into(),
                ));
            }
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            crate::traces::traces_url(endpoint).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if self.telemetry.service_name.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "[telemetry] service_name must not be empty".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_sections() {
        let c = Config::from_toml(
            r#"
[call]
system_prompt = "Be brief."
first_message = "Hello"
partial_messages = true
auto_end_call = "Hang up when asked."
[auth]
bearer_tokens = ["secret"]
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.call.first_message.as_deref(), Some("Hello"));
        assert!(c.call.partial_messages);
        assert_eq!(
            c.call.auto_end_call.description(),
            Some(Some("Hang up when asked."))
        );
        assert_eq!(c.server.path, "/call");
        assert_eq!(c.auth.unwrap().tokens(), vec!["secret".to_owned()]);
        assert_eq!(c.server.audio_burst(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn audio_burst_zero_disables_the_check() {
        let c = Config::from_toml("[server]\naudio_burst_secs = 0\n", "t.toml").unwrap();
        assert_eq!(c.server.audio_burst(), None);
        let c = Config::from_toml("[server]\naudio_burst_secs = 2\n", "t.toml").unwrap();
        assert_eq!(c.server.audio_burst(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn the_transcript_timeout_is_longer_for_whisper_unless_set() {
        let c = Config::from_toml("", "t.toml").unwrap();
        assert_eq!(c.call.transcript_timeout(false), Duration::from_secs(12));
        assert_eq!(c.call.transcript_timeout(true), WHISPER_TRANSCRIPT_TIMEOUT);
        let c = Config::from_toml("[call]\ntranscript_timeout_ms = 3000\n", "t.toml").unwrap();
        assert_eq!(c.call.transcript_timeout(true), Duration::from_secs(3));
    }

    #[test]
    fn clear_errors_with_line() {
        let e = Config::from_toml("[call]\nfirst_mesage = \"x\"\n", "my.toml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("my.toml"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("first_mesage"), "{msg}");
        let e = Config::from_toml("[server]\nmax_calls = \"many\"\n", "my.toml").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = Config::from_toml("[server]\npath = \"call\"\n", "my.toml").unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");
    }
}
