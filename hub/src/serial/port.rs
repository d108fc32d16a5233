//! One open serial port: bytes in through the frame decoder to the device's link, frames
//! out.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use firmware_proto::frame::{self, Feed, FrameDecoder, FrameError};
use firmware_proto::Message;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};
use tokio_util::sync::CancellationToken;

use super::{counters, PortCounters};
use crate::config::SerialPortConfig;
use crate::devices::link::{Link, Pending, Place};
use crate::devices::session::Claim;
use crate::devices::{Downlink, Gateway, Transport};

/// Largest frame the decoder holds. Longer frames are dropped and counted as oversized;
/// a serial sensor's messages are far smaller (the default `max_message` is 1 KiB).
const MAX_FRAME: usize = frame::max_frame_len(16 * 1024);

/// A line that accepts nothing for this long is treated as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a port raw, 8N1, at `baud`.
pub(super) fn open(path: &Path, baud: u32) -> Result<SerialStream, tokio_serial::Error> {
    tokio_serial::new(path.to_string_lossy(), baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
}

/// Serves a port until it fails or the hub stops.
pub(super) async fn serve(
    mut stream: SerialStream,
    path: PathBuf,
    entry: Arc<SerialPortConfig>,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
) {
    let name = path.display().to_string();
    let counters = counters(&gateway, &name);
    counters.opens.fetch_add(1, Ordering::Relaxed);
    tracing::info!(baud = entry.baud.get(), "serial port open");

    let claim = match &entry.device_id {
        Some(id) => Claim::Must(id.clone()),
        None => Claim::Any,
    };
    let (mut link, mut downlink) = Link::new(
        gateway.clone(),
        claim,
        Transport::Serial,
        Place::Port(name.clone()),
    );
    let mut decoder: Box<FrameDecoder<MAX_FRAME>> = Box::default();
    let mut buf = vec![0u8; 4096];
    let mut message = Vec::with_capacity(1024);
    let mut silence = tokio::time::interval(Duration::from_secs(1));
    silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut replaced = link.replaced();

    let mut durable = Pending::new();
    let reason = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break "hub stopped",
            Some(first) = durable.next(), if !durable.is_empty() => {
                let mut failed = None;
                for reply in link.durable_ready(first, &mut durable) {
                    if let Err(e) = write(&mut stream, &reply, &shutdown).await {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(e) = failed {
                    break e.reason();
                }
            }
            _ = replaced.cancelled() => {
                // The device attached elsewhere (another port, or WebSocket): this line
                // has no session until a new Hello.
                link.end("replaced").await;
                let (fresh, rx) = Link::new(
                    gateway.clone(),
                    match &entry.device_id {
                        Some(id) => Claim::Must(id.clone()),
                        None => Claim::Any,
                    },
                    Transport::Serial,
                    Place::Port(name.clone()),
                );
                link = fresh;
                downlink = rx;
                replaced = link.replaced();
            }
            Some(Downlink::Command(command)) = downlink.recv() => {
                match write(&mut stream, &Message::Command(command), &shutdown).await {
                    Ok(n) => {
                        gateway.stats.command_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => break e.reason(),
                }
            }
            _ = silence.tick() => {
                if link.device().is_some() && link.is_silent() {
                    link.end("silent").await;
                }
            }
            // A window of telemetry waiting for the disk stops the reading (PROTOCOL.md
            // §5.3); the line's buffers hold what comes meanwhile, then drop it.
            read = stream.read(&mut buf), if durable.len() < link.window() => {
                let n = match read {
                    Ok(0) => break "port gone",
                    Ok(n) => n,
                    Err(error) => {
                        tracing::info!(%error, "serial port read failed");
                        break "port gone";
                    }
                };
                counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                let mut input = &buf[..n];
                let mut failed = None;
                while !input.is_empty() {
                    match decoder.feed(input) {
                        Feed::NeedMore => break,
                        Feed::Error { error, rest } => {
                            count(&counters, error);
                            tracing::debug!(%error, "frame dropped");
                            input = rest;
                        }
                        Feed::Frame { message: m, rest } => {
                            counters.frames.fetch_add(1, Ordering::Relaxed);
                            message.clear();
                            message.extend_from_slice(m);
                            input = rest;
                            let handled = link.receive(&message).await;
                            if let Some(pending) = handled.durable {
                                durable.push_back(pending);
                            }
                            if let Some(reply) = handled.reply {
                                if let Err(e) = write(&mut stream, &reply, &shutdown).await {
                                    failed = Some(e);
                                    break;
                                }
                            }
                            if handled.close.is_some() {
                                // A serial line cannot be closed on the device: forget
                                // the session; it must say Hello again.
                                link.end("error").await;
                            }
                        }
                    }
                }
                if let Some(e) = failed {
                    break e.reason();
                }
                if let Some(ack) = link.take_ack() {
                    if let Err(e) = write(&mut stream, &ack, &shutdown).await {
                        break e.reason();
                    }
                }
            }
        }
    };
    link.settle(&mut durable).await;
    link.end(reason).await;
    tracing::info!(reason, "serial port closed");
    // Closing a tty waits for its output to drain (up to 30 s on a USB adapter whose
    // device stopped reading): discard what is unsent, and close off the async workers.
    let _ = stream.clear(tokio_serial::ClearBuffer::Output);
    tokio::task::spawn_blocking(move || drop(stream));
}

fn count(counters: &PortCounters, error: FrameError) {
    let counter = match error {
        FrameError::Oversized => &counters.oversized,
        FrameError::Cobs => &counters.cobs_errors,
        FrameError::TooShort => &counters.too_short,
        FrameError::Crc => &counters.crc_errors,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Why a write to the line did not complete.
enum WriteError {
    /// The hub is stopping: the write was abandoned (the device drops the partial frame
    /// at the next delimiter).
    Stopped,
    /// The line failed or took nothing for [`WRITE_TIMEOUT`].
    Gone,
}

impl WriteError {
    /// The status reason for the port's end.
    fn reason(&self) -> &'static str {
        match self {
            WriteError::Stopped => "hub stopped",
            WriteError::Gone => "port gone",
        }
    }
}

/// Writes one message as a frame; returns the frame's length. A device that stops
/// reading (flow control, a stalled USB adapter) must not hold the hub's shutdown for
/// the write timeout: the write yields to `shutdown`.
async fn write(
    stream: &mut SerialStream,
    message: &Message,
    shutdown: &CancellationToken,
) -> Result<usize, WriteError> {
    let frame = message.to_frame();
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => Err(WriteError::Stopped),
        written = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&frame)) => match written {
            Ok(Ok(())) => Ok(frame.len()),
            Ok(Err(error)) => {
                tracing::info!(%error, "serial port write failed");
                Err(WriteError::Gone)
            }
            Err(_) => {
                tracing::info!(timeout = ?WRITE_TIMEOUT, "the line took no data; treating the port as gone");
                Err(WriteError::Gone)
            }
        },
    }
}
