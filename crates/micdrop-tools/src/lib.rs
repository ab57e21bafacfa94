//! # micdrop-tools
//!
//! Agents without Rust: everything an agent needs besides its model, from the server's TOML
//! configuration.
//!
//! - [`webhook`]: `[[tools]]`, tools answered by HTTP endpoints (POST JSON or GET query).
//! - [`mcp`]: `[[mcp]]`, the tools of MCP servers (stdio child processes or streamable HTTP),
//!   through the official SDK `rmcp`.
//! - [`params`]: `[params]`, the JSON Schema of a call's first frame, and the `minijinja`
//!   templates of the system prompt and first message.
//! - [`config`]: the TOML shapes, `[call.extract]` included.
//! - [`host`]: [`AgentHost`] puts them together: one agent per call, its prompt rendered from
//!   the call's params, its tools bound to the call.
//!
//! Every tool is a [`micdrop_core::agent::Tool`]: errors reach the model as
//! `{"error": "..."}`, and cancelling an answer (barge-in) drops the tool's future, which aborts
//! the HTTP request or cancels the MCP request.
//!
//! ```no_run
//! # async fn demo(model: std::sync::Arc<dyn micdrop_core::agent::ChatModel>) -> Result<(), micdrop_tools::ToolsError> {
//! use micdrop_tools::{ToolSet, config::WebhookToolConfig};
//! let tools: Vec<WebhookToolConfig> = toml::from_str::<toml::Table>(r#"
//! [[tools]]
//! name = "get_weather"
//! description = "Météo actuelle d'une ville"
//! url = "http://127.0.0.1:9000/weather"
//! parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }
//! "#).unwrap()["tools"].clone().try_into().unwrap();
//! let set = ToolSet::start(&tools, &[], &["end_call"]).await?;
//! let mut agent = micdrop_core::agent::Agent::new(model, "Tu es un assistant météo.");
//! for tool in set.tools_for_call() {
//!     agent = agent.tool(tool);
//! }
//! # Ok(()) }
//! ```

pub mod config;
pub mod env;
pub mod host;
pub mod mcp;
pub mod params;
pub mod webhook;

use std::collections::BTreeMap;

use micdrop_core::agent::Tool;
use url::Url;

pub use host::AgentHost;
pub use mcp::McpServer;
pub use params::{ParamsSpec, PromptTemplates};
pub use webhook::Webhook;

use crate::config::{McpServerConfig, WebhookToolConfig};

/// Why the tools could not be set up (a start-up error: the server does not start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolsError {
    /// A `[[tools]]` entry is wrong.
    #[error("[[tools]] {name}: {message}")]
    Tool {
        /// The tool.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// An MCP server is wrong, did not start, or did not list its tools.
    #[error("[[mcp]] {name}: {message}")]
    Mcp {
        /// The server.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// Two tools have the same name.
    #[error("tool name clash: {name} is offered by {first} and by {second}")]
    Clash {
        /// The name.
        name: String,
        /// Where it came from first.
        first: String,
        /// Where it came from again.
        second: String,
    },
    /// `[params]` is wrong.
    #[error("[params]: {0}")]
    Params(String),
    /// A prompt template is wrong.
    #[error("{0}")]
    Template(String),
    /// `[call.extract]` is wrong.
    #[error("{0}")]
    Extract(String),
}

/// Installs rustls' `ring` provider as the process default, once (the MCP HTTP transport's
/// client needs one; the rest of the workspace picks its provider explicitly).
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The webhook tools and MCP servers of a server, started once and shared by every call.
#[derive(Debug, Default)]
pub struct ToolSet {
    webhooks: Vec<Tool>,
    mcp: Vec<McpServer>,
}

impl ToolSet {
    /// The endpoints the tools reach (webhook URLs, MCP HTTP URLs), labelled for errors, without
    /// starting anything: check them against the data policy before [`ToolSet::start`].
    pub fn endpoints(
        webhooks: &[WebhookToolConfig],
        mcp: &[McpServerConfig],
    ) -> Result<Vec<(String, Url)>, ToolsError> {
        let mut out = Vec::new();
        for w in webhooks {
            let hook = Webhook::new(w, reqwest::Client::new())?;
            out.push((format!("tool {}", w.name), hook.url().clone()));
        }
        for m in mcp {
            if let Some(url) = McpServer::endpoint(m)? {
                out.push((format!("mcp {}", m.name), url));
            }
        }
        Ok(out)
    }

    /// Builds the webhooks, starts the MCP servers (in order) and lists their tools. `reserved`
    /// are the names of tools the agent already has (`end_call`, ...): a clash with any of
    /// them, or between two tools, is an error.
    pub async fn start(
        webhooks: &[WebhookToolConfig],
        mcp: &[McpServerConfig],
        reserved: &[&str],
    ) -> Result<ToolSet, ToolsError> {
        let mut owners: BTreeMap<String, String> = reserved
            .iter()
            .map(|n| ((*n).to_owned(), "the automatic tools".to_owned()))
            .collect();
        let mut claim = |name: &str, owner: String| -> Result<(), ToolsError> {
            if let Some(first) = owners.get(name) {
                return Err(ToolsError::Clash {
                    name: name.to_owned(),
                    first: first.clone(),
                    second: owner,
                });
            }
            owners.insert(name.to_owned(), owner);
            Ok(())
        };
        let client = webhook::http_client();
        let mut set = ToolSet::default();
        for w in webhooks {
            claim(&w.name, "[[tools]]".into())?;
            set.webhooks
                .push(Webhook::new(w, client.clone())?.into_tool(w));
        }
        let mut names = std::collections::BTreeSet::new();
        for m in mcp {
            if !names.insert(m.name.clone()) {
                return Err(ToolsError::Mcp {
                    name: m.name.clone(),
                    message: "two [[mcp]] servers have this name".into(),
                });
            }
            let server = match McpServer::start(m).await {
                Ok(s) => s,
                Err(e) => {
                    set.shutdown().await;
                    return Err(e);
                }
            };
            for t in server.tool_names() {
                if let Err(e) = claim(t, format!("MCP server {}", m.name)) {
                    server.shutdown().await;
                    set.shutdown().await;
                    return Err(e);
                }
            }
            set.mcp.push(server);
        }
        Ok(set)
    }

    /// Whether there is no tool at all.
    pub fn is_empty(&self) -> bool {
        self.webhooks.is_empty() && self.mcp.is_empty()
    }

    /// The names of every tool, webhooks first.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.webhooks.iter().map(|t| t.name.clone()).collect();
        for m in &self.mcp {
            names.extend(m.tool_names().into_iter().map(str::to_owned));
        }
        names
    }

    /// The tools of one call (MCP servers with `per_call` get a connection of this call).
    pub fn tools_for_call(&self) -> Vec<Tool> {
        let mut tools = self.webhooks.clone();
        for m in &self.mcp {
            tools.extend(m.tools_for_call());
        }
        tools
    }

    /// Stops the MCP servers' shared connections.
    pub async fn shutdown(&self) {
        for m in &self.mcp {
            m.shutdown().await;
        }
    }
}
