//! `micdrop call --mic`: the live microphone and speaker (feature `mic`).

use crate::call::CallArgs;

/// Runs a live call until Ctrl-C or the end of the call.
#[cfg(feature = "mic")]
pub async fn run(args: &CallArgs, params: Option<serde_json::Value>) -> anyhow::Result<()> {
    use std::time::{Duration, Instant};

    use micdrop_client::live::{Speaker, start_mic};
    use micdrop_client::{Client, ClientOptions, Event, ReconnectOptions, audio};
    use micdrop_core::ClientCommand;

    let url = args
        .url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("a server URL is needed"))?;
    let mut options = ClientOptions::new(url).reconnect(ReconnectOptions {
        max_attempts: Some(args.reconnect_attempts),
        ..Default::default()
    });
    options.params = params;
    let speaker = Speaker::start()?;
    let (mic_tx, mut mic_rx) = tokio::sync::mpsc::channel(64);
    let _mic = start_mic(mic_tx)?;
    let (client, mut events) = Client::start(options);
    let state = client.watch_state();
    let started = Instant::now();
    let mut recording = Vec::new();
    eprintln!("live call: speak into the microphone, Ctrl-C to hang up");
    // No echo cancellation here: like Micdrop without it, the microphone is ignored while the
    // assistant speaks and for 200 ms after (no barge-in by voice in live mode).
    let mut quiet_since: Option<Instant> = Some(Instant::now());
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            Some(samples) = mic_rx.recv() => {
                let speaking = state.borrow().is_assistant_speaking;
                if speaking {
                    quiet_since = None;
                    continue;
                }
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(200) {
                    client.feed(samples).await;
                }
            }
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                match &ev.event {
                    Event::AssistantAudio(pcm) => {
                        let samples = audio::from_bytes(pcm);
                        speaker.play(&samples);
                        if args.output.is_some() {
                            recording.extend_from_slice(pcm);
                        }
                    }
                    Event::Sent(ClientCommand::StartSpeaking | ClientCommand::Mute) => speaker.clear(),
                    Event::Stopped => break,
                    _ => {}
                }
                crate::call::print_event(started, &ev, false);
            }
        }
    }
    client.stop().await;
    if let Some(path) = &args.output {
        audio::write_wav(path, &recording)?;
    }
    Ok(())
}

/// Without the `mic` feature: explains how to build it.
#[cfg(not(feature = "mic"))]
pub async fn run(_args: &CallArgs, _params: Option<serde_json::Value>) -> anyhow::Result<()> {
    anyhow::bail!(
        "this micdrop was built without live audio: rebuild with `cargo build -p micdrop-cli --features mic` (Linux needs libasound2-dev)"
    )
}
