//! The log filter's cap on dependencies: whatever `MICDROP_LOG` asks for (even `trace`), the
//! targets of other crates log at most at `info`.
//!
//! At `debug` and `trace` our dependencies log what goes over the wire: tungstenite the
//! handshake headers (Gradium's `x-api-key`) and every frame (the params with the bearer
//! token), hyper and h2 request heads, reqwest the URLs (Gladia's session `token=`), rustls
//! its secrets' life cycle. None of it helps run a voice server, and a secret in a log file is
//! a leak. micdrop's own targets (`micdrop*`) keep every level; they never log keys, tokens or
//! params (user content only at `debug`).

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{FilterFn, filter_fn};

/// The most verbose level allowed to targets outside micdrop's crates.
pub const DEPENDENCY_MAX_LEVEL: Level = Level::INFO;

/// Whether an event or span of `meta` may be logged at all (before the user's filter).
pub fn allowed(meta: &Metadata<'_>) -> bool {
    is_own_target(meta.target()) || *meta.level() <= DEPENDENCY_MAX_LEVEL
}

/// micdrop's own crates (`micdrop_core`, `micdrop_server`, ..., the `micdrop` binary).
fn is_own_target(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    krate == "micdrop" || krate.starts_with("micdrop_")
}

/// A global filter to add to the subscriber (`registry().with(filter).with(dependency_cap())`).
pub fn dependency_cap() -> FilterFn<fn(&Metadata<'_>) -> bool> {
    filter_fn(allowed as fn(&Metadata<'_>) -> bool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_targets_only() {
        for own in [
            "micdrop",
            "micdrop_core::call",
            "micdrop_server",
            "micdrop_providers::gladia",
        ] {
            assert!(is_own_target(own), "{own}");
        }
        for dep in [
            "tungstenite::protocol",
            "tokio_tungstenite",
            "hyper::proto::h1",
            "hyper_util::client",
            "reqwest::connect",
            "h2::codec",
            "rustls::client",
            "micdropper",
            "log",
        ] {
            assert!(!is_own_target(dep), "{dep}");
        }
    }
}
