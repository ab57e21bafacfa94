//! The guards in front of the WebSocket upgrade: the client's address (trusted proxies), the
//! `Origin` policy, concurrent calls per address and the failed-authentication limit.
//!
//! Every refusal happens before the upgrade, with a plain HTTP status: 403 for a foreign origin,
//! 503 when an address holds too many calls, 429 (with `Retry-After`) while an address is
//! blocked after too many failed authentications. See docs/security.md.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use tracing::warn;

/// Default number of failed authentications an address may make in a minute.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 10;
/// Default time an address stays blocked (HTTP 429) after too many failed authentications.
pub const DEFAULT_AUTH_BLOCK: Duration = Duration::from_secs(60);
/// The window in which failed authentications are counted.
const AUTH_WINDOW: Duration = Duration::from_secs(60);
/// Above this many tracked addresses, expired entries are pruned before inserting.
const PRUNE_ABOVE: usize = 4096;

/// The guards' options (the `[server]` keys of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardOptions {
    /// Origins allowed to open calls from a browser: `"self"` (the origin of the `Host` the
    /// request was sent to), `"loopback"` (`localhost`, `127.0.0.0/8`, `[::1]`, any port and
    /// scheme), `"*"` (any origin), or an origin such as `https://app.example.com` (a host may
    /// start with `*.` for any subdomain). Requests without `Origin` (native clients) are allowed.
    pub allowed_origins: Vec<String>,
    /// Maximum concurrent calls per client address (0: no limit).
    pub max_calls_per_ip: usize,
    /// Proxies whose `X-Forwarded-For` (and `X-Forwarded-Host`) is believed: IPs or CIDRs.
    pub trusted_proxies: Vec<String>,
    /// Failed authentications allowed per address and minute before it gets HTTP 429 (0: no
    /// limit).
    pub auth_failures_per_minute: u32,
    /// How long a blocked address gets HTTP 429.
    pub auth_block: Duration,
}

impl Default for GuardOptions {
    fn default() -> Self {
        Self {
            allowed_origins: default_allowed_origins(),
            max_calls_per_ip: 0,
            trusted_proxies: Vec::new(),
            auth_failures_per_minute: DEFAULT_AUTH_FAILURES_PER_MINUTE,
            auth_block: DEFAULT_AUTH_BLOCK,
        }
    }
}

/// `["self", "loopback"]`.
pub fn default_allowed_origins() -> Vec<String> {
    vec!["self".into(), "loopback".into()]
}

impl GuardOptions {
    /// Checks every origin and proxy entry; the error names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        for o in &self.allowed_origins {
            OriginRule::parse(o)?;
        }
        for p in &self.trusted_proxies {
            IpRange::parse(p)?;
        }
        Ok(())
    }
}

/// One entry of `allowed_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    Any,
    SameHost,
    Loopback,
    Exact {
        scheme: String,
        host: String,
        port: u16,
    },
    /// `*.example.com`: any subdomain (not the apex).
    Subdomains {
        scheme: String,
        suffix: String,
        port: u16,
    },
}

impl OriginRule {
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "*" => return Ok(Self::Any),
            "self" => return Ok(Self::SameHost),
            "loopback" => return Ok(Self::Loopback),
            _ => {}
        }
        let bad = || {
            format!(
                "allowed_origins: {s:?} is not \"*\", \"self\", \"loopback\" or an origin like \"https://app.example.com\""
            )
        };
        // `*.` is not a valid URL host: parse with a placeholder label.
        let (wild, text) = match s.split_once("://*.") {
            Some((scheme, rest)) => (true, format!("{scheme}://wildcard.{rest}")),
            None => (false, s.to_owned()),
        };
        let url = url::Url::parse(&text).map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https")
            || !matches!(url.path(), "" | "/")
            || url.query().is_some()
            || !url.username().is_empty()
        {
            return Err(bad());
        }
        let host = url.host_str().ok_or_else(bad)?.to_ascii_lowercase();
        let port = url.port_or_known_default().ok_or_else(bad)?;
        let scheme = url.scheme().to_owned();
        Ok(if wild {
            let suffix = host.strip_prefix("wildcard").ok_or_else(bad)?.to_owned();
            Self::Subdomains {
                scheme,
                suffix,
                port,
            }
        } else {
            Self::Exact { scheme, host, port }
        })
    }
}

