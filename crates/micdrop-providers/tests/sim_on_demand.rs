//! On-demand provider sessions (the shared `link`): nothing is opened while a call is idle, a
//! session opens when it is needed (audio buffered meanwhile, nothing lost), an idle session is
//! closed (Gladia's ended with `stop_recording`) and reopened at the next need.

mod common;

use std::time::Duration;

use common::{WAIT, config, sim, start_stt, start_tts};
use micdrop_core::stt::SttEvent;
use micdrop_providers::{GladiaStt, GradiumStt, GradiumTts};
use micdrop_sim::{ServiceCounters, SimHandle};

const IDLE_MS: u64 = 300;

/// Waits until `f(counters)` holds (panics after `WAIT`).
async fn until(sim: &SimHandle, what: &str, f: impl Fn(&micdrop_sim::SimCounters) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c = sim.counters();
        if f(&c) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {c:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn quiet_for(c: &ServiceCounters) -> bool {
    c.sessions == 0 && c.connections == 0 && c.requests == 0
}

#[tokio::test]
async fn gladia_opens_at_the_first_turn_and_closes_when_idle() {
    let sim = sim(&["Bonjour", "Au revoir"], |_| {}).await;
    let mut c = config(&sim).stt.gladia;
    c.on_demand = true;
    c.idle_close_ms = IDLE_MS;
    let key = c.api_key.clone().unwrap();
    let mut s = start_stt(&GladiaStt::new(c, key).unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(quiet_for(&sim.counters().gladia), "{:?}", sim.counters());

    // The turn's audio is sent before the session exists: buffered, nothing lost.
    s.turn(800).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript("Bonjour".into()));
    // Idle: the session is ended (not merely disconnected: no live session left).
    until(&sim, "the idle session ends", |c| {
        c.gladia.open_sessions == 0 && c.gladia.open_connections == 0
    })
    .await;
    assert_eq!(sim.counters().gladia.sessions, 1);

    s.turn(800).await;
    assert_eq!(
        s.next_final().await,
        SttEvent::Transcript("Au revoir".into()),
        "the call's transcripts go on in the reopened session"
    );
    assert_eq!(sim.counters().gladia.sessions, 2);
}

#[tokio::test]
async fn gradium_stt_opens_at_the_first_turn_and_closes_when_idle() {
    let sim = sim(&["Bonjour", "Au revoir"], |_| {}).await;
    let mut c = config(&sim).stt.gradium;
    c.on_demand = true;
    c.idle_close_ms = IDLE_MS;
    let key = c.api_key.clone().unwrap();
    let mut s = start_stt(&GradiumStt::new(c, key).unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(quiet_for(&sim.counters().gradium_stt));
    s.turn(800).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript("Bonjour".into()));
    until(&sim, "the idle socket closes", |c| {
        c.gradium_stt.open_connections == 0
    })
    .await;
    s.turn(800).await;
    assert_eq!(
        s.next_final().await,
        SttEvent::Transcript("Au revoir".into()),
        "the call's transcripts go on in the reopened socket"
    );
    assert_eq!(sim.counters().gradium_stt.connections, 2);
}

#[tokio::test]
async fn gradium_tts_opens_when_there_is_something_to_say() {
    let sim = sim(&[], |_| {}).await;
    let mut c = config(&sim).tts.unwrap().gradium;
    c.on_demand = true;
    c.idle_close_ms = IDLE_MS;
    let key = c.api_key.clone().unwrap();
    let mut t = start_tts(&GradiumTts::new(c, key).unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(quiet_for(&sim.counters().gradium_tts));
    t.say(1, &["Bonjour à tous."]).await;
    assert!(t.until_done(1).await > 0);
    until(&sim, "the idle socket closes", |c| {
        c.gradium_tts.open_connections == 0
    })
    .await;
    t.say(2, &["Au revoir."]).await;
    assert!(t.until_done(2).await > 0);
    assert_eq!(sim.counters().gradium_tts.connections, 2);
}
