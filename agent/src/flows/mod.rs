//! The flow pipeline (STYLE rule 5): the kernel flow table and its ring buffer →
//! decode → the flow cache (lifecycle, timeouts) → enrich → filters → sinks (the
//! live stream of `GET /v1/flows`, IPFIX). It runs on a thread of its own, since
//! reading the kernel table is a burst of blocking syscalls. Whatever is lost on
//! the way (ring buffer full, rate limit, table full, slow readers) becomes a
//! lost-events record.

pub mod cache;
pub mod clock;
pub mod community;
pub mod decode;
pub mod enrich;
pub mod filter;
pub mod hub;
pub mod sink;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lumen_api::flow::{
    Counters, DirectionTraffic, DropReason, EndReason, FlowEvent, FlowStats, LostEvents,
    LostSource, Traffic,
};
use tokio::sync::watch;

use crate::cluster::ClusterState;
use crate::datapath::abi::{
    DIR_EGRESS, DIR_INGRESS, DROP_MAX, EVENT_DROP, FlowEvent as RawEvent, counter,
};
use crate::datapath::{Datapath, FlowMaps};
use crate::metrics::Metrics;
use cache::{Emitted, FlowCache, Timeouts};
use enrich::{ClusterLookup, Lookups, PolicyRules, enrich};
use filter::ExportFilter;
use hub::Hub;
use sink::Sink;

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    pub timeouts: Timeouts,
    /// How often the kernel table is read.
    pub drain_interval: Duration,
    /// Recent events kept for `GET /v1/flows`.
    pub recent: usize,
    /// Which finished records go to the sinks.
    pub export: ExportFilter,
    /// Names of the policy rules flows carry (the policy controller fills them).
    pub rules: PolicyRules,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            timeouts: Timeouts::default(),
            drain_interval: Duration::from_secs(1),
            recent: 8192,
            export: ExportFilter::default(),
            rules: PolicyRules::default(),
        }
    }
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("the flow collector thread could not be started")]
    Spawn(#[source] std::io::Error),
}

