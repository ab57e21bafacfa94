//! The admin API (`[admin] bearer_tokens`, served on the same listener as `/call`):
//!
//! - `GET /api/calls?limit=&before=&user_ref=`: calls, newest first (`next_before` pages on);
//! - `GET /api/calls/{id}`: the call and its whole conversation (every call of it, items,
//!   latencies, extracted data);
//! - `GET /api/calls/{id}/recording`: the WAV file;
//! - `DELETE /api/calls/{id}`: erases the whole conversation the call belongs to (204);
//! - `DELETE /api/calls?user_ref=X`: erases every conversation of a data subject;
//! - `GET /api/export?user_ref=X`: every conversation of a data subject as one JSON document.
//!
//! Every route needs `Authorization: Bearer <admin token>`; call tokens are not admin tokens.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use micdrop_store::{CallStore, ListQuery, StoreError};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

/// The admin API's state.
#[derive(Clone)]
struct Admin {
    store: Arc<CallStore>,
    tokens: Arc<Vec<String>>,
}

/// The admin routes, behind admin bearer tokens (at least one; empty tokens are ignored).
pub fn routes(store: Arc<CallStore>, tokens: Vec<String>) -> Router {
    let tokens: Vec<String> = tokens.into_iter().filter(|t| !t.is_empty()).collect();
    let admin = Admin {
        store,
        tokens: Arc::new(tokens),
    };
    Router::new()
        .route("/api/calls", get(list).delete(erase_user))
        .route("/api/calls/{id}", get(detail).delete(erase_call))
        .route("/api/calls/{id}/recording", get(recording))
        .route("/api/export", get(export))
        .layer(middleware::from_fn_with_state(admin.clone(), auth))
        .with_state(admin)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

async fn auth(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .as_bytes();
    let mut ok = false;
    for t in admin.tokens.iter() {
        ok |= bool::from(t.as_bytes().ct_eq(given));
    }
    if !ok || admin.tokens.is_empty() {
        info!(path = %req.uri().path(), "admin API: unauthorized");
        let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

fn store_error(e: &StoreError) -> Response {
    warn!(error = %e, "admin API: store error");
    error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
}

#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<usize>,
    before: Option<String>,
    user_ref: Option<String>,
}

async fn list(State(admin): State<Admin>, Query(p): Query<ListParams>) -> Response {
    let limit = p.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return error(StatusCode::BAD_REQUEST, "limit must be between 1 and 1000");
    }
    let query = ListQuery {
        limit,
        before: p.before.filter(|s| !s.is_empty()),
        user_ref: p.user_ref.filter(|s| !s.is_empty()),
    };
    match admin.store.store().list_calls(&query).await {
        Ok(calls) => {
            let next = (calls.len() == limit)
                .then(|| calls.last().map(|c| c.id.clone()))
                .flatten();
            axum::Json(json!({ "calls": calls, "next_before": next })).into_response()
        }
        Err(e) => store_error(&e),
    }
}

async fn detail(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    match admin.store.store().get_call(&id).await {
        Ok(Some(d)) => axum::Json(d).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "not found"),
        Err(e) => store_error(&e),
    }
}

async fn recording(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    let path = match admin.store.store().recording_path(&id).await {
        Ok(Some(p)) => p,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no recording"),
        Err(e) => return store_error(&e),
    };
    match tokio::fs::File::open(&path).await {
        Ok(file) => {
            let len = file.metadata().await.map(|m| m.len()).ok();
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
            let mut r = Response::new(body);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
            if let Some(len) = len {
                r.headers_mut().insert(header::CONTENT_LENGTH, len.into());
            }
            r
        }
        Err(e) => {
            warn!(error = %e, "admin API: recording file unreadable");
            error(StatusCode::NOT_FOUND, "no recording")
        }
    }
}

async fn erase_call(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    match admin.store.store().erase_conversation_of(&id).await {
        Ok(Some(erased)) => {
            metrics::counter!(micdrop_store::session::METRIC_ERASED)
                .increment(erased.conversations as u64);
            info!(
                calls = erased.calls.len(),
                recordings = erased.recordings,
                "admin API: conversation erased"
            );
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "not found"),
        Err(e) => store_error(&e),
    }
}

#[derive(Debug, Deserialize)]
struct UserParams {
    user_ref: Option<String>,
}

async fn erase_user(State(admin): State<Admin>, Query(p): Query<UserParams>) -> Response {
    let Some(user_ref) = p.user_ref.filter(|s| !s.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "user_ref is required (DELETE /api/calls/{id} erases one conversation)",
        );
    };
    match admin.store.store().erase_user(&user_ref).await {
        Ok(erased) => {
            metrics::counter!(micdrop_store::session::METRIC_ERASED)
                .increment(erased.conversations as u64);
            info!(
                conversations = erased.conversations,
                calls = erased.calls.len(),
                "admin API: data subject erased"
            );
            axum::Json(json!({ "erased": erased })).into_response()
        }
        Err(e) => store_error(&e),
    }
}

async fn export(State(admin): State<Admin>, Query(p): Query<UserParams>) -> Response {
    let Some(user_ref) = p.user_ref.filter(|s| !s.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "user_ref is required");
    };
    match admin.store.store().export_user(&user_ref).await {
        Ok(conversations) => {
            let mut r = axum::Json(json!({
                "user_ref": user_ref,
                "exported_at": micdrop_store::time::rfc3339(micdrop_store::time::now_ms()),
                "conversations": conversations,
            }))
            .into_response();
            r.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"micdrop-export.json\""),
            );
            r
        }
        Err(e) => store_error(&e),
    }
}
