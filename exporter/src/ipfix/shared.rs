//! What the exporter's handle, its flusher and its collector tasks share: the open
//! data set that `export` encodes records into, each collector's queue of sealed data
//! sets, and the counters behind `stats()` and the statistics record.
//!
//! A record is encoded once, on the caller's thread, into the open data set. When the
//! set is full (or has waited `FLUSH_DELAY`) it is sealed and the same bytes are
//! queued for every collector; each collector task puts a header of its own in front.
//! A collector whose queue holds `max_buffered_records` loses the sets offered to it
//! until it drains (counted, per collector); the others are not affected.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lumen_api::Flow;
use tokio::sync::Notify;
use tracing::warn;

use super::config::{Collector, IpfixConfig};
use super::encode::{self, EncodeError, FLOW_SET_ID_BYTES};

/// How long a data set that is not full waits for more records before it is sent.
pub(crate) const FLUSH_DELAY: Duration = Duration::from_millis(100);

/// A sealed data set (set header included), with what its records carried.
#[derive(Debug)]
pub(crate) struct Batch {
    pub set: Vec<u8>,
    pub records: u32,
    /// Delta packets and octets of both directions, for the not-sent counts.
    pub packets: u64,
    pub octets: u64,
}

/// The data set being filled.
#[derive(Debug)]
struct OpenSet {
    buf: Vec<u8>,
    records: u32,
    packets: u64,
    octets: u64,
    /// The most bytes a set may have (set header included).
    max_len: usize,
}

impl OpenSet {
    fn new(max_len: usize) -> Self {
        let mut buf = Vec::with_capacity(max_len);
        buf.extend_from_slice(&FLOW_SET_ID_BYTES);
        Self {
            buf,
            records: 0,
            packets: 0,
            octets: 0,
            max_len,
        }
    }

    /// Encode `flow`; return the set it sealed, if it filled one.
    fn push(&mut self, flow: &Flow) -> Result<Option<Batch>, EncodeError> {
        let mark = self.buf.len();
        encode::write_record(&mut self.buf, flow)?;
        let packets = flow.forward_delta.packets + flow.reverse_delta.packets;
        let octets = flow.forward_delta.bytes + flow.reverse_delta.bytes;
        if self.buf.len() <= self.max_len || self.records == 0 {
            // It fits, or it is alone: a record larger than a message goes in a
            // message of its own rather than being lost.
            self.add(packets, octets);
            return Ok((self.buf.len() >= self.max_len)
                .then(|| self.seal())
                .flatten());
        }
        // Too big for this set: seal the set without it and start the next with it.
        let mut next = Vec::with_capacity(self.max_len);
        next.extend_from_slice(&FLOW_SET_ID_BYTES);
        next.extend_from_slice(&self.buf[mark..]);
        self.buf.truncate(mark);
        let sealed = self.seal_into(next);
        self.add(packets, octets);
        Ok(sealed)
    }

    fn add(&mut self, packets: u64, octets: u64) {
        self.records += 1;
        self.packets = self.packets.saturating_add(packets);
        self.octets = self.octets.saturating_add(octets);
    }

    /// Seal the set, if it has records.
    fn seal(&mut self) -> Option<Batch> {
        let mut next = Vec::with_capacity(self.max_len);
        next.extend_from_slice(&FLOW_SET_ID_BYTES);
        self.seal_into(next)
    }

    fn seal_into(&mut self, next: Vec<u8>) -> Option<Batch> {
        if self.records == 0 {
            return None;
        }
        let mut set = std::mem::replace(&mut self.buf, next);
        encode::end_set(&mut set, 0);
        let batch = Batch {
            set,
            records: self.records,
            packets: self.packets,
            octets: self.octets,
        };
        (self.records, self.packets, self.octets) = (0, 0, 0);
        Some(batch)
    }
}

/// Records lost, with the packets and octets they carried and when.
#[derive(Debug, Default)]
pub(crate) struct Loss {
    pub records: AtomicU64,
    pub packets: AtomicU64,
    pub octets: AtomicU64,
    /// Milliseconds since the epoch; 0 until something is lost.
    pub first_ms: AtomicU64,
    pub last_ms: AtomicU64,
}