/// A parsed `Origin` header.
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn parse(value: &str) -> Option<Self> {
        let url = url::Url::parse(value).ok()?;
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        Some(Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }

    fn is_loopback(&self) -> bool {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h == "localhost"
            || h.ends_with(".localhost")
            || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Whether this origin is the one of `host` (a `Host` header value, port optional).
    fn is_host(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        // `[::1]:8080`, `example.com:8080`, `example.com`.
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) if !p.contains(']') => match p.parse::<u16>() {
                Ok(p) => (n.to_owned(), p),
                Err(_) => return false,
            },
            _ => (host.clone(), default_port),
        };
        name == self.host && port == self.port
    }
}

/// An IP address or a CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("trusted_proxies: {s:?} is not an IP address or a CIDR range");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, from dual-stack sockets) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Concurrent calls per address (shared with the permits).
type CallCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

#[derive(Debug, Default)]
struct AuthFailures {
    window_start: Option<Instant>,
    count: u32,
    blocked_until: Option<Instant>,
}

/// The guards of one server (shared by its connections).
#[derive(Debug)]
pub struct Guards {
    origins: Vec<OriginRule>,
    proxies: Vec<IpRange>,
    max_calls_per_ip: usize,
    auth_limit: u32,
    auth_block: Duration,
    calls: CallCounts,
    auth: Mutex<HashMap<IpAddr, AuthFailures>>,
}

/// One call counted against its address; dropping it releases the slot.
#[derive(Debug)]
pub struct IpPermit {
    calls: Option<(CallCounts, IpAddr)>,
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        if let Some((calls, ip)) = self.calls.take() {
            let mut map = calls.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

impl Guards {
    /// Guards from their options (checked: the error names the bad entry).
    pub fn new(options: &GuardOptions) -> Result<Self, String> {
        Ok(Self {
            origins: options
                .allowed_origins
                .iter()
                .map(|o| OriginRule::parse(o))
                .collect::<Result<_, _>>()?,
            proxies: options
                .trusted_proxies
                .iter()
                .map(|p| IpRange::parse(p))
                .collect::<Result<_, _>>()?,
            max_calls_per_ip: options.max_calls_per_ip,
            auth_limit: options.auth_failures_per_minute,
            auth_block: options.auth_block,
            calls: Arc::default(),
            auth: Mutex::default(),
        })
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.proxies.iter().any(|r| r.contains(ip))
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the first
    /// address of `X-Forwarded-For` from the right that is not a trusted proxy (the leftmost
    /// entries are written by the client and can be forged).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let mut ip = canonical(peer.ip());
        if !self.trusted(ip) {
            return ip;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in forwarded.iter().rev() {
            let Ok(hop) = hop.parse::<IpAddr>() else {
                // A malformed hop: stop at the last address we can vouch for.
                break;
            };
            ip = canonical(hop);
            if !self.trusted(ip) {
                break;
            }
        }
        ip
    }

    /// Checks the `Origin` header (403 when not allowed). `peer` decides whether
    /// `X-Forwarded-Host` is believed for `"self"`.
    #[allow(clippy::result_large_err)]
    pub fn check_origin(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Response> {
        let Some(value) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let text = value.to_str().unwrap_or("");
        let origin = Origin::parse(text);
        let host = if self.trusted(canonical(peer.ip())) {
            headers
                .get("x-forwarded-host")
                .or_else(|| headers.get(header::HOST))
        } else {
            headers.get(header::HOST)
        }
        .and_then(|h| h.to_str().ok());
        let allowed = self.origins.iter().any(|rule| match (rule, &origin) {
            (OriginRule::Any, _) => true,
            (_, None) => false,
            (OriginRule::SameHost, Some(o)) => host.is_some_and(|h| o.is_host(h)),
            (OriginRule::Loopback, Some(o)) => o.is_loopback(),
            (OriginRule::Exact { scheme, host, port }, Some(o)) => {
                *scheme == o.scheme && *host == o.host && *port == o.port
            }
            (
                OriginRule::Subdomains {
                    scheme,
                    suffix,
                    port,
                },
                Some(o),
            ) => *scheme == o.scheme && o.host.ends_with(suffix.as_str()) && *port == o.port,
        });
        if allowed {
            Ok(())
        } else {
            Err((StatusCode::FORBIDDEN, "origin not allowed").into_response())
        }
    }

    /// Admits a call from `ip`: 429 while the address is blocked for failed authentications,
    /// 503 when it already holds `max_calls_per_ip` calls.
    #[allow(clippy::result_large_err)]
    pub fn admit(&self, ip: IpAddr) -> Result<IpPermit, Response> {
        if let Some(wait) = self.blocked_for(ip) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs.to_string())],
                "too many failed authentications",
            )
                .into_response());
        }
        if self.max_calls_per_ip == 0 {
            return Ok(IpPermit { calls: None });
        }
        let mut map = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_calls_per_ip {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "too many calls from this address",
            )
                .into_response());
        }
        *n += 1;
        Ok(IpPermit {
            calls: Some((self.calls.clone(), ip)),
        })
    }

    /// How long `ip` stays blocked, if it is.
    fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        if self.auth_limit == 0 {
            return None;
        }
        let now = Instant::now();
        let map = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        let until = map.get(&ip)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failed authentication of `ip`; returns true when the address is now blocked.
    pub fn auth_failed(&self, ip: IpAddr) -> bool {
        if self.auth_limit == 0 {
            return false;
        }
        let now = Instant::now();
        let mut map = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, f| {
                f.blocked_until.is_some_and(|t| t > now)
                    || f.window_start.is_some_and(|t| now - t < AUTH_WINDOW)
            });
        }
        let f = map.entry(ip).or_default();
        if f.blocked_until.is_some_and(|t| t > now) {
            return true;
        }
        if f.window_start.is_none_or(|t| now - t >= AUTH_WINDOW) {
            f.window_start = Some(now);
            f.count = 0;
            f.blocked_until = None;
        }
        f.count += 1;
        if f.count >= self.auth_limit {
            f.blocked_until = Some(now + self.auth_block);
            f.window_start = None;
            f.count = 0;
            warn!(
                client = %ip,
                failures = self.auth_limit,
                block_secs = self.auth_block.as_secs(),
                "too many failed authentications: address blocked"
            );
            return true;
        }
        false
    }
}

