//! Memory of an idle call (issue #10: ≤ 8 KB per idle call on the whole server). Counted with a
//! global allocator that tracks live heap bytes, so the figure is exact and does not depend on
//! timing: the call engine's own share (its task, the call future, the conversation, the
//! outbox, no provider session) must stay small; the WebSocket's share is in micdrop-server.

use std::sync::Arc;

use micdrop_core::agent::Agent;
use micdrop_core::call::{CallConfig, run_call};
use micdrop_core::socket::channel_socket;
use micdrop_testkit::{ModelStep, ScriptedModel, ScriptedStt, ScriptedTts};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static ALLOC: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes.
fn live() -> isize {
    let s = ALLOC.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated
}

/// Lets every spawned task run until it waits.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Heap bytes the engine holds per idle call (connected, nothing said), over `n` calls.
async fn idle_bytes_per_call(config: &CallConfig, n: usize) -> isize {
    // The test's sockets (two channels each) are not the call's: made before counting.
    let sockets: Vec<_> = (0..n).map(|_| channel_socket(4)).collect();
    let mut peers = Vec::with_capacity(n);
    let mut calls = Vec::with_capacity(n);
    let before = live();
    for (sink, stream, tx, rx) in sockets {
        peers.push((tx, rx));
        calls.push(tokio::spawn(run_call(config.clone(), sink, stream)));
    }
    settle().await;
    let held = live() - before;
    drop(peers);
    for c in calls {
        c.await.unwrap();
    }
    held / n as isize
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_call_holds_little_memory() {
    let config = CallConfig::new(Arc::new(ScriptedStt::transcripts(&["bonjour"])))
        .agent(Agent::new(
            Arc::new(ScriptedModel::new([ModelStep::words("salut")])),
            "Tu es un assistant.",
        ))
        .tts(Arc::new(ScriptedTts::new()));
    let (sink, stream, _tx, _rx) = channel_socket(4);
    let fut = run_call(config.clone(), sink, stream);
    let future_bytes = std::mem::size_of_val(&fut);
    drop(fut);
    // Warm-up (lazy statics: tracing call sites, the UUID generator, metrics).
    idle_bytes_per_call(&config, 10).await;
    let per_call = idle_bytes_per_call(&config, 200).await;
    println!("idle call: {per_call} heap bytes, call future {future_bytes} bytes");
    // Debug builds make bigger futures than release ones: the bound holds in both.
    assert!(
        per_call < 3072,
        "an idle call holds {per_call} bytes of heap in the engine (future: {future_bytes})"
    );
}
