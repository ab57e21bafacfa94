//! Graceful drain: on SIGTERM/SIGINT the server stops taking calls but lets the calls in
//! progress finish.
//!
//! - `/readyz` answers 503 at once (load balancers send new calls elsewhere) and new upgrades
//!   get HTTP 503; `/healthz` and `/metrics` keep answering.
//! - Calls in progress go on until they end or the drain timeout (`[server] drain_timeout_secs`,
//!   default 300 s) runs out; the calls still open then are closed with 1001
//!   `Server shutting down` (each gets its end) and the process exits.
//! - When the last call ends the process exits at once.
//! - A second SIGTERM/SIGINT ends the drain at once (1001).

use std::future::Future;
use std::time::Duration;

use tracing::{info, warn};

use crate::app::App;
use crate::server::RunningServer;

/// Default drain timeout: voice calls last minutes.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// How long calls get to receive their 1001 and end once the drain is over.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every call ended by itself.
    Drained,
    /// The drain timeout ran out; the remaining calls were closed with 1001.
    TimedOut,
    /// Interrupted (a second signal); the remaining calls were closed with 1001.
    Interrupted,
}

impl RunningServer {
    /// Stops taking calls: `/readyz` answers 503 and new upgrades get HTTP 503. Calls in
    /// progress are untouched. Idempotent.
    pub fn start_draining(&self) {
        self.draining.cancel();
        self.tracker.close();
    }

    /// Whether [`start_draining`](Self::start_draining) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Drains: stops taking calls, waits until every call has ended, `timeout` runs out or
    /// `interrupt` completes, then closes the remaining calls with 1001 and stops the server.
    pub async fn drain(self, timeout: Duration, interrupt: impl Future<Output = ()>) -> DrainEnd {
        self.start_draining();
        let active = self.active_calls();
        info!(
            active_calls = active,
            timeout_secs = timeout.as_secs(),
            "draining: no new calls; waiting for the calls in progress"
        );
        let end = tokio::select! {
            _ = self.tracker.wait() => DrainEnd::Drained,
            _ = tokio::time::sleep(timeout) => DrainEnd::TimedOut,
            _ = interrupt => DrainEnd::Interrupted,
        };
        match end {
            DrainEnd::Drained => info!("drained: every call has ended"),
            DrainEnd::TimedOut => warn!(
                active_calls = self.active_calls(),
                "drain timeout: closing the remaining calls (1001)"
            ),
            DrainEnd::Interrupted => warn!(
                active_calls = self.active_calls(),
                "second signal: closing the remaining calls (1001)"
            ),
        }
        self.shutdown(CLOSE_GRACE).await;
        end
    }
}

impl App {
    /// Drains the server (see [`RunningServer::drain`]), then stops the store (its queued
    /// writes are written), flushes the traces and stops the simulators.
    pub async fn drain(self, timeout: Duration, interrupt: impl Future<Output = ()>) -> DrainEnd {
        let end = self.server.drain(timeout, interrupt).await;
        if let Some(store) = self.store {
            store.shutdown(Duration::from_secs(5)).await;
        }
        if let Some(traces) = self.traces {
            // Every call has ended: the last spans go out before exit.
            traces.shutdown().await;
        }
        if let Some(sim) = self.sim {
            sim.shutdown().await;
        }
        end
    }

    /// Runs until SIGTERM or SIGINT, then drains for at most [`App::drain_timeout`]; a second
    /// signal ends the drain at once.
    ///
    /// The handlers are installed when this is first polled: until then the signals still have
    /// their default effect (SIGTERM ends the process at once). A program that announces itself
    /// before (a banner that a supervisor or test waits for) installs them first with
    /// [`Signals::new`] and calls [`run_until`](Self::run_until), as `micdrop serve` does.
    pub async fn run_until_signal(self) -> std::io::Result<DrainEnd> {
        Ok(self.run_until(Signals::new()?).await)
    }

    /// [`run_until_signal`](Self::run_until_signal) with handlers installed beforehand.
    pub async fn run_until(self, mut signals: Signals) -> DrainEnd {
        signals.recv().await;
        let timeout = self.drain_timeout;
        self.drain(timeout, signals.recv()).await
    }
}

/// SIGTERM and SIGINT (Ctrl-C), as one stream. From [`Signals::new`] on, these signals no longer
/// end the process: they are delivered here.
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (within a Tokio runtime).
    pub fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next SIGTERM or SIGINT (logged).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let name = tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            };
            info!(signal = name, "signal received");
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            info!(signal = "ctrl-c", "signal received");
        }
    }
}