/// The demo page with the servers it may connect to (`?url=`) in its
/// `micdrop-demo-allowed-urls` meta tag (JSON, HTML-escaped).
pub fn demo_index(html: &[u8], allowed_urls: &[String]) -> axum::body::Bytes {
    const EMPTY: &str = r#"<meta name="micdrop-demo-allowed-urls" content="[]" />"#;
    let html = String::from_utf8_lossy(html);
    if allowed_urls.is_empty() || !html.contains(EMPTY) {
        return axum::body::Bytes::from(html.into_owned());
    }
    let json = serde_json::to_string(allowed_urls).unwrap_or_else(|_| "[]".into());
    let escaped = json
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let tag = format!(r#"<meta name="micdrop-demo-allowed-urls" content="{escaped}" />"#);
    axum::body::Bytes::from(html.replacen(EMPTY, &tag, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn guards(f: impl FnOnce(&mut GuardOptions)) -> Guards {
        let mut o = GuardOptions::default();
        f(&mut o);
        Guards::new(&o).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 40000)
    }

    #[test]
    fn default_origins_are_self_and_loopback() {
        let g = guards(|_| {});
        let ok = |origin: &str, host: &str| {
            g.check_origin(
                peer("203.0.113.9"),
                &headers(&[("origin", origin), ("host", host)]),
            )
            .is_ok()
        };
        assert!(ok("https://voice.example.com", "voice.example.com"));
        assert!(ok(
            "http://voice.example.com:8080",
            "voice.example.com:8080"
        ));
        assert!(!ok(
            "http://voice.example.com:8081",
            "voice.example.com:8080"
        ));
        assert!(!ok("https://evil.example", "voice.example.com"));
        assert!(ok("http://localhost:3000", "voice.example.com"));
        assert!(ok("http://127.0.0.2:5173", "voice.example.com"));
        assert!(ok("http://[::1]:9", "voice.example.com"));
        assert!(ok("http://[::1]:9", "[::1]:9"));
        assert!(!ok("null", "voice.example.com"));
        assert!(!ok("file://", "voice.example.com"));
        assert!(!ok("http://localhost.evil.example", "voice.example.com"));
        // No Origin: a native client.
        assert!(
            g.check_origin(peer("203.0.113.9"), &headers(&[("host", "x")]))
                .is_ok()
        );
    }

    #[test]
    fn configured_origins() {
        let g = guards(|o| {
            o.allowed_origins = vec![
                "https://app.example.com".into(),
                "https://*.tenant.example".into(),
            ]
        });
        let ok = |origin: &str| {
            g.check_origin(peer("203.0.113.9"), &headers(&[("origin", origin)]))
                .is_ok()
        };
        assert!(ok("https://app.example.com"));
        assert!(ok("https://app.example.com:443"));
        assert!(!ok("http://app.example.com"));
        assert!(!ok("https://app.example.com:8443"));
        assert!(ok("https://a.tenant.example"));
        assert!(!ok("https://tenant.example"));
        assert!(!ok("https://atenant.example"));
        assert!(!ok("http://localhost:3000"), "loopback is not in the list");
        let any = guards(|o| o.allowed_origins = vec!["*".into()]);
        assert!(
            any.check_origin(peer("203.0.113.9"), &headers(&[("origin", "null")]))
                .is_ok()
        );
        for bad in [
            "app.example.com",
            "ftp://x",
            "https://x/path",
            "https://x?q",
            "",
        ] {
            let o = GuardOptions {
                allowed_origins: vec![bad.into()],
                ..GuardOptions::default()
            };
            assert!(o.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn forwarded_host_only_from_trusted_proxies() {
        let g = guards(|o| {
            o.allowed_origins = vec!["self".into()];
            o.trusted_proxies = vec!["10.0.0.0/8".into()];
        });
        let h = headers(&[
            ("origin", "https://voice.example.com"),
            ("host", "backend:8080"),
            ("x-forwarded-host", "voice.example.com"),
        ]);
        assert!(g.check_origin(peer("10.1.2.3"), &h).is_ok());
        assert!(g.check_origin(peer("198.51.100.1"), &h).is_err());
    }

    #[test]
    fn client_ip_and_trusted_proxies() {
        let g = guards(|o| o.trusted_proxies = vec!["10.0.0.0/8".into(), "::1".into()]);
        let xff = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.0.0.5")]);
        // From a trusted proxy: the rightmost untrusted hop.
        assert_eq!(
            g.client_ip(peer("10.0.0.1"), &xff),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // From anyone else: the peer, whatever the header says.
        assert_eq!(
            g.client_ip(peer("203.0.113.9"), &xff),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // No header: the proxy itself.
        assert_eq!(
            g.client_ip(peer("::1"), &HeaderMap::new()),
            "::1".parse::<IpAddr>().unwrap()
        );
        // An IPv4-mapped peer is matched as IPv4.
        assert_eq!(
            g.client_ip(peer("::ffff:10.0.0.1"), &xff),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Garbage stops the walk at the last trusted hop.
        let junk = headers(&[("x-forwarded-for", "1.1.1.1, junk")]);
        assert_eq!(
            g.client_ip(peer("10.0.0.1"), &junk),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert!(IpRange::parse("10.0.0.0/33").is_err());
        assert!(IpRange::parse("example.com").is_err());
        assert!(
            IpRange::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }

    #[test]
    fn demo_index_lists_the_allowed_servers_escaped() {
        let html = br#"<head><meta name="micdrop-demo-allowed-urls" content="[]" /></head>"#;
        assert_eq!(&demo_index(html, &[])[..], &html[..]);
        let out = demo_index(html, &["wss://voice.example.com/call\"<x>".into()]);
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(
            out,
            r#"<head><meta name="micdrop-demo-allowed-urls" content="[&quot;wss://voice.example.com/call\&quot;&lt;x&gt;&quot;]" /></head>"#
        );
    }

    #[test]
    fn calls_per_ip() {
        let g = guards(|o| o.max_calls_per_ip = 2);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let p1 = g.admit(a).unwrap();
        let _p2 = g.admit(a).unwrap();
        assert_eq!(
            g.admit(a).unwrap_err().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let _q = g.admit(b).unwrap();
        drop(p1);
        let _p3 = g.admit(a).unwrap();
        let unlimited = guards(|_| {});
        let held: Vec<_> = (0..100).map(|_| unlimited.admit(a).unwrap()).collect();
        assert_eq!(held.len(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_auth_blocks_then_expires() {
        let g = guards(|o| {
            o.auth_failures_per_minute = 3;
            o.auth_block = Duration::from_secs(30);
        });
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(!g.auth_failed(a));
        assert!(!g.auth_failed(a));
        assert!(g.admit(a).is_ok());
        assert!(g.auth_failed(a));
        let refused = g.admit(a).unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "30");
        assert!(g.admit("198.51.100.2".parse().unwrap()).is_ok());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(g.admit(a).is_ok());
        // Failures spread over more than a minute never block.
        for _ in 0..10 {
            assert!(!g.auth_failed(a));
            assert!(!g.auth_failed(a));
            tokio::time::advance(Duration::from_secs(61)).await;
        }
        let off = guards(|o| o.auth_failures_per_minute = 0);
        for _ in 0..100 {
            assert!(!off.auth_failed(a));
        }
        assert!(off.admit(a).is_ok());
    }
}
