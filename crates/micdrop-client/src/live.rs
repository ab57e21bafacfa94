//! Live audio through `cpal` (feature `mic`): the default microphone, resampled to 16 kHz
//! mono, and the default speaker fed with the assistant's 16 kHz audio.
//!
//! On Linux this needs ALSA's development files to build (`apt-get install libasound2-dev`).
//! `cpal` streams are not `Send`: each one lives on its own thread, which ends when its handle
//! is dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{SampleFormat, StreamConfig};
use micdrop_core::protocol::SAMPLE_RATE;
use tokio::sync::mpsc;

use crate::audio::resample_linear;

/// An error of the live audio devices.
#[derive(Debug, thiserror::Error)]
#[error("audio device: {0}")]
pub struct LiveError(pub String);

fn err(e: impl std::fmt::Display) -> LiveError {
    LiveError(e.to_string())
}

/// A running device stream; dropping it stops the stream and its thread.
#[derive(Debug)]
pub struct LiveStream {
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs `build` on a thread that keeps the stream alive until the handle is dropped.
fn on_thread<F>(build: F) -> Result<LiveStream, LiveError>
where
    F: FnOnce() -> Result<cpal::Stream, LiveError> + Send + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || match build() {
        Ok(stream) => {
            if let Err(e) = stream.play() {
                let _ = ready_tx.send(Err(err(e)));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            let _ = stop_rx.recv();
            drop(stream);
        }
        Err(e) => {
            let _ = ready_tx.send(Err(e));
        }
    });
    ready_rx
        .recv()
        .map_err(|_| LiveError("audio thread ended".into()))??;
    Ok(LiveStream {
        stop: Some(stop_tx),
    })
}

/// Starts the default microphone; 16 kHz mono chunks arrive on `tx` (dropped when it is full).
pub fn start_mic(tx: mpsc::Sender<Vec<i16>>) -> Result<LiveStream, LiveError> {
    on_thread(move || {
        let host = cpal::default_host();
        let device = host
            .default_input_device()
            .ok_or_else(|| LiveError("no input device".into()))?;
        let supported = device.default_input_config().map_err(err)?;
        let format = supported.sample_format();
        let config: StreamConfig = supported.config();
        let channels = usize::from(config.channels.max(1));
        let rate = config.sample_rate;
        let push = move |mono: Vec<i16>| {
            let _ = tx.try_send(resample_linear(&mono, rate, SAMPLE_RATE));
        };
        let on_error = |e| tracing::warn!(error = %e, "microphone stream error");
        match format {
            SampleFormat::F32 => device.build_input_stream(
                config,
                move |data: &[f32], _: &cpal::InputCallbackInfo| {
                    push(
                        data.chunks(channels)
                            .map(|f| to_i16(f.iter().sum::<f32>() / f.len() as f32))
                            .collect(),
                    )
                },
                on_error,
                None,
            ),
            SampleFormat::I16 => device.build_input_stream(
                config,
                move |data: &[i16], _: &cpal::InputCallbackInfo| {
                    push(
                        data.chunks(channels)
                            .map(|f| {
                                (f.iter().map(|&s| i32::from(s)).sum::<i32>() / f.len() as i32)
                                    as i16
                            })
                            .collect(),
                    )
                },
                on_error,
                None,
            ),
            other => return Err(LiveError(format!("unsupported input format {other:?}"))),
        }
        .map_err(err)
    })
}

fn to_i16(v: f32) -> i16 {
    let v = v.clamp(-1.0, 1.0);
    if v < 0.0 {
        (v * 32768.0) as i16
    } else {
        (v * 32767.0) as i16
    }
}

/// The default speaker, playing queued 16 kHz audio.
#[derive(Debug)]
pub struct Speaker {
    queue: Arc<Mutex<VecDeque<f32>>>,
    rate: u32,
    _stream: LiveStream,
}

impl Speaker {
    /// Opens the default output device.
    pub fn start() -> Result<Self, LiveError> {
        let queue: Arc<Mutex<VecDeque<f32>>> = Arc::default();
        let (rate_tx, rate_rx) = std::sync::mpsc::channel();
        let q = queue.clone();
        let stream = on_thread(move || {
            let host = cpal::default_host();
            let device = host
                .default_output_device()
                .ok_or_else(|| LiveError("no output device".into()))?;
            let supported = device.default_output_config().map_err(err)?;
            let format = supported.sample_format();
            let config: StreamConfig = supported.config();
            let channels = usize::from(config.channels.max(1));
            let _ = rate_tx.send(config.sample_rate);
            let on_error = |e| tracing::warn!(error = %e, "speaker stream error");
            let next = move || q.lock().ok().and_then(|mut q| q.pop_front()).unwrap_or(0.0);
            match format {
                SampleFormat::F32 => device.build_output_stream(
                    config,
                    move |out: &mut [f32], _: &cpal::OutputCallbackInfo| {
                        for frame in out.chunks_mut(channels) {
                            let v = next();
                            frame.iter_mut().for_each(|s| *s = v);
                        }
                    },
                    on_error,
                    None,
                ),
                SampleFormat::I16 => device.build_output_stream(
                    config,
                    move |out: &mut [i16], _: &cpal::OutputCallbackInfo| {
                        for frame in out.chunks_mut(channels) {
                            let v = to_i16(next());
                            frame.iter_mut().for_each(|s| *s = v);
                        }
                    },
                    on_error,
                    None,
                ),
                other => return Err(LiveError(format!("unsupported output format {other:?}"))),
            }
            .map_err(err)
        })?;
        let rate = rate_rx.recv().map_err(err)?;
        Ok(Self {
            queue,
            rate,
            _stream: stream,
        })
    }

    /// Queues 16 kHz mono samples.
    pub fn play(&self, samples: &[i16]) {
        let resampled = resample_linear(samples, SAMPLE_RATE, self.rate);
        if let Ok(mut q) = self.queue.lock() {
            q.extend(resampled.into_iter().map(|s| f32::from(s) / 32768.0));
        }
    }

    /// Stops at once (barge-in, pause): drops what is queued.
    pub fn clear(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.clear();
        }
    }
}
