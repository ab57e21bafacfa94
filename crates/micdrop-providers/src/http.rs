//! HTTP helpers: provider error bodies (many shapes, parsed leniently), `Retry-After`, URLs.

use std::time::Duration;

use micdrop_core::ProviderErrorKind;
use serde_json::Value;
use url::Url;

/// Longest error body kept in an error (bytes, cut on a character boundary).
pub const MAX_ERROR_BODY: usize = 600;

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut with `…`.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The human message of a provider error body, whatever its shape: Mistral's
/// `{"message": "..."}`, `{"message": {"detail": [...]}}`, a JSON-encoded string message,
/// `{"detail": "..."}` or `{"detail": [...]}`; Gladia's `{message, validation_errors}`;
/// Gradium's plain text. Falls back to the (truncated) raw body.
pub fn error_message(body: &str) -> String {
    let trimmed = body.trim();
    let Ok(v) = serde_json::from_str::<Value>(trimmed) else {
        return truncate(trimmed, MAX_ERROR_BODY);
    };
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = v.get("message") {
        parts.push(describe(m));
    }
    if parts.is_empty() {
        if let Some(d) = v.get("detail") {
            parts.push(describe(d));
        }
    }
    if let Some(Value::Array(errs)) = v.get("validation_errors") {
        let list: Vec<String> = errs.iter().map(describe).collect();
        if !list.is_empty() {
            parts.push(format!("validation errors: {}", list.join("; ")));
        }
    }
    for key in ["type", "code", "request_id"] {
        match v.get(key) {
            Some(Value::String(s)) if !s.is_empty() => parts.push(format!("{key}={s}")),
            Some(Value::Number(n)) => parts.push(format!("{key}={n}")),
            _ => {}
        }
    }
    if parts.is_empty() {
        return truncate(trimmed, MAX_ERROR_BODY);
    }
    truncate(&parts.join(" "), MAX_ERROR_BODY)
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => {
            // Mistral 2024: the message is itself JSON text.
            if s.trim_start().starts_with('{') {
                if let Ok(inner) = serde_json::from_str::<Value>(s) {
                    return describe(&inner);
                }
            }
            s.clone()
        }
        Value::Array(items) => items.iter().map(describe).collect::<Vec<_>>().join("; "),
        Value::Object(map) => {
            if let Some(d) = map.get("detail") {
                return describe(d);
            }
            if let Some(msg) = map.get("msg").or_else(|| map.get("message")) {
                let loc = map
                    .get("loc")
                    .and_then(Value::as_array)
                    .map(|l| {
                        l.iter()
                            .map(|p| match p {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect::<Vec<_>>()
                            .join(".")
                    })
                    .unwrap_or_default();
                let msg = describe(msg);
                return if loc.is_empty() {
                    msg
                } else {
                    format!("{loc}: {msg}")
                };
            }
            v.to_string()
        }
        other => other.to_string(),
    }
}

/// A [`ProviderErrorKind::Status`] with the summarized body.
pub fn status_error(status: u16, body: &str) -> ProviderErrorKind {
    ProviderErrorKind::Status {
        status,
        body: error_message(body),
    }
}

/// The `Retry-After` header as a delay (seconds form only).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

/// Joins `path` (no leading slash) to `base`, keeping the base's own path (`http://h/x` +
/// `v2/live` → `http://h/x/v2/live`).
pub fn join(base: &Url, path: &str) -> Url {
    let mut u = base.clone();
    {
        let trimmed = u.path().trim_end_matches('/').to_owned();
        u.set_path(&format!("{trimmed}/{}", path.trim_start_matches('/')));
    }
    u
}

/// Maps a reqwest error to an error kind (never includes headers, so never a key).
pub fn reqwest_error(e: &reqwest::Error) -> ProviderErrorKind {
    if e.is_timeout() {
        ProviderErrorKind::Timeout(e.without_url_string())
    } else {
        ProviderErrorKind::Network(e.without_url_string())
    }
}

trait WithoutUrl {
    fn without_url_string(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_string(&self) -> String {
        // URLs carry no secrets here (keys travel in headers), but Gladia session URLs carry a
        // session token: drop the URL to be safe and keep the error chain.
        let mut s = String::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        let mut first = true;
        while let Some(e) = cur {
            let text = if first {
                // reqwest prints "error sending request for url (...)": keep only the kind.
                let t = e.to_string();
                match t.find(" for url (") {
                    Some(i) => t[..i].to_owned(),
                    None => t,
                }
            } else {
                e.to_string()
            };
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&text);
            first = false;
            cur = e.source();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistral_error_shapes() {
        // M-ERR-400-a
        let m = error_message(
            r#"{"object":"error","message":"Unexpected role 'user' after role 'tool'","type":"invalid_request_message_order","param":null,"code":"3230"}"#,
        );
        assert!(
            m.contains("Unexpected role 'user' after role 'tool'"),
            "{m}"
        );
        assert!(m.contains("code=3230"), "{m}");
        // M-ERR-422-c: message is an object.
        let m = error_message(
            r#"{"object":"error","message":{"detail":[{"type":"extra_forbidden","loc":["body","max_completion_tokens"],"msg":"Extra inputs are not permitted","input":32000}]},"type":"invalid_request_error","param":null,"code":null}"#,
        );
        assert!(
            m.contains("body.max_completion_tokens: Extra inputs are not permitted"),
            "{m}"
        );
        // M-ERR-422-e: top-level detail and array message, integer code.
        let m = error_message(
            r#"{"object":"Error","detail":[{"type":"extra_forbidden","loc":["body","tools"],"msg":"Extra inputs are not permitted","input":[]}],"message":[{"type":"extra_forbidden","loc":["body","tools"],"msg":"Extra inputs are not permitted","input":[]}],"type":"invalid_request_error","code":3001}"#,
        );
        assert!(m.contains("body.tools: Extra inputs"), "{m}");
        assert!(m.contains("code=3001"), "{m}");
        // M-ERR-422-g: JSON-encoded string message.
        let m = error_message(
            r#"{"object":"error","message":"{\"detail\":[{\"type\":\"extra_forbidden\",\"loc\":[\"body\",\"frequency_penalty\"],\"msg\":\"Extra inputs are not permitted\",\"input\":0.0}]}","type":"internal_error_proxy","param":null,"code":"1000"}"#,
        );
        assert!(m.contains("body.frequency_penalty: Extra inputs"), "{m}");
        // M-ERR-401-b
        assert_eq!(
            error_message(r#"{"detail":"Unauthorized"}"#),
            "Unauthorized"
        );
        // M-ERR-429-a
        assert_eq!(
            error_message(r#"{"message":"Requests rate limit exceeded"}"#),
            "Requests rate limit exceeded"
        );
    }

    #[test]
    fn gladia_and_gradium_error_shapes() {
        // G-INIT-ERR-4, objects and strings in validation_errors.
        let m = error_message(
            r#"{"message":"Unknown field","request_id":"G-test","validation_errors":[{"loc":["body","languge"],"msg":"extra fields not permitted"}]}"#,
        );
        assert!(m.contains("Unknown field"), "{m}");
        assert!(
            m.contains("body.languge: extra fields not permitted"),
            "{m}"
        );
        assert!(m.contains("request_id=G-test"), "{m}");
        let m = error_message(
            r#"{"message":"Invalid parameter(s). See validation_errors for more details.","request_id":"G-test","validation_errors":["language_config.languages must only contain the following values: af, am, ar, en"]}"#,
        );
        assert!(m.contains("must only contain"), "{m}");
        // GR-REST-ERR: plain text.
        assert_eq!(
            error_message("error from server 1008: API key is revoked or expired"),
            "error from server 1008: API key is revoked or expired"
        );
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let s = "é".repeat(400);
        let t = truncate(&s, 101);
        assert!(t.len() <= 104);
        assert!(t.ends_with('…'));
    }

    #[test]
    fn join_keeps_base_path() {
        let b = Url::parse("http://127.0.0.1:9/mistral/").unwrap();
        assert_eq!(
            join(&b, "v1/chat/completions").as_str(),
            "http://127.0.0.1:9/mistral/v1/chat/completions"
        );
        let b = Url::parse("https://api.gladia.io").unwrap();
        assert_eq!(
            join(&b, "/v2/live").as_str(),
            "https://api.gladia.io/v2/live"
        );
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
