//! MCP servers (Model Context Protocol, through the official Rust SDK `rmcp`): their tools are
//! offered to the model under their own names, with the JSON Schemas the servers give.
//!
//! - **stdio**: the server is a child process; when it dies, its tools return errors and the
//!   next call restarts it (at most one attempt per [`RESTART_INTERVAL`]).
//! - **streamable HTTP**: the server is reached at its URL (same-origin redirects only).
//!
//! One connection per server is shared by every call, unless the server is declared
//! `per_call = true`: each call then opens its own connection at its first tool call, closed
//! (the child process stopped) when the call ends. A tool call's text content becomes the tool
//! result; `isError` results, timeouts and a dead server become `{"error": "..."}` for the model.
//! Dropping a tool call's future (a barge-in) cancels the request on the server
//! (`notifications/cancelled`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use micdrop_core::agent::Tool;
use rmcp::RoleClient;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{Peer, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use serde_json::Value;
use tracing::{info, warn};
use url::Url;

use crate::ToolsError;
use crate::config::McpServerConfig;
use crate::env::expand_env;
use crate::webhook::check_tool_name;

/// Minimum time between two attempts to (re)start a server.
pub const RESTART_INTERVAL: Duration = Duration::from_secs(1);

/// How to reach a server (values already expanded).
#[derive(Clone)]
enum Transport {
    Stdio {
        command: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
    },
    Http {
        url: Url,
        headers: HashMap<http::HeaderName, http::HeaderValue>,
    },
}

/// A server's resolved settings.
struct Spec {
    name: String,
    transport: Transport,
    call_timeout: Duration,
    startup_timeout: Duration,
}

type Service = RunningService<RoleClient, ()>;

/// One connection to a server, (re)opened on demand.
struct Connection {
    spec: Arc<Spec>,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    service: Option<Service>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

impl Connection {
    fn new(spec: Arc<Spec>, service: Option<Service>) -> Self {
        Self {
            spec,
            state: tokio::sync::Mutex::new(State {
                last_attempt: service.as_ref().map(|_| Instant::now()),
                service,
                last_error: None,
            }),
        }
    }

    /// A live peer: the current connection, or a new one if it died (throttled).
    async fn peer(&self) -> Result<Peer<RoleClient>, String> {
        let mut state = self.state.lock().await;
        if let Some(service) = &state.service {
            if !service.is_closed() && !service.peer().is_transport_closed() {
                return Ok(service.peer().clone());
            }
            warn!(mcp = %self.spec.name, "MCP server stopped; it will be restarted");
            state.service = None;
        }
        if let Some(at) = state.last_attempt {
            if at.elapsed() < RESTART_INTERVAL {
                let why = state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "it stopped".to_owned());
                return Err(format!(
                    "MCP server {} is not available ({why}); retry in a moment",
                    self.spec.name
                ));
            }
        }
        state.last_attempt = Some(Instant::now());
        match connect(&self.spec).await {
            Ok(service) => {
                info!(mcp = %self.spec.name, "MCP server (re)started");
                let peer = service.peer().clone();
                state.service = Some(service);
                state.last_error = None;
                Ok(peer)
            }
            Err(e) => {
                warn!(mcp = %self.spec.name, error = %e, "MCP server cannot start");
                state.last_error = Some(e.clone());
                Err(format!(
                    "MCP server {} is not available: {e}",
                    self.spec.name
                ))
            }
        }
    }

    /// Calls a tool; `Err` is the message for the model.
    async fn call(&self, tool: &str, args: Value) -> Result<Value, String> {
        let peer = self.peer().await?;
        let mut params = CallToolRequestParams::new(tool.to_owned());
        match args {
            Value::Object(map) => params = params.with_arguments(map),
            Value::Null => {}
            _ => return Err("arguments must be a JSON object".into()),
        }
        let timeout = self.spec.call_timeout;
        match tokio::time::timeout(timeout, peer.call_tool(params)).await {
            Err(_) => Err(format!("timeout after {} ms", timeout.as_millis())),
            Ok(Ok(result)) => tool_output(result),
            Ok(Err(ServiceError::McpError(e))) => Err(e.message.to_string()),
            Ok(Err(ServiceError::TransportClosed | ServiceError::TransportSend(_))) => {
                warn!(mcp = %self.spec.name, tool, "MCP server stopped during a call");
                Err(format!(
                    "MCP server {} stopped during the call",
                    self.spec.name
                ))
            }
            Ok(Err(e)) => Err(format!("MCP error: {e}")),
        }
    }
}

/// The tool result of an MCP answer: its text content (joined), else its structured content.
fn tool_output(result: CallToolResult) -> Result<Value, String> {
    let texts: Vec<&str> = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    let text = texts.join("\n");
    if result.is_error == Some(true) {
        return Err(if text.is_empty() {
            "the tool failed".to_owned()
        } else {
            text
        });
    }
    if !texts.is_empty() {
        Ok(Value::String(text))
    } else {
        Ok(result.structured_content.unwrap_or(Value::Null))
    }
}

/// Opens a connection (initialization included) within the startup timeout.
async fn connect(spec: &Spec) -> Result<Service, String> {
    let fut = async {
        match &spec.transport {
            Transport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let cmd = tokio::process::Command::new(command).configure(|c| {
                    c.args(args);
                    for (k, v) in env {
                        c.env(k, v);
                    }
                    if let Some(dir) = cwd {
                        c.current_dir(dir);
                    }
                });
                let transport = TokioChildProcess::new(cmd)
                    .map_err(|e| format!("cannot run {command:?}: {e}"))?;
                ().serve(transport)
                    .await
                    .map_err(|e| format!("initialization failed: {e}"))
            }
            Transport::Http { url, headers } => {
                crate::install_crypto_provider();
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .custom_headers(headers.clone());
                let transport = StreamableHttpClientTransport::from_config(config);
                ().serve(transport)
                    .await
                    .map_err(|e| format!("cannot connect to {url}: {e}"))
            }
        }
    };
    match tokio::time::timeout(spec.startup_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {} ms",
            spec.startup_timeout.as_millis()
        )),
    }
}

