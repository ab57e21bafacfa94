//! Webhook tools against a real HTTP server on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use micdrop_core::agent::{Tool, scope_call_id};
use micdrop_tools::ToolSet;
use micdrop_tools::config::WebhookToolConfig;
use serde_json::{Value, json};

async fn echo(headers: HeaderMap, body: String) -> impl IntoResponse {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    axum::Json(json!({
        "body": serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
        "call_id": h("x-micdrop-call-id"),
        "authorization": h("authorization"),
        "content_type": h("content-type"),
    }))
}

async fn server() -> SocketAddr {
    let app = Router::new()
        .route("/echo", post(echo))
        .route(
            "/query",
            get(|Query(q): Query<Vec<(String, String)>>| async move { format!("{q:?}") }),
        )
        .route(
            "/slow",
            any(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/status",
            any(|| async { (StatusCode::SERVICE_UNAVAILABLE, "maintenance en cours") }),
        )
        .route(
            "/badjson",
            any(|| async { ([(header::CONTENT_TYPE, "application/json")], "{nope") }),
        )
        .route(
            "/redirect",
            any(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "http://example.com/")],
                )
            }),
        )
        .route(
            "/big",
            any(|| async { "x".repeat(micdrop_tools::webhook::MAX_RESPONSE_BYTES + 10) }),
        )
        .route("/empty", any(|_: Request| async { StatusCode::NO_CONTENT }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn config(toml_text: &str) -> Vec<WebhookToolConfig> {
    #[derive(serde::Deserialize)]
    struct Doc {
        tools: Vec<WebhookToolConfig>,
    }
    toml::from_str::<Doc>(toml_text).unwrap().tools
}

async fn tools(addr: SocketAddr, extra: &str) -> Vec<Tool> {
    let text = format!(
        r#"
[[tools]]
name = "get_weather"
description = "Météo"
url = "http://{addr}/echo"
headers = {{ authorization = "Bearer ${{CARGO_PKG_NAME}}" }}
parameters = {{ type = "object", properties = {{ city = {{ type = "string" }}, days = {{ type = "integer", minimum = 1 }} }}, required = ["city"] }}
{extra}
"#
    );
    // `${CARGO_PKG_NAME}`: a variable cargo sets for every test run.
    let set = ToolSet::start(&config(&text), &[], &["end_call"])
        .await
        .unwrap();
    set.tools_for_call()
}

async fn call(tool: &Tool, args: Value) -> Result<Value, String> {
    let handler = tool.handler.clone().unwrap();
    scope_call_id("c42", handler(args)).await
}

fn webhook(addr: SocketAddr, name: &str, path: &str, extra: &str) -> String {
    format!(
        "[[tools]]\nname = \"{name}\"\ndescription = \"d\"\nurl = \"http://{addr}{path}\"\n{extra}\n"
    )
}

#[tokio::test]
async fn post_sends_arguments_headers_and_call_id() {
    let addr = server().await;
    let tools = tools(addr, "").await;
    let out = call(&tools[0], json!({"city": "Lyon", "days": 2}))
        .await
        .unwrap();
    assert_eq!(out["body"], json!({"city": "Lyon", "days": 2}));
    assert_eq!(out["call_id"], "c42");
    assert_eq!(out["authorization"], "Bearer micdrop-tools");
    assert_eq!(out["content_type"], "application/json");
}

#[tokio::test]
async fn arguments_are_validated_before_any_request() {
    let addr = server().await;
    let tools = tools(addr, "").await;
    for bad in [
        json!({}),
        json!({"city": 3}),
        json!({"city": "Lyon", "days": 0}),
    ] {
        let e = call(&tools[0], bad.clone()).await.unwrap_err();
        assert!(e.starts_with("invalid arguments"), "{bad}: {e}");
    }
}

#[tokio::test]
async fn get_sends_query_parameters_and_text_is_the_result() {
    let addr = server().await;
    let text = webhook(addr, "q", "/query", "method = \"GET\"");
    let set = ToolSet::start(&config(&text), &[], &[]).await.unwrap();
    let out = call(
        &set.tools_for_call()[0],
        json!({"city": "Saint-Étienne", "n": 2, "ok": true}),
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        json!(r#"[("city", "Saint-Étienne"), ("n", "2"), ("ok", "true")]"#)
    );
}

#[tokio::test]
async fn failures_become_errors_for_the_model() {
    let addr = server().await;
    let text = [
        webhook(addr, "slow", "/slow", "timeout_ms = 200"),
        webhook(addr, "status", "/status", ""),
        webhook(addr, "badjson", "/badjson", ""),
        webhook(addr, "redirect", "/redirect", ""),
        webhook(addr, "big", "/big", ""),
        webhook(addr, "empty", "/empty", ""),
    ]
    .concat();
    let set = ToolSet::start(&config(&text), &[], &[]).await.unwrap();
    let tools = set.tools_for_call();
    let by = |n: &str| tools.iter().find(|t| t.name == n).unwrap();
    assert_eq!(
        call(by("slow"), json!({})).await.unwrap_err(),
        "timeout after 200 ms"
    );
    assert_eq!(
        call(by("status"), json!({})).await.unwrap_err(),
        "HTTP 503: maintenance en cours"
    );
    assert_eq!(
        call(by("badjson"), json!({})).await.unwrap_err(),
        "invalid JSON in the response"
    );
    assert_eq!(
        call(by("redirect"), json!({})).await.unwrap_err(),
        "HTTP 302"
    );
    assert!(
        call(by("big"), json!({}))
            .await
            .unwrap_err()
            .contains("larger than")
    );
    assert_eq!(call(by("empty"), json!({})).await.unwrap(), Value::Null);

    // A server that is gone.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let set = ToolSet::start(&config(&webhook(dead, "gone", "/x", "")), &[], &[])
        .await
        .unwrap();
    assert_eq!(
        call(&set.tools_for_call()[0], json!({})).await.unwrap_err(),
        "cannot reach the tool's server"
    );
}

#[tokio::test]
async fn bad_configs_are_start_up_errors() {
    let addr = server().await;
    let cases = [
        (webhook(addr, "bad name", "/x", ""), "tool name"),
        (
            webhook(
                addr,
                "t",
                "/x",
                "headers = { a = \"${MICDROP_SURELY_UNSET_VAR}\" }",
            ),
            "MICDROP_SURELY_UNSET_VAR",
        ),
        (
            webhook(addr, "t", "/x", "parameters = { type = \"string\" }"),
            "object schema",
        ),
        (
            webhook(
                addr,
                "t",
                "/x",
                "parameters = { type = \"object\", properties = { a = { type = 5 } } }",
            ),
            "JSON Schema",
        ),
        (webhook(addr, "t", "/x", "timeout_ms = 0"), "timeout_ms"),
        (
            "[[tools]]\nname = \"t\"\ndescription = \"d\"\nurl = \"ftp://x/y\"\n".to_owned(),
            "http",
        ),
        (webhook(addr, "end_call", "/x", ""), "clash"),
        (
            [webhook(addr, "t", "/x", ""), webhook(addr, "t", "/y", "")].concat(),
            "clash",
        ),
    ];
    for (text, needle) in cases {
        let e = ToolSet::start(&config(&text), &[], &["end_call"])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    // Unknown keys are refused by the parser.
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Doc {
        tools: Vec<WebhookToolConfig>,
    }
    let e = toml::from_str::<Doc>(
        "[[tools]]\nname=\"t\"\ndescription=\"d\"\nurl=\"http://a/\"\ntimeout=3\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("timeout"), "{e}");
}

#[tokio::test]
async fn dropping_the_call_aborts_the_request() {
    // The server's handler is dropped when the client goes away: the guard tells the test.
    struct Guard(tokio::sync::mpsc::Sender<&'static str>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.try_send("handler dropped");
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    let app = Router::new().route(
        "/slow",
        post(move || {
            let tx = tx.clone();
            async move {
                let _ = tx.send("started").await;
                let _guard = Guard(tx.clone());
                tokio::time::sleep(Duration::from_secs(60)).await;
                let _ = tx.send("finished").await;
                "done"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let set = ToolSet::start(
        &config(&webhook(addr, "slow", "/slow", "timeout_ms = 60000")),
        &[],
        &[],
    )
    .await
    .unwrap();
    let tool = set.tools_for_call().remove(0);
    let task = tokio::spawn(async move { call(&tool, json!({})).await });
    assert_eq!(rx.recv().await, Some("started"));
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    // The connection closed with the dropped request, so the server dropped its handler.
    assert_eq!(rx.recv().await, Some("handler dropped"));
}