impl Loss {
    pub fn add(&self, records: u64, packets: u64, octets: u64) {
        if records == 0 {
            return;
        }
        self.records.fetch_add(records, Relaxed);
        self.packets.fetch_add(packets, Relaxed);
        self.octets.fetch_add(octets, Relaxed);
        let now = now_ms();
        let _ = self.first_ms.compare_exchange(0, now, Relaxed, Relaxed);
        self.last_ms.fetch_max(now, Relaxed);
    }

    fn add_batch(&self, batch: &Batch) {
        self.add(batch.records.into(), batch.packets, batch.octets);
    }
}

/// One collector's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connected: AtomicBool,
    pub messages_sent: AtomicU64,
    pub records_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub templates_sent: AtomicU64,
    pub reconnects: AtomicU64,
    pub lost: Loss,
    pub last_error: Mutex<Option<String>>,
}

impl Counters {
    /// Count one message sent with `records` flow records.
    pub fn sent(&self, bytes: usize, records: u32) {
        self.messages_sent.fetch_add(1, Relaxed);
        self.records_sent.fetch_add(records.into(), Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    pub fn set_error(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }

    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }
}

#[derive(Debug, Default)]
struct Queue {
    batches: VecDeque<Arc<Batch>>,
    records: usize,
}

/// One collector's share: its queue and counters.
#[derive(Debug)]
pub(crate) struct CollectorShared {
    pub collector: Collector,
    queue: Mutex<Queue>,
    /// Woken when sets are queued.
    pub ready: Notify,
    pub counters: Counters,
    max_buffered: usize,
}

impl CollectorShared {
    fn new(collector: Collector, max_buffered: usize) -> Self {
        Self {
            collector,
            queue: Mutex::default(),
            ready: Notify::new(),
            counters: Counters::default(),
            max_buffered,
        }
    }

    /// Queue a sealed set, or count it lost if the queue is full.
    fn offer(&self, batch: &Arc<Batch>) {
        let mut queue = lock(&self.queue);
        let records = batch.records as usize;
        if queue.records + records > self.max_buffered {
            drop(queue);
            self.counters.lost.add_batch(batch);
            return;
        }
        queue.records += records;
        queue.batches.push_back(Arc::clone(batch));
        drop(queue);
        self.ready.notify_one();
    }

    /// Everything queued, oldest first.
    pub fn take_all(&self) -> VecDeque<Arc<Batch>> {
        let mut queue = lock(&self.queue);
        queue.records = 0;
        std::mem::take(&mut queue.batches)
    }

    /// Put back sets that were taken but not sent, ahead of newer ones. They were
    /// admitted once, so the buffer limit does not apply again.
    pub fn requeue_front(&self, batches: impl DoubleEndedIterator<Item = Arc<Batch>>) {
        let mut queue = lock(&self.queue);
        for batch in batches.rev() {
            queue.records += batch.records as usize;
            queue.batches.push_front(batch);
        }
    }

    pub fn buffered(&self) -> usize {
        lock(&self.queue).records
    }

    /// Count sets lost.
    pub fn lose<'a>(&self, batches: impl IntoIterator<Item = &'a Arc<Batch>>) {
        for batch in batches {
            self.counters.lost.add_batch(batch);
        }
    }

    /// Count everything still queued lost.
    pub fn lose_queued(&self) {
        let batches = self.take_all();
        self.lose(&batches);
    }
}

/// Everything the exporter's parts share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: IpfixConfig,
    open: Mutex<OpenSet>,
    pub collectors: Vec<CollectorShared>,
    /// Woken when the open set gets its first record.
    pub flush_needed: Notify,
    pub exported: AtomicU64,
    /// Records lost before they reached the exporter (`add_lost`).
    pub upstream: Loss,
}

impl Shared {
    pub fn new(config: IpfixConfig) -> Self {
        let collectors = config
            .collectors
            .iter()
            .map(|c| CollectorShared::new(*c, config.max_buffered_records))
            .collect();
        Self {
            open: Mutex::new(OpenSet::new(config.max_set_len())),
            config,
            collectors,
            flush_needed: Notify::new(),
            exported: AtomicU64::new(0),
            upstream: Loss::default(),
        }
    }

