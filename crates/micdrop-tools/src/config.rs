//! The TOML sections this crate reads: `[[tools]]` (webhooks), `[[mcp]]` (MCP servers),
//! `[params]` and `[call.extract]`. The server embeds them in its configuration file; values
//! written `${VAR}` (headers, MCP `env`, URLs) are read from the environment at start-up.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

/// Default timeout of a webhook request.
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 10_000;
/// Default timeout of an MCP tool call.
pub const DEFAULT_MCP_TIMEOUT_MS: u64 = 30_000;
/// Default time an MCP server gets to start and list its tools.
pub const DEFAULT_MCP_STARTUP_TIMEOUT_MS: u64 = 20_000;

/// The HTTP method of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WebhookMethod {
    /// The arguments are the JSON body (default).
    #[default]
    Post,
    /// The arguments are query parameters.
    Get,
}

/// One `[[tools]]` entry: a tool the model calls, answered by an HTTP endpoint.
///
/// ```toml
/// [[tools]]
/// name = "get_weather"
/// description = "Météo actuelle d'une ville"
/// url = "https://tools.example.eu/weather"
/// method = "POST"
/// headers = { authorization = "Bearer ${WEATHER_TOKEN}" }
/// parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }
/// timeout_ms = 5000
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookToolConfig {
    /// The tool's name for the model (`[a-zA-Z0-9_-]{1,64}`).
    pub name: String,
    /// What the tool does and when to call it.
    pub description: String,
    /// The endpoint (`http` or `https`; `${VAR}` expanded).
    pub url: String,
    /// `POST` (JSON body, the default) or `GET` (query parameters).
    #[serde(default)]
    pub method: WebhookMethod,
    /// Request headers; values may use `${VAR}` (never logged).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON Schema of the arguments (an object schema); arguments are validated against it
    /// before the request.
    #[serde(default = "empty_object_schema")]
    pub parameters: Value,
    /// Request timeout (the model gets `{"error": "..."}` when it strikes).
    #[serde(default = "default_webhook_timeout")]
    pub timeout_ms: u64,
    /// Stop the answer after the tool runs (Micdrop's `skipAnswer`).
    #[serde(default)]
    pub skip_answer: bool,
    /// Send the result to the client as a `ToolCall` frame (Micdrop's `emitOutput`).
    #[serde(default)]
    pub emit_output: bool,
}

impl std::fmt::Debug for WebhookToolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookToolConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("method", &self.method)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

/// One `[[mcp]]` entry: an MCP server whose tools the model may call.
///
/// ```toml
/// [[mcp]]
/// name = "crm"
/// command = "crm-mcp-server"          # stdio: a child process, restarted if it dies
/// args = ["--region", "eu"]
/// env = { CRM_TOKEN = "${CRM_TOKEN}" }
/// # or: url = "https://mcp.example.eu/mcp" and headers = { ... } (streamable HTTP)
/// allowed_tools = ["find_customer", "create_ticket"]
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// A name for logs and errors.
    pub name: String,
    /// stdio transport: the program to run.
    #[serde(default)]
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables of the child process (`${VAR}` expanded; never logged).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the child process.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Streamable HTTP transport: the server's endpoint.
    #[serde(default)]
    pub url: Option<String>,
    /// HTTP headers (`${VAR}` expanded; never logged).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Only these tools are offered to the model (default: all the server lists).
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// One connection (one child process) per call instead of one shared by every call.
    #[serde(default)]
    pub per_call: bool,
    /// Timeout of one tool call.
    #[serde(default = "default_mcp_timeout")]
    pub timeout_ms: u64,
    /// Time the server gets to start and answer the initialization and the tool list.
    #[serde(default = "default_mcp_startup_timeout")]
    pub startup_timeout_ms: u64,
}

impl std::fmt::Debug for McpServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServerConfig")
            .field("name", &self.name)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("allowed_tools", &self.allowed_tools)
            .field("per_call", &self.per_call)
            .finish_non_exhaustive()
    }
}

/// `[params]`: what a client may pass in its first frame, as a JSON Schema (the section itself
/// is the schema). `authorization` and `conversation_id` are always accepted.
///
/// ```toml
/// [params]
/// type = "object"
/// properties = { name = { type = "string" }, lang = { enum = ["fr", "en"] } }
/// required = ["name"]
/// ```
pub type ParamsConfig = Value;

/// How `[call.extract]` finds the data.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractConfig {
    /// JSON at the end of the answer (from the first `{` to the last `}`).
    pub json: bool,
    /// Or: text between these tags at the end of the answer.
    pub start_tag: Option<String>,
    /// The closing tag (with `start_tag`).
    pub end_tag: Option<String>,
    /// What to extract and how, told to the model: appended to the system prompt.
    pub description: Option<String>,
    /// Save the value in the assistant message's `metadata.extracted` (default true).
    pub save_in_metadata: Option<bool>,
}

impl ExtractConfig {
    /// The core extract option, or an error message for an inconsistent section.
    pub fn to_extract(&self) -> Result<micdrop_core::agent::Extract, String> {
        let mut e = match (self.json, &self.start_tag, &self.end_tag) {
            (true, None, None) => micdrop_core::agent::Extract::json(),
            (false, Some(s), Some(end)) if !s.is_empty() && !end.is_empty() => {
                micdrop_core::agent::Extract::tags(s.clone(), end.clone())
            }
            (true, _, _) => {
                return Err(
                    "[call.extract] takes `json = true` or `start_tag`/`end_tag`, not both".into(),
                );
            }
            _ => {
                return Err(
                    "[call.extract] needs `json = true` or both `start_tag` and `end_tag`".into(),
                );
            }
        };
        e.save_in_metadata = self.save_in_metadata.unwrap_or(true);
        Ok(e)
    }
}

fn empty_object_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

fn default_webhook_timeout() -> u64 {
    DEFAULT_WEBHOOK_TIMEOUT_MS
}

fn default_mcp_timeout() -> u64 {
    DEFAULT_MCP_TIMEOUT_MS
}

fn default_mcp_startup_timeout() -> u64 {
    DEFAULT_MCP_STARTUP_TIMEOUT_MS
}
