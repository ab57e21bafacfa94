//! Params: the optional first text frame of a call (Micdrop's `waitForParams`).

use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::MicdropError;
use crate::protocol::{CLOSE_ABNORMAL, WsMessage};
use crate::socket::{SocketError, SocketStream};

/// Micdrop's params timeout: 3 s.
pub const PARAMS_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits for the first frame (text or binary) and parses it as JSON. No frame within `timeout` →
/// 4400 `Missing params`; not JSON → 4400 `Invalid params`; a socket error → its own close code
/// (1002, 1007, 1009, 1011; 1006 when the connection is gone). Pings and pongs are skipped.
pub async fn wait_for_params_json(
    stream: &mut SocketStream,
    timeout: Duration,
) -> Result<Value, MicdropError> {
    let first = tokio::time::timeout(timeout, async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(WsMessage::Text(t)) => return Ok(Some(t.into_bytes())),
                Ok(WsMessage::Binary(b)) => return Ok(Some(b.to_vec())),
                Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
                Ok(WsMessage::Close(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    })
    .await
    .map_err(|_| MicdropError::missing_params())?
    .map_err(socket_error)?
    .ok_or_else(MicdropError::missing_params)?;
    serde_json::from_slice(&first).map_err(|_| MicdropError::invalid_params())
}

/// The error that closes a call whose params could not be read: the socket error's own close
/// code (an oversized params frame is 1009, not `Missing params`), or 1006 for a lost connection
/// (reserved: nothing is sent).
fn socket_error(e: SocketError) -> MicdropError {
    match e.close_code() {
        Some(code) => MicdropError::new(code, e.close_reason()),
        None => MicdropError::new(CLOSE_ABNORMAL, e.close_reason()),
    }
}

/// Waits for the params and validates them: the JSON is deserialized into `T` (a failure is 4400
/// `Invalid params`), then `validate` may reject them with any [`MicdropError`] (4401 for a bad
/// token, for example).
pub async fn wait_for_params<T, F>(
    stream: &mut SocketStream,
    timeout: Duration,
    validate: F,
) -> Result<T, MicdropError>
where
    T: DeserializeOwned,
    F: FnOnce(&T) -> Result<(), MicdropError>,
{
    let value = wait_for_params_json(stream, timeout).await?;
    let params: T = serde_json::from_value(value).map_err(|_| MicdropError::invalid_params())?;
    validate(&params)?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::channel_socket;
    use futures::SinkExt;

    #[derive(serde::Deserialize, Debug)]
    struct P {
        authorization: String,
    }

    #[tokio::test(start_paused = true)]
    async fn missing_invalid_valid() {
        let (_sink, mut stream, _tx, _rx) = channel_socket(4);
        let e = wait_for_params_json(&mut stream, PARAMS_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(e, MicdropError::missing_params());

        let (_sink, mut stream, mut tx, _rx) = channel_socket(4);
        tx.send(Ok(WsMessage::Text("{nope".into()))).await.unwrap();
        let e = wait_for_params_json(&mut stream, PARAMS_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(e, MicdropError::invalid_params());

        let (_sink, mut stream, mut tx, _rx) = channel_socket(4);
        tx.send(Ok(WsMessage::Text(r#"{"lang":"fr"}"#.into())))
            .await
            .unwrap();
        let e = wait_for_params::<P, _>(&mut stream, PARAMS_TIMEOUT, |_| Ok(()))
            .await
            .unwrap_err();
        assert_eq!(e, MicdropError::invalid_params());

        let (_sink, mut stream, mut tx, _rx) = channel_socket(4);
        tx.send(Ok(WsMessage::Text(
            r#"{"authorization":"Bearer x"}"#.into(),
        )))
        .await
        .unwrap();
        let e = wait_for_params::<P, _>(&mut stream, PARAMS_TIMEOUT, |p| {
            if p.authorization == "Bearer y" {
                Ok(())
            } else {
                Err(MicdropError::unauthorized())
            }
        })
        .await
        .unwrap_err();
        assert_eq!(e.code, 4401);
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_error_keeps_its_close_code() {
        let (_sink, mut stream, mut tx, _rx) = channel_socket(4);
        tx.send(Err(SocketError::TooBig("70000 > 65536".into())))
            .await
            .unwrap();
        let e = wait_for_params_json(&mut stream, PARAMS_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(e, MicdropError::new(1009, "Frame too big"));

        let (_sink, mut stream, mut tx, _rx) = channel_socket(4);
        tx.send(Err(SocketError::Disconnected("reset".into())))
            .await
            .unwrap();
        let e = wait_for_params_json(&mut stream, PARAMS_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(e.code, 1006);
    }
}