    /// Encode `flow` into the open set; queue the set if that filled it.
    pub fn export(&self, flow: &Flow) {
        self.exported.fetch_add(1, Relaxed);
        let mut open = lock(&self.open);
        let was_empty = open.records == 0;
        match open.push(flow) {
            Ok(Some(batch)) => self.distribute(&open, batch),
            Ok(None) => {}
            Err(err) => {
                drop(open);
                warn!(error = %err, "flow record lost: too large for IPFIX");
                let packets = flow.forward_delta.packets + flow.reverse_delta.packets;
                let octets = flow.forward_delta.bytes + flow.reverse_delta.bytes;
                for c in &self.collectors {
                    c.counters.lost.add(1, packets, octets);
                }
                return;
            }
        }
        if was_empty && open.records > 0 {
            self.flush_needed.notify_one();
        }
    }

    /// Seal and queue the open set, if it has records.
    pub fn flush(&self) {
        let mut open = lock(&self.open);
        if let Some(batch) = open.seal() {
            self.distribute(&open, batch);
        }
    }

    /// Queue a sealed set for every collector. Called with the open set locked
    /// (`_order`), so sets reach every queue in the order they were sealed.
    fn distribute(&self, _order: &MutexGuard<'_, OpenSet>, batch: Batch) {
        let batch = Arc::new(batch);
        for c in &self.collectors {
            c.offer(&batch);
        }
    }
}

/// Lock, even if a thread panicked while holding the lock: the data behind these
/// locks stays consistent at every point a panic could happen.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// IPFIX export time: seconds since the epoch, as 32 bits (wraps in 2106).
pub(crate) fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipfix::test_util::{full_flow, numbered_flow};

    #[test]
    fn sets_fill_to_the_limit_and_no_further() {
        let mut open = OpenSet::new(1000);
        let mut sealed = Vec::new();
        for n in 0..20 {
            if let Some(b) = open.push(&numbered_flow(n)).expect("encode") {
                sealed.push(b);
            }
        }
        sealed.extend(open.seal());
        assert_eq!(sealed.iter().map(|b| b.records).sum::<u32>(), 20);
        for b in &sealed {
            assert!(b.set.len() <= 1000, "{} bytes", b.set.len());
            assert_eq!(
                usize::from(u16::from_be_bytes([b.set[2], b.set[3]])),
                b.set.len()
            );
        }
        // Full sets leave less room than one more record.
        let record = {
            let mut v = Vec::new();
            encode::write_record(&mut v, &numbered_flow(0)).expect("encode");
            v.len()
        };
        for b in &sealed[..sealed.len() - 1] {
            assert!(b.set.len() + record > 1000 - 10, "{} bytes", b.set.len());
        }
    }

    #[test]
    fn a_record_larger_than_a_set_travels_alone() {
        let mut open = OpenSet::new(600);
        assert!(open.push(&full_flow()).expect("encode").is_none());
        let mut big = full_flow();
        big.source.pod = Some("p".repeat(700));
        let first = open
            .push(&big)
            .expect("encode")
            .expect("sealed the small one");
        assert_eq!(first.records, 1);
        let second = open.seal().expect("the big one");
        assert_eq!(second.records, 1);
        assert!(second.set.len() > 700);
        assert!(open.seal().is_none());
    }

    #[test]
    fn full_queues_count_losses_with_packets_and_octets() {
        let c = CollectorShared::new("udp://127.0.0.1:9".parse().expect("collector"), 5);
        let batch = |records| {
            Arc::new(Batch {
                set: Vec::new(),
                records,
                packets: 10,
                octets: 100,
            })
        };
        c.offer(&batch(3));
        c.offer(&batch(3));
        c.offer(&batch(2));
        assert_eq!(c.buffered(), 5);
        assert_eq!(c.counters.lost.records.load(Relaxed), 3);
        assert_eq!(c.counters.lost.packets.load(Relaxed), 10);
        assert!(c.counters.lost.first_ms.load(Relaxed) > 0);
        let taken = c.take_all();
        assert_eq!(taken.len(), 2);
        assert_eq!(c.buffered(), 0);
        c.requeue_front(taken.into_iter());
        assert_eq!(c.buffered(), 5);
        c.lose_queued();
        assert_eq!(c.counters.lost.records.load(Relaxed), 8);
    }
}
