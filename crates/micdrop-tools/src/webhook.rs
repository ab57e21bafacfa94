//! Webhook tools: a tool call becomes an HTTP request (`POST` with the arguments as JSON body,
//! or `GET` with them as query parameters); the response is the tool result.
//!
//! The arguments are validated against the tool's JSON Schema before any request. The request
//! carries `X-Micdrop-Call-Id` (the call's id) and the configured headers. A timeout, a non-2xx
//! status, a redirect, an oversized body or invalid JSON becomes an error message for the model
//! (`{"error": "..."}`), never a stuck turn. Dropping the handler's future (a barge-in cancels
//! the answer) aborts the request.

use std::sync::Arc;
use std::time::Duration;

use micdrop_core::agent::{Tool, current_call_id};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tracing::{debug, warn};
use url::Url;

use crate::ToolsError;
use crate::config::{WebhookMethod, WebhookToolConfig};
use crate::env::expand_env;

/// The header that carries the call id.
pub const CALL_ID_HEADER: &str = "x-micdrop-call-id";
/// Largest response body accepted (bytes); beyond, the model gets an error.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Longest error body quoted back to the model (characters).
const ERROR_BODY_CHARS: usize = 200;

/// A webhook tool, ready to be called.
#[derive(Debug)]
pub struct Webhook {
    name: String,
    url: Url,
    method: WebhookMethod,
    headers: HeaderMap,
    timeout: Duration,
    validator: jsonschema::Validator,
    client: reqwest::Client,
}

/// The HTTP client for webhooks: rustls, no redirects (a redirect could leave the hosts the
/// `[sovereignty]` policy checked), no proxy from the environment.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("micdrop-rs/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Checks a tool name as Mistral and OpenAI accept it: `[a-zA-Z0-9_-]{1,64}`.
pub(crate) fn check_tool_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "tool name {name:?} must be 1 to 64 letters, digits, `_` or `-`"
        ));
    }
    Ok(())
}

/// Compiles a parameters schema (it must be a valid JSON Schema of an object).
pub(crate) fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err("`parameters` must be an object schema (type = \"object\")".into());
    }
    jsonschema::meta::validate(schema).map_err(|e| format!("invalid JSON Schema: {e}"))?;
    jsonschema::validator_for(schema).map_err(|e| format!("invalid JSON Schema: {e}"))
}

/// Describes why `instance` does not match (at most three errors, with their paths).
pub(crate) fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Option<String> {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .take(3)
        .map(|e| {
            let path = e.instance_path().to_string();
            if path.is_empty() {
                e.to_string()
            } else {
                format!("{path}: {e}")
            }
        })
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

impl Webhook {
    /// Builds a webhook from its config: expands `${VAR}`, checks the URL, the name, the
    /// headers and the schema.
    pub fn new(config: &WebhookToolConfig, client: reqwest::Client) -> Result<Self, ToolsError> {
        let invalid = |message: String| ToolsError::Tool {
            name: config.name.clone(),
            message,
        };
        check_tool_name(&config.name).map_err(invalid)?;
        let url = expand_env(&config.url).map_err(invalid)?;
        let url = Url::parse(&url).map_err(|e| invalid(format!("invalid url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid(
                "url must be http:// or https:// with a host".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| invalid(format!("invalid header name {k:?}")))?;
            let value = expand_env(v).map_err(|e| invalid(format!("header {k}: {e}")))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| invalid(format!("header {k}: invalid value")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if config.timeout_ms == 0 {
            return Err(invalid("timeout_ms must be at least 1".into()));
        }
        let validator = compile_schema(&config.parameters).map_err(invalid)?;
        Ok(Self {
            name: config.name.clone(),
            url,
            method: config.method,
            headers,
            timeout: Duration::from_millis(config.timeout_ms),
            validator,
            client,
        })
    }

    /// The endpoint (for the sovereignty check and the audit log).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The core tool whose handler calls this webhook.
    pub fn into_tool(self, config: &WebhookToolConfig) -> Tool {
        let hook = Arc::new(self);
        Tool::new(config.name.clone(), config.description.clone())
            .parameters(config.parameters.clone())
            .skip_answer(config.skip_answer)
            .emit_output(config.emit_output)
            .handler(move |args| {
                let hook = hook.clone();
                async move { hook.call(args).await }
            })
    }

    /// Calls the webhook with the model's arguments; `Err` is the message for the model.
    pub async fn call(&self, args: Value) -> Result<Value, String> {
        if let Some(errors) = schema_errors(&self.validator, &args) {
            debug!(tool = %self.name, "webhook arguments rejected by the schema");
            return Err(format!("invalid arguments: {errors}"));
        }
        let mut request = match self.method {
            WebhookMethod::Post => self.client.post(self.url.clone()).json(&args),
            WebhookMethod::Get => {
                let mut url = self.url.clone();
                if let Value::Object(map) = &args {
                    let mut pairs = url.query_pairs_mut();
                    for (k, v) in map {
                        match v {
                            Value::Null => {}
                            Value::String(s) => {
                                pairs.append_pair(k, s);
                            }
                            other => {
                                pairs.append_pair(k, &other.to_string());
                            }
                        }
                    }
                }
                self.client.get(url)
            }
        };
        request = request.headers(self.headers.clone()).timeout(self.timeout);
        if let Some(id) = current_call_id() {
            request = request.header(CALL_ID_HEADER, id.as_ref());
        }
        let started = std::time::Instant::now();
        let result = self.exchange(request).await;
        match &result {
            Ok(_) => {
                debug!(tool = %self.name, elapsed_ms = started.elapsed().as_millis() as u64, "webhook answered")
            }
            Err(e) => warn!(tool = %self.name, error = %e, "webhook failed"),
        }
        result
    }

    async fn exchange(&self, request: reqwest::RequestBuilder) -> Result<Value, String> {
        let timeout_msg = || format!("timeout after {} ms", self.timeout.as_millis());
        let mut response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                timeout_msg()
            } else if e.is_connect() {
                "cannot reach the tool's server".to_owned()
            } else {
                "request failed".to_owned()
            }
        })?;
        let status = response.status();
        let json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                let ct = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                ct == "application/json" || ct.ends_with("+json")
            });
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(format!("response larger than {MAX_RESPONSE_BYTES} bytes"));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(timeout_msg()),
                Err(_) => return Err("the response was cut".into()),
            }
        }
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let quoted: String = text.trim().chars().take(ERROR_BODY_CHARS).collect();
            return Err(if quoted.is_empty() {
                format!("HTTP {}", status.as_u16())
            } else {
                format!("HTTP {}: {quoted}", status.as_u16())
            });
        }
        if json {
            serde_json::from_slice(&body).map_err(|_| "invalid JSON in the response".to_owned())
        } else if text.trim().is_empty() {
            Ok(Value::Null)
        } else {
            Ok(Value::String(text.into_owned()))
        }
    }
}
