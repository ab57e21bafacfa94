//! From the configuration file to a running server: providers, simulators, agent, routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use micdrop_core::agent::Agent;
use micdrop_core::call::CallConfig;
use micdrop_providers::config::ProvidersConfig;
#[cfg(feature = "sim")]
use micdrop_sim::Simulators;
use tracing::info;

use crate::config::{CallSection, Config};
use crate::server::{RunningServer, ServerOptions, start};
use crate::sim::{SimHandle, SimScript};

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// API keys are missing.
    #[error(
        "missing API keys: {0}. Set them in the environment, or run `micdrop serve --sim` for the \
         offline demo (simulated Mistral, Gladia and Gradium: no key, no network)"
    )]
    MissingKeys(String),
    /// A provider endpoint is outside the EU under `[sovereignty] mode = "eu"`.
    #[error("{0}")]
    Sovereignty(String),
    /// A provider could not be built.
    #[error("providers: {0}")]
    Providers(String),
    /// A webhook tool, an MCP server, `[params]` or a prompt template is wrong (or an MCP
    /// server did not start).
    #[error(transparent)]
    Tools(#[from] micdrop_tools::ToolsError),
    /// The simulator script is wrong.
    #[error("simulator script: {0}")]
    Sim(String),
    /// The store could not start.
    #[error("{0}")]
    Store(String),
    /// Traces cannot be exported (`[telemetry] otlp_endpoint`).
    #[error(transparent)]
    Traces(#[from] crate::traces::TracesError),
    /// Binding the address failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// IO error.
        source: std::io::Error,
    },
}

/// Builds the agent of every call from the `[call]` section and a model.
pub fn build_agent(call: &CallSection, model: Arc<dyn micdrop_core::agent::ChatModel>) -> Agent {
    let mut agent = Agent::new(model, call.system_prompt.clone()).max_steps(call.max_steps);
    if let Some(d) = call.auto_end_call.description() {
        agent = agent.auto_end_call(d);
    }
    if let Some(d) = call.auto_semantic_turn.description() {
        agent = agent.auto_semantic_turn(d);
    }
    if let Some(d) = call.auto_ignore_user_noise.description() {
        agent = agent.auto_ignore_user_noise(d);
    }
    agent
}

/// A running application: the server, and the simulators in `--sim` mode.
pub struct App {
    /// The HTTP/WebSocket server.
    pub server: RunningServer,
    /// The in-process simulators (`--sim`).
    pub sim: Option<SimHandle>,
    /// The WebSocket path.
    pub path: String,
    /// The webhook tools and MCP servers (stopped by [`App::shutdown`]).
    pub tools: Option<Arc<micdrop_tools::ToolSet>>,
    /// How long a drain waits for calls in progress (`[server] drain_timeout_secs`).
    pub drain_timeout: Duration,
    /// The conversation store (`[store]`).
    pub store: Option<Arc<micdrop_store::CallStore>>,
    /// The trace exporter (`[telemetry] otlp_endpoint`), flushed by [`App::shutdown`].
    pub traces: Option<crate::traces::Traces>,
}

