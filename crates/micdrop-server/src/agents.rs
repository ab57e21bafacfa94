//! The agent host from the config: `[[tools]]`, `[[mcp]]`, `[params]`, templates and
//! `[call.extract]` (the work is in `micdrop-tools`; this module wires it to the server).

use std::sync::Arc;

use micdrop_core::agent::Agent;
use micdrop_providers::config::{SovereigntyConfig, SovereigntyMode};
use micdrop_tools::{AgentHost, ToolSet, ToolsError};
use url::Url;

use crate::config::Config;

/// Applies `[sovereignty]` to the tools' endpoints (webhooks, MCP over HTTP): under
/// `mode = "eu"` their hosts must be loopback or listed in `allowed_hosts`; under `mode =
/// "local"`, loopback.
pub fn check_tool_endpoints(
    policy: &SovereigntyConfig,
    endpoints: &[(String, Url)],
) -> Result<(), String> {
    if policy.mode == SovereigntyMode::Off {
        return Ok(());
    }
    for (label, url) in endpoints {
        let host = url.host_str().unwrap_or_default();
        if policy.mode == SovereigntyMode::Local {
            if !micdrop_providers::config::is_local_host(host) {
                return Err(format!(
                    "{label} endpoint {url} is not allowed by [sovereignty] mode = \"local\": \
                     host {host:?} is not local (loopback only; allowed_hosts does not apply)"
                ));
            }
            continue;
        }
        if !policy.host_allowed(host) {
            return Err(format!(
                "{label} endpoint {url} is not allowed by [sovereignty] mode = \"eu\": host {host:?} \
                 is not a known EU endpoint. Add it to [sovereignty] allowed_hosts if it is hosted \
                 in the EU, or set mode = \"off\""
            ));
        }
    }
    Ok(())
}

/// Starts the tools (MCP servers included) and builds the agent host over `base` (the agent
/// with its model and automatic tools).
pub async fn agent_host(
    config: &Config,
    base: Agent,
) -> Result<(AgentHost, Arc<ToolSet>), ToolsError> {
    let reserved: Vec<&str> = base.tools().iter().map(|t| t.name.as_str()).collect();
    let tools = Arc::new(ToolSet::start(&config.tools, &config.mcp, &reserved).await?);
    let host = AgentHost::new(
        base,
        &config.call.system_prompt,
        config
            .call
            .first_message
            .as_deref()
            .filter(|t| !t.trim().is_empty()),
        config.params.as_ref(),
        config.call.extract.as_ref(),
        tools.clone(),
    );
    match host {
        Ok(host) => Ok((host, tools)),
        Err(e) => {
            tools.shutdown().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(url: &str) -> Vec<(String, Url)> {
        vec![("tool lent".into(), Url::parse(url).unwrap())]
    }

    #[test]
    fn the_local_policy_allows_loopback_tools_only_whatever_allowed_hosts_says() {
        let policy = SovereigntyConfig {
            mode: SovereigntyMode::Local,
            allowed_hosts: vec!["tools.example.eu".into()],
        };
        for ok in [
            "http://127.0.0.1:9000/lent",
            "http://localhost/x",
            "http://[::1]:1/",
        ] {
            check_tool_endpoints(&policy, &endpoints(ok)).unwrap();
        }
        let e =
            check_tool_endpoints(&policy, &endpoints("https://tools.example.eu/lent")).unwrap_err();
        assert!(
            e.contains("tool lent") && e.contains("tools.example.eu") && e.contains("not local"),
            "{e}"
        );
        // The same host passes the EU policy, where allowed_hosts applies.
        let eu = SovereigntyConfig {
            mode: SovereigntyMode::Eu,
            ..policy
        };
        check_tool_endpoints(&eu, &endpoints("https://tools.example.eu/lent")).unwrap();
    }
}
