//! Operations: the `[telemetry]` section, the Prometheus recorder and `GET /metrics`, and the
//! per-call counters (active calls, outcomes, durations).
//!
//! The metric names live in [`micdrop_core::telemetry`]; the call engine and the providers
//! record through the `metrics` facade. This module installs the process-wide Prometheus
//! recorder (once, whatever the number of servers in the process) and renders it.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use micdrop_core::call::EndReason;
use micdrop_core::telemetry as names;
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// Buckets of `micdrop_turn_latency_seconds` (seconds): fine below one second, where
/// voice-to-voice targets live.
pub const TURN_LATENCY_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];
/// Buckets of `micdrop_call_duration_seconds` (seconds): voice calls last minutes.
pub const CALL_DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// Serve `GET /metrics` (Prometheus text format) on the call listener.
    pub metrics: bool,
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    /// An environment variable holding the metrics token (used when `metrics_token` is unset).
    pub metrics_token_env: Option<String>,
    /// OTLP/HTTP endpoint of a trace collector (e.g. `http://127.0.0.1:4318`); no traces are
    /// exported when unset.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported traces.
    pub service_name: String,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            metrics: true,
            metrics_token: None,
            metrics_token_env: None,
            otlp_endpoint: None,
            service_name: "micdrop".into(),
        }
    }
}

impl TelemetrySection {
    /// The metrics token, from the file or the environment (empty counts as none).
    pub fn token(&self) -> Option<String> {
        self.metrics_token
            .clone()
            .or_else(|| {
                self.metrics_token_env
                    .as_ref()
                    .and_then(|v| std::env::var(v).ok())
            })
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    }
}

/// The process-wide Prometheus recorder, installed on first use, with its upkeep thread.
///
/// Returns `None` when another recorder was installed first by the embedding program (its
/// metrics then go there, and `/metrics` is not served).
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::TURN_LATENCY_SECONDS.into()),
                    TURN_LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::CALL_DURATION_SECONDS.into()),
                        CALL_DURATION_BUCKETS,
                    )
                })
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            // Present from the start (at 0): the autoscaler reads it before any call.
            metrics::gauge!(names::CALLS_ACTIVE).increment(0.0);
            // Histograms buffer their samples until upkeep folds them into buckets: run it
            // even if nobody scrapes, so memory stays bounded.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(names::CALLS_ACTIVE, "Calls in progress on this instance.");
    describe_counter!(
        names::CALLS_TOTAL,
        "Calls ended or refused, by outcome (completed, client_closed, idle, shutdown, error, rejected)."
    );
    describe_histogram!(
        names::CALL_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of calls."
    );
    describe_histogram!(
        names::TURN_LATENCY_SECONDS,
        Unit::Seconds,
        "Per-turn latency by stage: stt (StopSpeaking to final transcript), llm_first_token, tts_first_audio, voice_to_voice (StopSpeaking to first assistant audio)."
    );
    describe_counter!(
        names::BARGE_INS_TOTAL,
        "The user spoke over an answer in progress."
    );
    describe_counter!(
        names::PROVIDER_REQUESTS_TOTAL,
        "Requests to providers (model requests, STT and TTS sessions)."
    );
    describe_counter!(names::PROVIDER_ERRORS_TOTAL, "Failed provider requests.");
    describe_counter!(
        names::PROVIDER_RETRIES_TOTAL,
        "Provider retries and reconnections."
    );
    describe_counter!(names::FALLBACKS_TOTAL, "Switches to a fallback provider.");
    describe_counter!(
        names::AUDIO_IN_SECONDS_TOTAL,
        Unit::Seconds,
        "User audio received (whole seconds)."
    );
    describe_counter!(
        names::AUDIO_OUT_SECONDS_TOTAL,
        Unit::Seconds,
        "Assistant audio sent (whole seconds)."
    );
    describe_gauge!(names::BUILD_INFO, "The build's version (always 1).");
}

/// `GET /metrics` as configured: the recorder and an optional bearer token.
#[derive(Clone)]
pub struct MetricsEndpoint {
    handle: PrometheusHandle,
    token: Option<String>,
}

impl std::fmt::Debug for MetricsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsEndpoint")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl MetricsEndpoint {
    /// The endpoint of the process-wide recorder (`None` if another recorder is installed).
    pub fn new(token: Option<String>) -> Option<Self> {
        Some(Self {
            handle: prometheus()?,
            token,
        })
    }

    /// Renders the metrics, or 401 without the right token.
    pub fn respond(&self, headers: &HeaderMap) -> Response {
        if let Some(token) = &self.token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !bool::from(token.as_bytes().ct_eq(given.as_bytes())) {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "unauthorized",
                )
                    .into_response();
            }
        }
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            self.handle.render(),
        )
            .into_response()
    }
}

/// Counts a call refused before or at its start (HTTP 503, 4400, 4401, 4404, ...).
pub fn call_rejected() {
    metrics::counter!(names::CALLS_TOTAL, "outcome" => "rejected").increment(1);
}

/// A call in progress: holds the active-calls gauge up until it is dropped, whatever happens.
#[derive(Debug)]
pub struct ActiveCall {
    started: Instant,
}

impl ActiveCall {
    /// A call starts.
    pub fn start() -> Self {
        metrics::gauge!(names::CALLS_ACTIVE).increment(1.0);
        Self {
            started: Instant::now(),
        }
    }

    /// The call ended: counts its outcome and its duration.
    pub fn end(self, reason: &EndReason) {
        metrics::counter!(names::CALLS_TOTAL, "outcome" => reason.outcome()).increment(1);
        metrics::histogram!(names::CALL_DURATION_SECONDS)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        metrics::gauge!(names::CALLS_ACTIVE).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_file_or_environment() {
        let mut t = TelemetrySection::default();
        assert!(t.metrics && t.token().is_none() && t.otlp_endpoint.is_none());
        t.metrics_token_env = Some("MICDROP_TEST_METRICS_TOKEN_UNSET".into());
        assert_eq!(t.token(), None);
        t.metrics_token = Some(" s3cret ".into());
        assert_eq!(t.token().as_deref(), Some("s3cret"));
        let e = MetricsEndpoint::new(t.token()).unwrap();
        assert!(!format!("{e:?}").contains("s3cret"));
    }
}