/// A started MCP server: its connection (unless per call) and the tools it offers.
pub struct McpServer {
    spec: Arc<Spec>,
    shared: Option<Arc<Connection>>,
    tools: Vec<rmcp::model::Tool>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("name", &self.spec.name)
            .field("per_call", &self.shared.is_none())
            .field("tools", &self.tool_names())
            .finish()
    }
}

impl McpServer {
    /// Resolves the config (`${VAR}`, URL, transport) without starting anything.
    fn spec(config: &McpServerConfig) -> Result<Spec, ToolsError> {
        let err = |message: String| ToolsError::Mcp {
            name: config.name.clone(),
            message,
        };
        if config.name.trim().is_empty() {
            return Err(err("`name` must not be empty".into()));
        }
        let transport = match (&config.command, &config.url) {
            (Some(command), None) => {
                if !config.headers.is_empty() {
                    return Err(err("`headers` needs `url` (HTTP transport)".into()));
                }
                let mut env = Vec::new();
                for (k, v) in &config.env {
                    env.push((
                        k.clone(),
                        expand_env(v).map_err(|e| err(format!("env {k}: {e}")))?,
                    ));
                }
                let args = config
                    .args
                    .iter()
                    .map(|a| expand_env(a))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                Transport::Stdio {
                    command: expand_env(command).map_err(err)?,
                    args,
                    env,
                    cwd: config.cwd.clone(),
                }
            }
            (None, Some(url)) => {
                if !config.env.is_empty() || !config.args.is_empty() || config.cwd.is_some() {
                    return Err(err(
                        "`args`, `env` and `cwd` need `command` (stdio transport)".into(),
                    ));
                }
                let url = expand_env(url).map_err(err)?;
                let url = Url::parse(&url).map_err(|e| err(format!("invalid url: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(err("url must be http:// or https:// with a host".into()));
                }
                let mut headers = HashMap::new();
                for (k, v) in &config.headers {
                    let name = http::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| err(format!("invalid header name {k:?}")))?;
                    let value = expand_env(v).map_err(|e| err(format!("header {k}: {e}")))?;
                    let mut value = http::HeaderValue::from_str(&value)
                        .map_err(|_| err(format!("header {k}: invalid value")))?;
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                Transport::Http { url, headers }
            }
            _ => {
                return Err(err(
                    "set exactly one of `command` (stdio) or `url` (HTTP)".into()
                ));
            }
        };
        if config.timeout_ms == 0 || config.startup_timeout_ms == 0 {
            return Err(err("timeouts must be at least 1 ms".into()));
        }
        Ok(Spec {
            name: config.name.clone(),
            transport,
            call_timeout: Duration::from_millis(config.timeout_ms),
            startup_timeout: Duration::from_millis(config.startup_timeout_ms),
        })
    }

    /// The URL of an HTTP server (for the sovereignty check), without starting it.
    pub fn endpoint(config: &McpServerConfig) -> Result<Option<Url>, ToolsError> {
        Ok(match Self::spec(config)?.transport {
            Transport::Http { url, .. } => Some(url),
            Transport::Stdio { .. } => None,
        })
    }

    /// Starts the server (or, for `per_call`, a probe connection closed afterwards) and lists
    /// its tools, filtered by `allowed_tools`. Any failure is an error naming the server.
    pub async fn start(config: &McpServerConfig) -> Result<McpServer, ToolsError> {
        let spec = Arc::new(Self::spec(config)?);
        let err = |message: String| ToolsError::Mcp {
            name: config.name.clone(),
            message,
        };
        let service = connect(&spec).await.map_err(err)?;
        let listed = tokio::time::timeout(spec.startup_timeout, service.peer().list_all_tools())
            .await
            .map_err(|_| err("no answer to tools/list".into()))?
            .map_err(|e| err(format!("tools/list failed: {e}")))?;
        let mut tools = Vec::new();
        for tool in listed {
            check_tool_name(&tool.name).map_err(err)?;
            if config
                .allowed_tools
                .as_ref()
                .is_none_or(|allowed| allowed.iter().any(|a| a == tool.name.as_ref()))
            {
                tools.push(tool);
            }
        }
        if let Some(allowed) = &config.allowed_tools {
            for a in allowed {
                if !tools.iter().any(|t| t.name.as_ref() == a.as_str()) {
                    return Err(err(format!(
                        "allowed_tools names {a:?}, which the server does not list"
                    )));
                }
            }
        }
        info!(
            mcp = %spec.name,
            tools = ?tools.iter().map(|t| t.name.as_ref()).collect::<Vec<_>>(),
            per_call = config.per_call,
            "MCP server ready"
        );
        let shared = if config.per_call {
            let _ = service.cancel().await;
            None
        } else {
            Some(Arc::new(Connection::new(spec.clone(), Some(service))))
        };
        Ok(McpServer {
            spec,
            shared,
            tools,
        })
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The names of the tools it offers.
    pub fn tool_names(&self) -> Vec<&str> {
        self.tools.iter().map(|t| t.name.as_ref()).collect()
    }

    /// The core tools for one call: bound to the shared connection, or to a new connection of
    /// this call (opened at its first tool call, closed when the tools are dropped).
    pub fn tools_for_call(&self) -> Vec<Tool> {
        let conn = match &self.shared {
            Some(c) => c.clone(),
            None => Arc::new(Connection::new(self.spec.clone(), None)),
        };
        self.tools
            .iter()
            .map(|t| {
                let conn = conn.clone();
                let name = t.name.to_string();
                Tool::new(
                    name.clone(),
                    t.description.as_deref().unwrap_or_default().to_owned(),
                )
                .parameters(Value::Object((*t.input_schema).clone()))
                .handler(move |args| {
                    let conn = conn.clone();
                    let name = name.clone();
                    async move { conn.call(&name, args).await }
                })
            })
            .collect()
    }

    /// Closes the shared connection (stops the child process).
    pub async fn shutdown(&self) {
        if let Some(conn) = &self.shared {
            if let Some(service) = conn.state.lock().await.service.take() {
                let _ = service.cancel().await;
            }
        }
    }
}
