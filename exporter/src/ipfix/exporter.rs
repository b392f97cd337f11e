//! The exporter's handle: starts one task per collector and a flusher, takes flow
//! records from the agent's pipeline without ever blocking it, reports statistics,
//! and shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use lumen_api::Flow;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use super::collector;
use super::config::{ConfigError, IpfixConfig, Transport};
use super::shared::{FLUSH_DELAY, Shared};

/// How long `shutdown` waits for each collector to send what it has.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid IPFIX configuration")]
    Config(#[from] ConfigError),
    #[error("the IPFIX exporter must be started inside a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
}

/// The exporter's counters, as `GET` endpoints and the CLI show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExporterStats {
    /// Records handed to `export`.
    pub records_exported: u64,
    /// Records lost before they reached the exporter (`add_lost`).
    pub records_lost_upstream: u64,
    pub collectors: Vec<CollectorStats>,
}

/// One collector's counters. Messages and bytes include templates and statistics
/// records; `records_*` count flow records only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CollectorStats {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// A UDP socket is open, or a TCP connection is up.
    pub connected: bool,
    pub messages_sent: u64,
    pub records_sent: u64,
    pub bytes_sent: u64,
    /// Flow records this collector will never get: its buffer was full, a send failed,
    /// or the record was too large for IPFIX.
    pub records_lost: u64,
    /// Flow records waiting to be sent.
    pub records_buffered: u64,
    /// Template messages sent (at every connection, and on schedule over UDP).
    pub templates_sent: u64,
    /// TCP connections made after the first.
    pub reconnects: u64,
    pub last_error: Option<String>,
}

/// An IPFIX exporting process sending Lumen's flow records to one or more collectors.
#[derive(Debug)]
pub struct IpfixExporter {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl IpfixExporter {
    /// Validate `config` and start a task per collector on the current tokio runtime.
    pub fn start(config: IpfixConfig) -> Result<Self, ExportError> {
        config.validate()?;
        let runtime = Handle::try_current().map_err(ExportError::NoRuntime)?;
        let shared = Arc::new(Shared::new(config));
        let (shutdown, stop) = watch::channel(false);
        let mut tasks = vec![runtime.spawn(flusher(Arc::clone(&shared), stop.clone()))];
        for index in 0..shared.collectors.len() {
            tasks.push(runtime.spawn(collector::run(Arc::clone(&shared), index, stop.clone())));
        }
        Ok(Self {
            shared,
            shutdown,
            tasks,
        })
    }

    /// Encode and queue one record for every collector. Never blocks: a collector
    /// whose buffer is full counts the record lost.
    pub fn export(&self, flow: &Flow) {
        self.shared.export(flow);
    }

    /// Count records lost upstream (in the agent's pipeline); they are reported in
    /// every collector's statistics record as not sent.
    pub fn add_lost(&self, records: u64) {
        self.shared.upstream.add(records, 0, 0);
    }

    pub fn stats(&self) -> ExporterStats {
        let collectors = self
            .shared
            .collectors
            .iter()
            .map(|c| {
                let n = &c.counters;
                CollectorStats {
                    addr: c.collector.addr,
                    transport: c.collector.transport,
                    connected: n.connected.load(Relaxed),
                    messages_sent: n.messages_sent.load(Relaxed),
                    records_sent: n.records_sent.load(Relaxed),
                    bytes_sent: n.bytes_sent.load(Relaxed),
                    records_lost: n.lost.records.load(Relaxed),
                    records_buffered: c.buffered() as u64,
                    templates_sent: n.templates_sent.load(Relaxed),
                    reconnects: n.reconnects.load(Relaxed),
                    last_error: n.last_error(),
                }
            })
            .collect();
        ExporterStats {
            records_exported: self.shared.exported.load(Relaxed),
            records_lost_upstream: self.shared.upstream.records.load(Relaxed),
            collectors,
        }
    }

    /// Send everything buffered and a final statistics record to every collector,
    /// then close. A collector that cannot take it within a few seconds loses it.
    pub async fn shutdown(mut self) {
        self.stop();
        for mut task in std::mem::take(&mut self.tasks) {
            if timeout(SHUTDOWN_TIMEOUT, &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    fn stop(&self) {
        // Queue the open set before the tasks learn of the shutdown, so they send it.
        self.shared.flush();
        self.shutdown.send_replace(true);
    }
}

impl Drop for IpfixExporter {
    /// Dropped without `shutdown`: the tasks still flush and close, unawaited.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Seal the open set `FLUSH_DELAY` after it got its first record, so that records
/// never wait long for a full message.
async fn flusher(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shared.flush_needed.notified() => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = sleep(FLUSH_DELAY) => shared.flush(),
            _ = stop.changed() => return,
        }
    }
}