/// The running pipeline, as the API sees it.
#[derive(Debug)]
pub struct Flows {
    pub hub: Arc<Hub>,
    stats: Arc<Mutex<FlowStats>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Flows {
    pub fn start(
        node: &str,
        maps: FlowMaps,
        datapath: Arc<Mutex<Datapath>>,
        cluster: watch::Receiver<Arc<ClusterState>>,
        config: FlowConfig,
        sinks: Vec<Box<dyn Sink>>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, FlowError> {
        let hub = Arc::new(Hub::new(node, config.recent));
        let stats = Arc::new(Mutex::new(FlowStats {
            node: node.to_owned(),
            ..FlowStats::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let lookup = ClusterLookup::new(&cluster.borrow());
        let collector = Collector {
            cache: FlowCache::new(config.timeouts),
            maps,
            datapath,
            emitter: Emitter {
                node: node.to_owned(),
                cluster,
                lookup,
                rules: config.rules.clone(),
                hub: hub.clone(),
                filter: config.export,
                sinks,
                metrics,
                stats: stats.clone(),
                mono_to_epoch: clock::mono_to_epoch(),
            },
            stop: stop.clone(),
            // The maps are this agent's own (loaded fresh): every loss counts.
            seen_counters: [0; 3],
            drain_interval: config.drain_interval,
        };
        let thread = std::thread::Builder::new()
            .name("lumen-flows".into())
            .spawn(move || collector.run())
            .map_err(FlowError::Spawn)?;
        Ok(Self {
            hub,
            stats,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn stats(&self) -> FlowStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A follower of the live stream fell `count` events behind.
    pub fn reader_lagged(&self, count: u64) {
        if let Ok(mut s) = self.stats.lock() {
            s.lost.add(LostSource::Sink, count);
        }
    }

    /// Stop after a final record for every flow (end reason "forced end").
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the flow collector panicked");
        }
    }
}

/// The datapath counters that mean lost records, and where they were lost.
const LOSS_COUNTERS: [(u32, LostSource); 3] = [
    (counter::EVENTS_LOST, LostSource::RingBuffer),
    (counter::EVENTS_RATE_LIMITED, LostSource::RateLimit),
    (counter::FLOW_TABLE_FULL, LostSource::FlowTable),
];

struct Collector {
    cache: FlowCache,
    maps: FlowMaps,
    datapath: Arc<Mutex<Datapath>>,
    emitter: Emitter,
    stop: Arc<AtomicBool>,
    seen_counters: [u64; 3],
    drain_interval: Duration,
}

/// Where the cache's records go: enrichment, then the sinks and the hub. Apart
/// from the collector's other fields, so a drain can stream records into it.
struct Emitter {
    node: String,
    cluster: watch::Receiver<Arc<ClusterState>>,
    lookup: ClusterLookup,
    rules: PolicyRules,
    hub: Arc<Hub>,
    filter: ExportFilter,
    sinks: Vec<Box<dyn Sink>>,
    /// Per-pod series, when switched on.
    metrics: Option<Arc<Metrics>>,
    stats: Arc<Mutex<FlowStats>>,
    /// The wall clock's offset from the datapath's, taken afresh for each
    /// batch: it moves whenever the wall clock is adjusted.
    mono_to_epoch: u64,
}

impl Collector {
    fn run(mut self) {
        let interval = u64::try_from(self.drain_interval.as_nanos()).unwrap_or(1_000_000_000);
        let mut next_drain = clock::now_mono_ns() + interval;
        while !self.stop.load(Ordering::Relaxed) {
            let wait_ms = next_drain.saturating_sub(clock::now_mono_ns()) / 1_000_000;
            self.wait_for_events(wait_ms.min(100));
            self.read_events();
            let now = clock::now_mono_ns();
            if now >= next_drain {
                self.drain(now);
                next_drain = now + interval;
            }
        }
        self.read_events();
        self.drain(clock::now_mono_ns());
        self.emitter.refresh();
        for e in self.cache.flush() {
            self.emitter.emit(e);
        }
    }

    fn wait_for_events(&self, timeout_ms: u64) {
        let mut pfd = libc::pollfd {
            fd: self.maps.events.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = i32::try_from(timeout_ms).unwrap_or(100);
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, timeout) };
    }

    fn read_events(&mut self) {
        let now = clock::now_mono_ns();
        let mut count = 0u64;
        self.emitter.refresh();
        while let Some(item) = self.maps.events.next() {
            count += 1;
            let Some(event) = RawEvent::from_bytes(&item) else {
                continue;
            };
            let drop = event.kind == EVENT_DROP;
            if let Some(snap) = self.cache.event(event.key, event.value, drop, now) {
                self.emitter.emit(snap);
            }
        }
        if count > 0
            && let Ok(mut s) = self.emitter.stats.lock()
        {
            s.events += count;
        }
    }

    fn loss_counters(&self) -> [u64; 3] {
        let Ok(dp) = self.datapath.lock() else {
            return self.seen_counters;
        };
        LOSS_COUNTERS.map(|(index, _)| dp.counter(index))
    }

    fn drain(&mut self, now: u64) {
        self.emitter.refresh();
        // Streamed both ways: neither the table nor the records it yields are
        // ever held whole (100,000 flows would be tens of MB).
        let mut table_entries = 0u64;
        let entries = self
            .maps
            .table
            .iter()
            .filter_map(Result::ok)
            .inspect(|_| table_entries += 1);
        let emitter = &mut self.emitter;
        let expired = self.cache.drain(entries, now, |e| emitter.emit(e));
        for key in &expired {
            // Already gone (evicted meanwhile) is fine.
            let _ = self.maps.table.remove(key);
        }

        let counters = self.loss_counters();
        for (i, (_, source)) in LOSS_COUNTERS.iter().enumerate() {
            let lost = counters[i].saturating_sub(self.seen_counters[i]);
            if lost > 0 {
                self.emitter.lost(*source, lost);
            }
        }
        self.seen_counters = counters;
        let traffic = self.traffic();
        if let Ok(mut s) = self.emitter.stats.lock() {
            s.active_flows = self.cache.len() as u64;
            s.table_entries = table_entries;
            if let Some((traffic, drops)) = traffic {
                s.traffic = traffic;
                s.drops = drops;
            }
        }
    }

    /// The per-CPU traffic counters, summed: per direction, every packet at
    /// `d * DROP_MAX` and drops for reason `r` at `d * DROP_MAX + r`.
    fn traffic(&self) -> Option<(Traffic, BTreeMap<String, Counters>)> {
        let sum = |index: u32| -> Option<Counters> {
            let per_cpu = self.maps.traffic.get(&index, 0).ok()?;
            Some(per_cpu.iter().fold(Counters::default(), |acc, t| Counters {
                packets: acc.packets + t.packets,
                bytes: acc.bytes + t.bytes,
            }))
        };
        let mut drops: BTreeMap<String, Counters> = BTreeMap::new();
        let mut direction = |d: u32| -> Option<DirectionTraffic> {
            let all = sum(d * DROP_MAX)?;
            let mut dropped = Counters::default();
            for reason in [
                DropReason::Policy,
                DropReason::TunnelKey,
                DropReason::NoConfig,
            ] {
                let c = sum(d * DROP_MAX + u32::from(reason.code()))?;
                dropped.packets += c.packets;
                dropped.bytes += c.bytes;
                if c.packets > 0 {
                    let name = serde_json::to_value(reason).ok()?.as_str()?.to_owned();
                    let slot = drops.entry(name).or_default();
                    slot.packets += c.packets;
                    slot.bytes += c.bytes;
                }
            }
            Some(DirectionTraffic {
                forwarded: Counters {
                    packets: all.packets.saturating_sub(dropped.packets),
                    bytes: all.bytes.saturating_sub(dropped.bytes),
                },
                dropped,
            })
        };
        let traffic = Traffic {
            egress: direction(DIR_EGRESS)?,
            ingress: direction(DIR_INGRESS)?,
        };
        Some((traffic, drops))
    }
}

impl Emitter {
    /// Pods come and go: name flows by the cluster as it is now.
    /// Before a batch of records: the clock offset, and the cluster lookup if
    /// the cluster changed.
    fn refresh(&mut self) {
        self.mono_to_epoch = clock::mono_to_epoch();
        if self.cluster.has_changed().unwrap_or(false) {
            self.lookup = ClusterLookup::new(&self.cluster.borrow_and_update());
        }
    }

    fn emit(&mut self, e: Emitted) {
        let lookups = Lookups {
            cluster: &self.lookup,
            rules: &self.rules,
        };
        let mut flow = enrich(&e.observed, &self.node, self.mono_to_epoch, &lookups);
        flow.end_reason = e.reason;
        flow.forward_delta = e.forward_delta;
        flow.reverse_delta = e.reverse_delta;
        let is_final = flow.end_reason.is_some();
        if is_final && let Some(metrics) = &self.metrics {
            metrics.pod_record(&flow);
        }
        if is_final && self.filter.passes(&flow) {
            for sink in &mut self.sinks {
                sink.record(&flow);
            }
        }
        let end_reason = flow.end_reason;
        self.hub.publish(FlowEvent::Flow(Box::new(flow)));
        if let Ok(mut s) = self.stats.lock() {
            match end_reason {
                Some(EndReason::ActiveTimeout) => s.periodic += 1,
                Some(reason) => {
                    s.records += 1;
                    if let Some(name) = serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                    {
                        *s.ended.entry(name).or_default() += 1;
                    }
                }
                None => s.snapshots += 1,
            }
        }
    }

    fn lost(&mut self, source: LostSource, count: u64) {
        let lost = LostEvents {
            node: self.node.clone(),
            source,
            count,
            time_ns: clock::now_epoch_ns(),
        };
        for sink in &mut self.sinks {
            sink.lost(&lost);
        }
        if let Ok(mut s) = self.stats.lock() {
            s.lost.add(source, count);
        }
        self.hub.publish(FlowEvent::LostEvents(lost));
    }
}
