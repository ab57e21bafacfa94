//! [`AgentHost`]: the agent of each call, built from the config: the base agent (model,
//! automatic tools, extraction), the prompt templates, the params schema and the tools.

use std::sync::Arc;

use micdrop_core::agent::{Agent, Tool, scope_call_id};
use micdrop_core::error::MicdropError;
use serde_json::Value;
use tracing::warn;

use crate::config::ExtractConfig;
use crate::params::{ParamsSpec, PromptTemplates};
use crate::{ToolSet, ToolsError};

/// Builds each call's agent and first message from its params.
#[derive(Debug, Clone)]
pub struct AgentHost {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base: Agent,
    params: Option<ParamsSpec>,
    templates: PromptTemplates,
    /// The rendered prompt and first message when no template uses params.
    fixed: Option<(String, Option<String>)>,
    extract_description: Option<String>,
    tools: Arc<ToolSet>,
}

impl AgentHost {
    /// `base` is the agent without its system prompt's final text (model, automatic tools,
    /// max steps); `system_prompt` and `first_message` are templates over `params`.
    pub fn new(
        base: Agent,
        system_prompt: &str,
        first_message: Option<&str>,
        params: Option<&Value>,
        extract: Option<&ExtractConfig>,
        tools: Arc<ToolSet>,
    ) -> Result<Self, ToolsError> {
        let params = params.map(ParamsSpec::new).transpose()?;
        let templates = PromptTemplates::new(system_prompt, first_message, params.as_ref())?;
        let mut base = base;
        let mut extract_description = None;
        if let Some(e) = extract {
            base = base.extract(e.to_extract().map_err(ToolsError::Extract)?);
            extract_description = e
                .description
                .as_ref()
                .filter(|d| !d.trim().is_empty())
                .cloned();
        }
        let fixed = if templates.is_dynamic() {
            None
        } else {
            Some(templates.render(None).map_err(ToolsError::Template)?)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                base,
                params,
                templates,
                fixed,
                extract_description,
                tools,
            }),
        })
    }

    /// Whether calls must send params (a `[params]` schema is declared).
    pub fn requires_params(&self) -> bool {
        self.inner.params.is_some()
    }

    /// The agent and first message of a call: validates the params (4400 `Invalid params`),
    /// renders the templates, binds the tools to the call (`call_id`: what webhooks send as
    /// `X-Micdrop-Call-Id`).
    pub fn for_call(
        &self,
        params: Option<&Value>,
        call_id: Option<&str>,
    ) -> Result<(Agent, Option<String>), MicdropError> {
        let inner = &self.inner;
        if let Some(spec) = &inner.params {
            spec.validate(params)?;
        }
        let (mut prompt, first) = match &inner.fixed {
            Some(f) => f.clone(),
            None => inner.templates.render(params).map_err(|e| {
                warn!(error = %e, "prompt template failed");
                MicdropError::invalid_params()
            })?,
        };
        if let Some(d) = &inner.extract_description {
            prompt.push_str("\n\n");
            prompt.push_str(d);
        }
        let mut agent = inner.base.clone().with_system_prompt(prompt);
        let call_id: Option<Arc<str>> = call_id.map(Arc::from);
        for tool in inner.tools.tools_for_call() {
            agent = agent.tool(match &call_id {
                Some(id) => bind_call_id(tool, id.clone()),
                None => tool,
            });
        }
        Ok((agent, first.filter(|t| !t.trim().is_empty())))
    }
}

/// Wraps a tool's handler so that it runs inside [`scope_call_id`] for this call.
pub fn bind_call_id(mut tool: Tool, call_id: Arc<str>) -> Tool {
    if let Some(handler) = tool.handler.take() {
        tool.handler = Some(Arc::new(move |args| {
            let fut = handler(args);
            let id = call_id.clone();
            Box::pin(scope_call_id(id, fut))
        }));
    }
    tool
}
