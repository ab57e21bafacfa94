//! Traces: the spans of [`micdrop_core::trace`] (call, turn, STT utterance, model request, TTS
//! utterance), exported over OTLP/HTTP (protobuf) when `[telemetry] otlp_endpoint` is set.
//! Nothing is exported by default.
//!
//! Two halves, because the tracing subscriber is process-wide and is installed before the
//! configuration is read:
//!
//! - [`layer`]: put it once in the process's subscriber, right on the registry
//!   (`tracing_subscriber::registry().with(micdrop_server::traces::layer()).with(fmt...)`); `micdrop`
//!   does. It keeps only micdrop's trace spans (never log events, never other spans: the
//!   client's address, dependencies' spans) and forwards them to the exporter in use, if any.
//! - [`Traces`]: the exporter of an [`App`](crate::App) whose config sets `otlp_endpoint`,
//!   plugged into that layer at start and flushed and unplugged by its shutdown.
//!
//! The export never holds a call up: spans go to a bounded queue (full: new spans are dropped),
//! a background thread sends them in batches with a timeout per request; a collector that is
//! down or slow costs the calls nothing.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use tracing::Metadata;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::Filtered;
use tracing_subscriber::layer::{Context, Filter, Layer as _};
use tracing_subscriber::reload;

/// Time a batch export may take before it is abandoned (the batch is dropped).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Spans waiting for export at most; beyond, new spans are dropped (a collector that is down
/// never grows the server's memory).
pub const MAX_QUEUE: usize = 2048;
/// Spans per export request at most.
pub const MAX_BATCH: usize = 512;
/// How often the queue is sent.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(2);
/// How long a shutdown waits for the last spans to be sent.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

type Inner = OpenTelemetryLayer<Registry, SdkTracer>;
type Slot = reload::Handle<Option<Inner>, Registry>;

/// The layer of [`layer`]: micdrop's trace spans, to the exporter plugged in (if any).
pub type TracesLayer = Filtered<reload::Layer<Option<Inner>, Registry>, TraceSpans, Registry>;

static SLOT: OnceLock<Slot> = OnceLock::new();
/// An exporter is plugged into [`SLOT`]: while it is not, [`TraceSpans`] keeps nothing, so a
/// trace span that no log line wants (an info span with logs at warn) is not made at all.
static PLUGGED: AtomicBool = AtomicBool::new(false);

/// The layer to add (once per process) to the subscriber, right on the registry. Exports
/// nothing until an [`App`](crate::App) with `otlp_endpoint` starts. A second call returns a
/// layer that never exports (the first one is the one apps plug into).
pub fn layer() -> TracesLayer {
    let (reloadable, handle) = reload::Layer::new(None);
    let _ = SLOT.set(handle);
    reloadable.with_filter(TraceSpans)
}

/// The filter of [`layer`]: micdrop's trace spans ([`micdrop_core::trace::SPANS`]) and nothing
/// else (no event: log lines at debug level carry user content), while an exporter is plugged
/// (a span made before it was plugged is not exported).
#[derive(Debug, Clone, Copy)]
pub struct TraceSpans;

impl TraceSpans {
    fn wants(meta: &Metadata<'_>) -> bool {
        meta.is_span()
            && meta.target().starts_with("micdrop_")
            && micdrop_core::trace::SPANS.contains(&meta.name())
    }
}

impl<S> Filter<S> for TraceSpans {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        PLUGGED.load(Ordering::Acquire) && Self::wants(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Asked again when an exporter is plugged or unplugged (`set_plugged`).
        if PLUGGED.load(Ordering::Acquire) && Self::wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // The trace spans are at info (the call's at error). Nothing while nothing exports:
        // then a span that only this layer would want (an info span with logs at warn) is
        // not even built (`tracing` checks the process's max level first).
        Some(if PLUGGED.load(Ordering::Acquire) {
            LevelFilter::INFO
        } else {
            LevelFilter::OFF
        })
    }
}

/// Plugs or unplugs: `tracing` caches which spans each layer wants and the process's max level;
/// they are computed again.
fn set_plugged(plugged: bool) {
    PLUGGED.store(plugged, Ordering::Release);
    tracing::callsite::rebuild_interest_cache();
}

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// `otlp_endpoint` is not an http(s) URL.
    #[error("[telemetry] otlp_endpoint {0:?} is not an http:// or https:// URL")]
    Endpoint(String),
    /// The exporter could not be built.
    #[error("[telemetry] otlp_endpoint: cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// The process's subscriber has no [`layer`].
    #[error(
        "[telemetry] otlp_endpoint is set but this process's tracing subscriber has no \
         micdrop_server::traces::layer(): nothing could be exported"
    )]
    NoLayer,
    /// Another app of this process exports already.
    #[error("[telemetry] otlp_endpoint: another server of this process already exports traces")]
    Busy,
}

