//! A call server with trait-level providers, for the tests that drive it over real WebSockets.
//! Each test binary uses part of it.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use micdrop_core::call::{CallConfig, CallEnd};
use micdrop_server::{RunningServer, ServerOptions, start};
use micdrop_testkit::WsClient;

/// A running server on a free loopback port, with the ends of its calls.
pub struct Harness {
    pub server: RunningServer,
    pub ends: Arc<Mutex<Vec<CallEnd>>>,
}

impl Harness {
    /// Every call runs with `config`.
    pub async fn start(config: CallConfig) -> Self {
        Self::with_options(ServerOptions::with_template(config), |_| {}).await
    }

    /// `options`, changed by `tweak` once the end hook is in.
    pub async fn with_options(
        mut options: ServerOptions,
        tweak: impl FnOnce(&mut ServerOptions),
    ) -> Self {
        let ends = Arc::new(Mutex::new(Vec::new()));
        let e = ends.clone();
        options.on_end = Some(Arc::new(move |end| e.lock().unwrap().push(end)));
        tweak(&mut options);
        let server = start("127.0.0.1:0".parse().unwrap(), options)
            .await
            .unwrap();
        Self { server, ends }
    }

    /// A new call.
    pub async fn client(&self) -> WsClient {
        WsClient::connect(&self.server.ws_url("/call")).await
    }

    /// The next call end (at most 5 s).
    pub async fn wait_end(&self) -> CallEnd {
        for _ in 0..500 {
            if let Some(e) = self.ends.lock().unwrap().pop() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the call did not end");
    }
}
