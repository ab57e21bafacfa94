//! MCP tools against real MCP servers written with the official Python SDK (`mcp` from PyPI,
//! installed by `scripts/deps` in `target/py`; `MICDROP_PYTHON` overrides the interpreter).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use micdrop_core::agent::Tool;
use micdrop_testkit::{mcp_python, mcp_test_server};
use micdrop_tools::config::{McpServerConfig, WebhookToolConfig};
use micdrop_tools::{ToolSet, ToolsError};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

fn stdio(name: &str, extra: &str) -> String {
    format!(
        "[[mcp]]\nname = \"{name}\"\ncommand = {:?}\nargs = [{:?}]\n{extra}\n",
        mcp_python(),
        mcp_test_server()
    )
}

#[derive(serde::Deserialize, Default)]
struct Doc {
    #[serde(default)]
    tools: Vec<WebhookToolConfig>,
    #[serde(default)]
    mcp: Vec<McpServerConfig>,
}

async fn start(text: &str) -> Result<ToolSet, ToolsError> {
    let doc: Doc = toml::from_str(text).unwrap();
    ToolSet::start(&doc.tools, &doc.mcp, &["end_call"]).await
}

fn find<'a>(tools: &'a [Tool], name: &str) -> &'a Tool {
    tools.iter().find(|t| t.name == name).unwrap()
}

async fn call(tools: &[Tool], name: &str, args: Value) -> Result<Value, String> {
    (find(tools, name).handler.clone().unwrap())(args).await
}

