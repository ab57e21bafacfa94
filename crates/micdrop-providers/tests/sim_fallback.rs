//! Fallbacks against the simulators: a failing provider hands over to the next one.

mod common;

use std::sync::Arc;

use common::{config, sim, start_stt, start_tts};
use micdrop_core::stt::SttEvent;
use micdrop_core::tts::TtsEvent;
use micdrop_providers::{FallbackTts, GradiumTts};
use micdrop_sim::{Fault, FaultKind, Service};

#[tokio::test]
async fn stt_falls_back_from_gladia_to_gradium_with_the_turn_audio() {
    let sim = sim(&["Bonjour"], |_| {}).await;
    sim.push_fault(Service::Gladia, Fault::status(500).times(100));
    let mut c = config(&sim);
    c.stt.fallbacks = vec![micdrop_providers::config::SttKind::Gradium];
    c.stt.gladia.max_retries = 1;
    let p = c.build().unwrap();
    assert_eq!(p.stt.name(), "fallback-stt");
    let mut s = start_stt(&*p.stt);
    s.turn(900).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript("Bonjour".into()));
    assert_eq!(sim.counters().gradium_stt.connections, 1);
    assert_eq!(sim.counters().gladia.sessions, 0);
}

#[tokio::test]
async fn stt_falls_back_when_gladia_hangs() {
    let sim = sim(&["Bonjour"], |_| {}).await;
    sim.push_fault(Service::Gladia, Fault::new(FaultKind::Hang).times(100));
    let mut c = config(&sim);
    c.stt.fallbacks = vec![micdrop_providers::config::SttKind::Gradium];
    c.stt.gladia.connect_timeout_ms = 150;
    c.stt.gladia.max_retries = 1;
    let p = c.build().unwrap();
    let mut s = start_stt(&*p.stt);
    s.turn(900).await;
    assert_eq!(s.next_final().await, SttEvent::Transcript("Bonjour".into()));
}

#[tokio::test]
async fn tts_falls_back_to_a_second_gradium_session() {
    let sim = sim(&[], |_| {}).await;
    sim.push_fault(Service::GradiumTts, Fault::status(503).times(2));
    let c = config(&sim);
    let mut g = c.tts.unwrap().gradium;
    g.max_retries = 1;
    let key = g.api_key.clone().unwrap();
    let first = GradiumTts::new(g.clone(), key.clone()).unwrap();
    let second = GradiumTts::new(g, key).unwrap();
    let f = FallbackTts::new(vec![Arc::new(first), Arc::new(second)]);
    let mut t = start_tts(&f);
    t.say(4, &["Bonjour", " à tous."]).await;
    let mut audio = 0;
    loop {
        match t.next().await {
            TtsEvent::Audio(4, b) => audio += b.len(),
            TtsEvent::Done(4) => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(audio > 0);
    assert_eq!(sim.counters().gradium_tts.faults, 2);
}
