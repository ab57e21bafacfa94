//! Micro-benchmarks of hot paths: the server's client-frame decoder, server-frame encoding
//! and decoding, resampling and the VAD. Run with `cargo bench -p micdrop-client`.

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use micdrop_client::audio::{resample_linear, speech_like, to_bytes};
use micdrop_client::{Vad, VolumeVad};
use micdrop_core::ConversationItem;
use micdrop_core::protocol::{ServerFrame, WsMessage, decode_client_frame};
use std::hint::black_box;

fn protocol(c: &mut Criterion) {
    let audio = Bytes::from(vec![7u8; 3200]);
    c.bench_function("decode_client_frame/audio_3200", |b| {
        b.iter(|| decode_client_frame(black_box(WsMessage::Binary(audio.clone()))))
    });
    c.bench_function("decode_client_frame/StartSpeaking", |b| {
        b.iter(|| decode_client_frame(black_box(WsMessage::Text("StartSpeaking".into()))))
    });
    let frame = ServerFrame::Audio(audio.clone());
    c.bench_function("ServerFrame::encode/audio_3200", |b| {
        b.iter(|| black_box(&frame).encode())
    });
    let message = ServerFrame::Message(ConversationItem::assistant(
        "Très bien, voici une réponse simulée pour le banc d'essai.",
    ));
    c.bench_function("ServerFrame::encode/message", |b| {
        b.iter(|| black_box(&message).encode())
    });
    let encoded = message.encode();
    c.bench_function("ServerFrame::decode/message", |b| {
        b.iter(|| ServerFrame::decode(black_box(&encoded)))
    });
}

fn audio(c: &mut Criterion) {
    let at_48k = resample_linear(&speech_like(100), 16_000, 48_000);
    c.bench_function("resample_linear/100ms_48k_to_16k", |b| {
        b.iter(|| resample_linear(black_box(&at_48k), 48_000, 16_000))
    });
    let at_22k = resample_linear(&speech_like(1000), 16_000, 22_050);
    c.bench_function("resample_linear/1s_22050_to_16k", |b| {
        b.iter(|| resample_linear(black_box(&at_22k), 22_050, 16_000))
    });
    let window = speech_like(100);
    let mut vad = VolumeVad::default();
    c.bench_function("VolumeVad::process/100ms", |b| {
        b.iter(|| vad.process(black_box(&window)))
    });
    c.bench_function("to_bytes/100ms", |b| {
        b.iter(|| to_bytes(black_box(&window)))
    });
}

criterion_group!(benches, protocol, audio);
criterion_main!(benches);