impl App {
    /// Starts everything. `sim`: run with in-process simulators and this script (feature `sim`).
    pub async fn start(config: Config, sim: Option<SimScript>) -> Result<App, AppError> {
        #[cfg_attr(not(feature = "sim"), allow(unused_mut))]
        let mut providers_config: ProvidersConfig = config.providers();
        let sim = match sim {
            #[cfg(feature = "sim")]
            Some(script) => {
                let handle = Simulators::start(SocketAddr::from(([127, 0, 0, 1], 0)), script)
                    .await
                    .map_err(|e| AppError::Sim(e.to_string()))?;
                providers_config.point_to_simulators(
                    &handle.gladia_base_url(),
                    &handle.gradium_base_url(),
                    &handle.mistral_base_url(),
                );
                info!(
                    gladia = %handle.gladia_base_url(),
                    gradium = %handle.gradium_base_url(),
                    mistral = %handle.mistral_base_url(),
                    "simulators running"
                );
                Some(handle)
            }
            #[cfg(not(feature = "sim"))]
            Some(never) => match never {},
            None => {
                let missing = providers_config.missing_keys();
                if !missing.is_empty() {
                    return Err(AppError::MissingKeys(missing.join(", ")));
                }
                None
            }
        };
        providers_config
            .check_sovereignty()
            .map_err(|e| AppError::Sovereignty(e.to_string()))?;
        let providers = providers_config
            .build()
            .map_err(|e| AppError::Providers(e.to_string()))?;
        let tool_endpoints = micdrop_tools::ToolSet::endpoints(&config.tools, &config.mcp)?;
        crate::agents::check_tool_endpoints(&config.sovereignty, &tool_endpoints)
            .map_err(AppError::Sovereignty)?;
        let hosts: Vec<String> = providers_config
            .endpoints()
            .iter()
            .chain(tool_endpoints.iter().map(|(_, url)| url))
            .filter_map(|u| {
                u.host_str().map(|h| match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_owned(),
                })
            })
            .collect();
        let mut template = CallConfig::new(providers.stt.clone())
            .partial_messages(config.call.partial_messages)
            .generate_first_message(config.call.generate_first_message)
            .idle_timeout(config.server.idle_timeout())
            .audio_lead(config.call.audio_lead())
            .audio_burst(config.server.audio_burst());
        template.transcript_timeout = config.call.transcript_timeout(
            providers_config
                .stt
                .chain()
                .contains(&micdrop_providers::config::SttKind::Whisper),
        );
        if let Some(tts) = providers.tts.clone() {
            template = template.tts(tts);
        }
        let (host, tools) = if config.call.dictation {
            if let Some(first) = config
                .call
                .first_message
                .clone()
                .filter(|t| !t.trim().is_empty())
            {
                template = template.first_message(first);
            }
            (None, None)
        } else {
            let (host, tools) = crate::agents::agent_host(
                &config,
                build_agent(&config.call, providers.model.clone()),
            )
            .await?;
            (Some(host), Some(tools))
        };
        let requires_params = host.as_ref().is_some_and(|h| h.requires_params());
        let store = match &config.store {
            Some(sc) => Some(
                micdrop_store::CallStore::start(sc.clone())
                    .await
                    .map_err(|e| AppError::Store(e.to_string()))?,
            ),
            None => None,
        };
        let store_hook = store.clone().map(|store| crate::persist::StoreHook {
            store,
            provider_hosts: hosts.clone(),
        });
        let factory: crate::server::CallFactory = Arc::new(move |params| {
            let mut config = template.clone();
            if let Some(host) = &host {
                // The call's id, known before the call starts so that its tools send it
                // (`X-Micdrop-Call-Id`) and its log lines carry the same one.
                let call_id = uuid::Uuid::new_v4().to_string();
                let (agent, first) = host.for_call(params, Some(&call_id))?;
                config = config.agent(agent).call_id(call_id);
                if let Some(first) = first {
                    config = config.first_message(first);
                }
            }
            // The EU data policy's audit line: which hosts this call reaches (never keys or
            // content).
            info!(hosts = ?hosts, "call providers");
            Ok(config)
        });
        let mut options = ServerOptions::new(factory);
        options.require_params = requires_params;
        options.path = config.server.path.clone();
        options.max_frame_bytes = config.server.max_frame_bytes;
        options.max_calls = config.server.max_calls;
        options.guard = config.server.guard_options();
        options.header_read_timeout = config.server.header_read_timeout();
        options.serve_assets = config.server.demo_page;
        options.demo_allowed_urls = config.server.demo_allowed_urls.clone();
        options.store = store_hook;
        if let (Some(admin), Some(store)) = (&config.admin, &store) {
            let tokens = admin.tokens();
            if tokens.is_empty() {
                return Err(AppError::Config(crate::config::ConfigError::Invalid(
                    "[admin] is set but no token is available (bearer_tokens, or the variable of bearer_tokens_env is empty)".into(),
                )));
            }
            options.routes = Some(crate::admin::routes(store.clone(), tokens));
        }
        if let Some(auth) = &config.auth {
            options.bearer_tokens = auth.tokens();
            if options.bearer_tokens.is_empty() {
                return Err(AppError::Config(crate::config::ConfigError::Invalid(
                    "[auth] is set but no token is available (bearer_tokens, or the variable of bearer_tokens_env is empty)".into(),
                )));
            }
        }
        if config.telemetry.metrics {
            options.metrics = crate::telemetry::MetricsEndpoint::new(config.telemetry.token());
            if options.metrics.is_none() {
                tracing::warn!("another metrics recorder is installed: /metrics is not served");
            }
        }
        options.on_end = Some(Arc::new(|end| {
            info!(
                duration_secs = end.duration_secs,
                items = end.conversation.len(),
                reason = ?end.reason,
                "call end"
            );
        }));
        let addr: SocketAddr = config.server.listen.parse().map_err(|_| {
            AppError::Config(crate::config::ConfigError::Invalid(format!(
                "listen address {:?} is not IP:PORT",
                config.server.listen
            )))
        })?;
        crate::http::raise_nofile_limit();
        // Plugged in before the first call can arrive.
        let traces = match crate::traces::Traces::start(
            config.telemetry.otlp_endpoint.as_deref(),
            &config.telemetry.service_name,
        ) {
            Ok(traces) => traces,
            Err(e) => {
                if let Some(tools) = &tools {
                    tools.shutdown().await;
                }
                return Err(e.into());
            }
        };
        let server = match start(addr, options).await {
            Ok(server) => server,
            Err(source) => {
                if let Some(tools) = &tools {
                    tools.shutdown().await;
                }
                if let Some(traces) = traces {
                    traces.shutdown().await;
                }
                return Err(AppError::Listen {
                    addr: config.server.listen.clone(),
                    source,
                });
            }
        };
        Ok(App {
            server,
            sim,
            drain_timeout: config.server.drain_timeout(),
            path: config.server.path,
            tools,
            store,
            traces,
        })
    }

    /// Whether the providers are the in-process simulators (`serve --sim`).
    pub fn simulated(&self) -> bool {
        self.sim.is_some()
    }

    /// Stops the server (calls close with 1001 and get their end), then the simulators.
    pub async fn shutdown(self, grace: Duration) {
        self.server.shutdown(grace).await;
        if let Some(tools) = &self.tools {
            tools.shutdown().await;
        }
        if let Some(store) = self.store {
            // Queued writes (the calls' ends) are written before exit.
            store.shutdown(Duration::from_secs(5)).await;
        }
        if let Some(traces) = self.traces {
            // The calls have ended: their spans are closed and go out now.
            traces.shutdown().await;
        }
        #[cfg(feature = "sim")]
        if let Some(sim) = self.sim {
            sim.shutdown().await;
        }
    }
}