/// The URL spans are posted to: `endpoint` as given when it has a path, else
/// `endpoint/v1/traces` (the OTLP/HTTP convention for a collector's base URL).
pub fn traces_url(endpoint: &str) -> Result<String, TracesError> {
    let url =
        url::Url::parse(endpoint.trim()).map_err(|_| TracesError::Endpoint(endpoint.into()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(TracesError::Endpoint(endpoint.into()));
    }
    if url.path().trim_matches('/').is_empty() {
        Ok(format!("{}/v1/traces", url.as_str().trim_end_matches('/')))
    } else {
        Ok(url.into())
    }
}

/// An app's trace exporter, plugged into [`layer`] until [`Traces::shutdown`].
pub struct Traces {
    provider: SdkTracerProvider,
    url: String,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").field("url", &self.url).finish()
    }
}

impl Traces {
    /// Starts exporting to `endpoint` with `service_name`; `None` when `endpoint` is `None`
    /// (then nothing at all is built, and nothing is sent).
    pub fn start(
        endpoint: Option<&str>,
        service_name: &str,
    ) -> Result<Option<Traces>, TracesError> {
        let Some(endpoint) = endpoint else {
            return Ok(None);
        };
        let url = traces_url(endpoint)?;
        let slot = SLOT.get().ok_or(TracesError::NoLayer)?;
        // The exporter's client (reqwest 0.13 built without a TLS provider) needs the process's
        // default one for https endpoints: ring's, as the rest of the workspace.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TracesError::Exporter(e.to_string()))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUE)
            .with_max_export_batch_size(MAX_BATCH)
            .with_scheduled_delay(EXPORT_INTERVAL)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = Resource::builder_empty()
            .with_service_name(service_name.to_owned())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("micdrop");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Exactly the fields of micdrop_core::trace: no source paths, threads, targets or
            // busy/idle times.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false);
        let mut busy = false;
        let plugged = slot.modify(|current| {
            busy = current.is_some();
            if !busy {
                *current = Some(layer);
            }
        });
        if busy || plugged.is_err() {
            // Nothing was exported through it: dropping it sends nothing.
            drop(provider);
            return Err(if busy {
                TracesError::Busy
            } else {
                TracesError::NoLayer
            });
        }
        set_plugged(true);
        tracing::info!(url = %url, "exporting traces over OTLP/HTTP");
        Ok(Some(Traces { provider, url }))
    }

    /// Unplugs the exporter and sends the spans still queued (at most [`FLUSH_TIMEOUT`]; the
    /// sending thread is never waited on beyond it).
    pub async fn shutdown(self) {
        if let Some(slot) = SLOT.get() {
            let _ = slot.modify(|current| *current = None);
            set_plugged(false);
        }
        let provider = self.provider;
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(FLUSH_TIMEOUT, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "traces: last export failed"),
            Ok(Err(_)) | Err(_) => tracing::warn!("traces: last export did not finish in time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_trace_span_is_made_while_nothing_exports_and_the_logs_do_not_want_it() {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt;
        // As `micdrop` builds it (crates/micdrop-cli/src/main.rs).
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(crate::logging::log_filter(
                tracing_subscriber::EnvFilter::new("warn"),
            ));
        let subscriber = tracing_subscriber::registry().with(layer()).with(logs);
        tracing::subscriber::with_default(subscriber, || {
            let turn = tracing::info_span!(target: "micdrop_core::call", "turn");
            assert!(turn.is_disabled(), "an info trace span with logs at warn");
            let call = tracing::error_span!(target: "micdrop_core::call", "call");
            assert!(
                !call.is_disabled(),
                "the call's span carries the log lines' context"
            );
        });
    }

    #[test]
    fn urls() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example.eu/").unwrap(),
            "https://otel.example.eu/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example.eu/custom/v1/traces").unwrap(),
            "https://otel.example.eu/custom/v1/traces"
        );
        for bad in ["127.0.0.1:4318", "grpc://x:4317", "", "http://"] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_checks_the_endpoint() {
        use crate::config::Config;
        let ok = Config::from_toml(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            ok.telemetry.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(ok.telemetry.service_name, "micdrop");
        let bad = Config::from_toml(
            "[telemetry]\notlp_endpoint = \"127.0.0.1:4318\"\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("otlp_endpoint"), "{bad}");
        let empty = Config::from_toml("[telemetry]\nservice_name = \" \"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(empty.contains("service_name"), "{empty}");
    }

    #[test]
    fn only_micdrop_trace_spans_pass() {
        let wants = |span: tracing::Span| span.metadata().is_some_and(TraceSpans::wants);
        assert!(wants(tracing::info_span!("turn")));
        assert!(wants(tracing::info_span!("tts.utterance")));
        assert!(!wants(tracing::error_span!("client")));
        assert!(!wants(tracing::info_span!(target: "hyper::client", "call")));
    }
}
