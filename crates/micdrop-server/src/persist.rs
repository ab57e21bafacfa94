//! The store on the call side: optional params, `conversation_id` resume, the call's observer
//! and its end (see docs/store.md). Called from `server::handle_socket`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use micdrop_core::call::CallConfig;
use micdrop_core::error::MicdropError;
use micdrop_core::protocol::WsMessage;
use micdrop_core::socket::SocketStream;
use micdrop_store::{CallSession, CallStore};
use serde_json::Value;

/// The store as the server uses it.
#[derive(Clone)]
pub struct StoreHook {
    /// The store.
    pub store: Arc<CallStore>,
    /// The provider hosts each call reaches (`host[:port]`), recorded with each call.
    pub provider_hosts: Vec<String>,
}

/// Without auth, params are optional: a first text frame holding a JSON object within `wait` is
/// the params; any other first frame (a command, audio, a close) is handed back to the call
/// untouched.
pub async fn optional_params(
    mut stream: SocketStream,
    wait: Duration,
) -> (Option<Value>, SocketStream) {
    let first = tokio::time::timeout(wait, async {
        loop {
            match stream.next().await {
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    match first {
        Err(_) => (None, stream),
        Ok(None) => (None, stream),
        Ok(Some(Ok(WsMessage::Text(t)))) => match serde_json::from_str::<Value>(&t) {
            Ok(v @ Value::Object(_)) => (Some(v), stream),
            _ => (None, push_back(Ok(WsMessage::Text(t)), stream)),
        },
        Ok(Some(frame)) => (None, push_back(frame, stream)),
    }
}

fn push_back(
    frame: Result<WsMessage, micdrop_core::socket::SocketError>,
    stream: SocketStream,
) -> SocketStream {
    Box::pin(futures::stream::once(async move { frame }).chain(stream))
}

/// Starts storing a call: a new unique call id, the conversation (new or resumed: history
/// given to the agent, first message not spoken again), the observer. An unknown
/// `conversation_id` is 4404 (unless `create_on_unknown`).
pub async fn begin(
    hook: &StoreHook,
    mut config: CallConfig,
    params: Option<&Value>,
) -> Result<(CallConfig, CallSession), MicdropError> {
    // The engine's call id (set by the factory, or made here): logs and store agree.
    let call_id = config
        .call_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    config.call_id = Some(call_id.clone());
    let mut begin = hook
        .store
        .begin_call(&call_id, params, hook.provider_hosts.clone())
        .await?;
    if begin.resumed {
        config.history = std::mem::take(&mut begin.history);
        config.first_message = None;
        config.generate_first_message = false;
    }
    tracing::info!(
        store_call_id = %call_id,
        conversation_id = %begin.conversation_id,
        resumed = begin.resumed,
        "call stored"
    );
    let observer = begin.session.observer();
    Ok((config.observer(observer), begin.session))
}