/// Calls `name` until it answers (the server is restarted at most once a second).
async fn call_until_ok(tools: &[Tool], name: &str) -> Value {
    for _ in 0..50 {
        if let Ok(v) = call(tools, name, json!({})).await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{name} never answered again");
}

#[tokio::test]
async fn stdio_server_tools_are_listed_filtered_and_called() {
    let set = start(&stdio(
        "crm",
        "env = { CRM_TOKEN = \"${CARGO_PKG_NAME}\" }\nallowed_tools = [\"find_customer\", \"create_ticket\", \"fail\"]",
    ))
    .await
    .unwrap();
    assert_eq!(set.names(), ["find_customer", "create_ticket", "fail"]);
    let tools = set.tools_for_call();
    // The schema the server gives, under the tool's own name.
    let find_customer = find(&tools, "find_customer");
    assert_eq!(find_customer.description, "Trouve un client par son nom.");
    assert_eq!(find_customer.parameters["type"], "object");
    assert_eq!(find_customer.parameters["required"], json!(["name"]));
    let out = call(&tools, "find_customer", json!({"name": "Léa"}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!("Client Léa : rendez-vous le 3 mars à 10 h (jeton 13 caractères)")
    );
    let out = call(
        &tools,
        "create_ticket",
        json!({"subject": "Panne", "urgent": true}),
    )
    .await
    .unwrap();
    assert_eq!(out, json!("Ticket créé : Panne (urgent)"));
    // A tool error (isError) and bad arguments reach the model as errors.
    let e = call(&tools, "fail", json!({})).await.unwrap_err();
    assert!(e.contains("le CRM est en maintenance"), "{e}");
    let e = call(&tools, "find_customer", json!({})).await.unwrap_err();
    assert!(e.to_lowercase().contains("name"), "{e}");
    set.shutdown().await;
}

#[tokio::test]
async fn a_server_that_dies_mid_call_is_restarted() {
    let set = start(&stdio("crm", "")).await.unwrap();
    let tools = set.tools_for_call();
    let before = call(&tools, "whoami", json!({})).await.unwrap();
    let e = call(&tools, "crash", json!({})).await.unwrap_err();
    assert!(e.contains("MCP server crm stopped"), "{e}");
    // Its tools fail or restart it; once restarted, a new process answers.
    let after = call_until_ok(&tools, "whoami").await;
    assert_ne!(before, after, "a new process");
    // Other calls' tools share the restarted connection.
    let again = call(&set.tools_for_call(), "whoami", json!({}))
        .await
        .unwrap();
    assert_eq!(after, again);
    set.shutdown().await;
}

fn alive(pid: &Value) -> bool {
    PathBuf::from(format!("/proc/{}", pid.as_str().unwrap())).exists()
}

async fn wait_gone(pid: &Value) {
    for _ in 0..100 {
        if !alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("process {pid} still runs");
}

#[tokio::test]
async fn shared_or_per_call_connections() {
    let shared = start(&stdio("shared", "allowed_tools = [\"whoami\"]"))
        .await
        .unwrap();
    let (a, b) = (shared.tools_for_call(), shared.tools_for_call());
    assert_eq!(
        call(&a, "whoami", json!({})).await.unwrap(),
        call(&b, "whoami", json!({})).await.unwrap(),
        "one process for every call"
    );

    let own = start(&stdio(
        "own",
        "per_call = true\nallowed_tools = [\"whoami\"]",
    ))
    .await
    .unwrap();
    let (a, b) = (own.tools_for_call(), own.tools_for_call());
    let pid_a = call(&a, "whoami", json!({})).await.unwrap();
    let pid_b = call(&b, "whoami", json!({})).await.unwrap();
    assert_ne!(pid_a, pid_b, "one process per call");
    assert_eq!(call(&a, "whoami", json!({})).await.unwrap(), pid_a);
    assert!(alive(&pid_a));
    // The call ends (its tools are dropped): its process stops; the other call's stays.
    drop(a);
    wait_gone(&pid_a).await;
    assert!(alive(&pid_b));
    drop(b);
    wait_gone(&pid_b).await;
    shared.shutdown().await;
}

#[tokio::test]
async fn start_up_errors_name_the_server() {
    let cases = [
        (
            "[[mcp]]\nname = \"ghost\"\ncommand = \"/nonexistent/mcp-server\"\n".to_owned(),
            "[[mcp]] ghost: cannot run",
        ),
        (
            format!(
                "[[mcp]]\nname = \"quitter\"\ncommand = {:?}\nargs = [\"-c\", \"import sys; sys.exit(1)\"]\n",
                mcp_python()
            ),
            "[[mcp]] quitter: initialization failed",
        ),
        (
            stdio("crm", "allowed_tools = [\"find_custmer\"]"),
            "find_custmer",
        ),
        (
            [
                stdio("crm", "allowed_tools = [\"whoami\"]"),
                stdio("crm2", "allowed_tools = [\"whoami\"]"),
            ]
            .concat(),
            "tool name clash: whoami is offered by MCP server crm and by MCP server crm2",
        ),
        (
            format!(
                "[[tools]]\nname = \"whoami\"\ndescription = \"d\"\nurl = \"http://127.0.0.1:9/\"\n{}",
                stdio("crm", "")
            ),
            "tool name clash: whoami",
        ),
        (
            "[[mcp]]\nname = \"both\"\ncommand = \"x\"\nurl = \"http://127.0.0.1:9/mcp\"\n"
                .to_owned(),
            "exactly one of",
        ),
        (
            "[[mcp]]\nname = \"x\"\nurl = \"http://127.0.0.1:9/mcp\"\nstartup_timeout_ms = 2000\n"
                .to_owned(),
            "[[mcp]] x: cannot connect",
        ),
    ];
    for (text, needle) in cases {
        let e = match start(&text).await {
            Ok(_) => panic!("started: {text}"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

/// Starts the HTTP flavour of the test server; returns it and its MCP URL.
async fn http_server() -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(mcp_python())
        .arg(mcp_test_server())
        .arg("http")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let port = lines.next_line().await.unwrap().expect("port line");
    (child, format!("http://127.0.0.1:{}/mcp", port.trim()))
}

#[tokio::test]
async fn streamable_http_server() {
    let (_child, url) = http_server().await;
    let set = start(&format!(
        "[[mcp]]\nname = \"crm-http\"\nurl = \"{url}\"\nheaders = {{ x-tenant = \"eu\" }}\nallowed_tools = [\"find_customer\", \"fail\", \"slow\"]\ntimeout_ms = 500\n"
    ))
    .await
    .unwrap();
    let tools = set.tools_for_call();
    let out = call(&tools, "find_customer", json!({"name": "Jules"}))
        .await
        .unwrap();
    assert!(out.as_str().unwrap().starts_with("Client Jules"), "{out}");
    let e = call(&tools, "fail", json!({})).await.unwrap_err();
    assert!(e.contains("maintenance"), "{e}");
    // The call timeout.
    let e = call(&tools, "slow", json!({"seconds": 5}))
        .await
        .unwrap_err();
    assert_eq!(e, "timeout after 500 ms");
    // Still usable after a timeout.
    assert!(
        call(&tools, "find_customer", json!({"name": "Ana"}))
            .await
            .is_ok()
    );
    set.shutdown().await;
}

#[tokio::test]
async fn a_dropped_call_is_cancelled_on_the_server() {
    let dir = std::env::temp_dir().join(format!("micdrop-mcp-cancel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("cancel.log");
    let _ = std::fs::remove_file(&log);
    let set = start(&stdio(
        "crm",
        &format!(
            "env = {{ CANCEL_LOG = {:?} }}\nallowed_tools = [\"slow\", \"whoami\"]",
            log.display().to_string()
        ),
    ))
    .await
    .unwrap();
    let tools = set.tools_for_call();
    let handler = find(&tools, "slow").handler.clone().unwrap();
    let task = tokio::spawn(handler(json!({"seconds": 60})));
    // Let the request reach the server (it answers whoami only once it read our requests).
    call(&tools, "whoami", json!({})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort();
    let _ = task.await;
    for _ in 0..100 {
        if std::fs::read_to_string(&log).is_ok_and(|s| s.contains("cancelled")) {
            set.shutdown().await;
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server never saw the cancellation");
}
