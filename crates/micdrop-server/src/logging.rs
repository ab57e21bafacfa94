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
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::combinator::And;
use tracing_subscriber::filter::{FilterExt, FilterFn, LevelFilter, filter_fn};

/// The most verbose level allowed to targets outside micdrop's crates.
pub const DEPENDENCY_MAX_LEVEL: Level = Level::INFO;

/// Whether an event or span of `meta` may be logged at all (before the user's filter).
pub fn allowed(meta: &Metadata<'_>) -> bool {
    *meta.level() <= DEPENDENCY_MAX_LEVEL || is_own_target(meta.target())
}

/// The max level of the `log` facade, through which the dependencies log (tungstenite, hyper,
/// reqwest...; micdrop's own crates use `tracing`): what the log filter may show (`filter_max`,
/// e.g. `EnvFilter::max_level_hint`; `None`: unknown), capped at [`DEPENDENCY_MAX_LEVEL`].
pub fn log_facade_level(filter_max: Option<LevelFilter>) -> log::LevelFilter {
    let level = filter_max.map_or(LevelFilter::from_level(DEPENDENCY_MAX_LEVEL), |f| {
        f.min(LevelFilter::from_level(DEPENDENCY_MAX_LEVEL))
    });
    match level.into_level() {
        None => log::LevelFilter::Off,
        Some(Level::ERROR) => log::LevelFilter::Error,
        Some(Level::WARN) => log::LevelFilter::Warn,
        Some(Level::INFO) => log::LevelFilter::Info,
        Some(Level::DEBUG) => log::LevelFilter::Debug,
        Some(Level::TRACE) => log::LevelFilter::Trace,
    }
}

/// Sets the `log` facade's max level (call it after installing the subscriber, which sets it
/// to trace). Without it every `trace!` of tungstenite (several per frame read or written) went
/// through the subscriber's filters at run time: half of the server's instructions per turn
/// (`scripts/bench-callgrind`), for records that were then dropped.
pub fn cap_log_facade(filter_max: Option<LevelFilter>) {
    log::set_max_level(log_facade_level(filter_max));
}

/// micdrop's own crates (`micdrop_core`, `micdrop_server`, ..., the `micdrop` binary).
fn is_own_target(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    krate == "micdrop" || krate.starts_with("micdrop_")
}

/// The dependency cap as a filter.
pub type DependencyCap = FilterFn<fn(&Metadata<'_>) -> bool>;

/// The cap alone, as a filter (see [`log_filter`]).
pub fn dependency_cap() -> DependencyCap {
    filter_fn(allowed as fn(&Metadata<'_>) -> bool)
}

/// The log layer's filter: the user's (`MICDROP_LOG`) and the dependency cap, as a per-layer
/// filter (`fmt::layer().with_filter(log_filter(env_filter))`). Not a global one: a global
/// filter that may enable a callsite makes `tracing` build each span another layer could
/// want, so every trace span of every call was built and entered with logs at `warn` and no
/// exporter.
pub fn log_filter<S>(user: EnvFilter) -> And<EnvFilter, DependencyCap, S> {
    user.and(dependency_cap())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_facade_is_capped_at_the_filter_and_at_info() {
        assert_eq!(
            log_facade_level(Some(LevelFilter::WARN)),
            log::LevelFilter::Warn
        );
        assert_eq!(
            log_facade_level(Some(LevelFilter::TRACE)),
            log::LevelFilter::Info
        );
        assert_eq!(log_facade_level(None), log::LevelFilter::Info);
        assert_eq!(
            log_facade_level(Some(LevelFilter::OFF)),
            log::LevelFilter::Off
        );
        // The only test of this binary that touches the global level.
        log::set_max_level(log::LevelFilter::Trace);
        cap_log_facade(Some(LevelFilter::WARN));
        assert!(log::Level::Trace > log::max_level() && log::Level::Info > log::max_level());
        assert!(log::Level::Warn <= log::max_level());
    }

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
