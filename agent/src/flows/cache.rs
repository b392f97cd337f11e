//! The flow cache: the agent's memory of every flow in the kernel table, which
//! decides when a flow gets a record — when it is first seen (a snapshot for the
//! live stream), every active timeout, and once at its end (FIN/RST, idle timeout,
//! eviction, shutdown) — and with what delta counts.

use std::collections::HashMap;
use std::time::Duration;

use lumen_api::flow::{Counters, EndReason};

use super::decode::{Observed, Widened, decode};
use crate::datapath::abi::{FlowKey, FlowValue};

/// When flows get records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A flow without packets this long has ended.
    pub idle: Duration,
    /// A live flow gets a record this often.
    pub active: Duration,
    /// After a TCP end (RST, or FIN both ways) wait this long for the last ACKs.
    pub linger: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(15),
            active: Duration::from_secs(60),
            linger: Duration::from_secs(1),
        }
    }
}

/// A record the cache decided to emit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub observed: Observed,
    /// `None` for a snapshot (first sight, or a drop) that does not close a period.
    pub reason: Option<EndReason>,
    pub forward_delta: Counters,
    pub reverse_delta: Counters,
}

#[derive(Debug, Clone)]
struct Tracked {
    value: FlowValue,
    widened: Widened,
    /// Unwrapped once, at first sight (the kernel keeps 32 bits of it).
    first_ns: u64,
    exported: (Counters, Counters),
    last_export: u64,
    last_snapshot: u64,
    /// The drain that last saw the flow in the kernel table.
    seen: u64,
}

impl Tracked {
    fn new(value: FlowValue, now: u64) -> Self {
        let mut widened = Widened::default();
        widened.update(&value);
        Self {
            first_ns: value.first_ns(),
            value,
            widened,
            exported: (Counters::default(), Counters::default()),
            last_export: now,
            last_snapshot: 0,
            seen: 0,
        }
    }

    /// Take a newer reading. Counters decide what is newer: `last_ns` is written
    /// by every CPU without ordering, so it may step back; keep its maximum.
    fn refresh(&mut self, value: FlowValue) {
        if self.widened.is_behind(&value) {
            return;
        }
        self.widened.update(&value);
        let last_ns = self.value.last_ns.max(value.last_ns);
        self.value = value;
        self.value.last_ns = last_ns;
    }

    fn observed(&self, key: &FlowKey) -> Observed {
        decode(key, &self.value, self.widened.totals(), self.first_ns)
    }

    fn emit(&mut self, key: &FlowKey, reason: Option<EndReason>) -> Emitted {
        let observed = self.observed(key);
        let delta = |now: Counters, then: Counters| Counters {
            packets: now.packets.saturating_sub(then.packets),
            bytes: now.bytes.saturating_sub(then.bytes),
        };
        let emitted = Emitted {
            forward_delta: delta(observed.forward, self.exported.0),
            reverse_delta: delta(observed.reverse, self.exported.1),
            observed,
            reason,
        };
        if reason.is_some() {
            self.exported = (emitted.observed.forward, emitted.observed.reverse);
        }
        emitted
    }
}

/// Every flow the agent knows, keyed as the kernel keys them.
#[derive(Debug, Default)]
pub struct FlowCache {
    flows: HashMap<FlowKey, Tracked>,
    timeouts: Timeouts,
    /// Counts drains; a flow not stamped with the current one has left the kernel.
    generation: u64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl FlowCache {
    pub fn new(timeouts: Timeouts) -> Self {
        Self {
            flows: HashMap::new(),
            timeouts,
            generation: 0,
        }
    }

    /// Flows currently tracked.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// A ring-buffer event: the flow as it was at its end or at a drop. Keeps the
    /// flow known even if the kernel evicts it before the next drain. A flow seen
    /// first here, or a drop, gets a snapshot at once (drops at most one a second
    /// per flow).
    pub fn event(
        &mut self,
        key: FlowKey,
        value: FlowValue,
        drop: bool,
        now: u64,
    ) -> Option<Emitted> {
        let mut fresh = false;
        let t = self
            .flows
            .entry(key)
            .and_modify(|t| t.refresh(value))
            .or_insert_with(|| {
                fresh = true;
                Tracked::new(value, now)
            });
        if fresh || (drop && now.saturating_sub(t.last_snapshot) >= 1_000_000_000) {
            t.last_snapshot = now;
            return Some(t.emit(&key, None));
        }
        None
    }

    /// Compare the kernel table (every entry, read now) with what the cache knows,
    /// handing each record to `emit` as it is decided. Returns the ended flows
    /// whose kernel entries should go, to make room.
    pub fn drain(
        &mut self,
        entries: impl IntoIterator<Item = (FlowKey, FlowValue)>,
        now: u64,
        mut emit: impl FnMut(Emitted),
    ) -> Vec<FlowKey> {
        let mut expired = Vec::new();
        self.generation += 1;
        let generation = self.generation;
        for (key, value) in entries {
            let mut fresh = false;
            let t = self.flows.entry(key).or_insert_with(|| {
                fresh = true;
                Tracked::new(value, now)
            });
            t.refresh(value);
            t.seen = generation;
            if fresh {
                t.last_snapshot = now;
                emit(t.emit(&key, None));
            }
            let idle_for = now.saturating_sub(t.value.last_ns);
            let ended = t.observed(&key).ended();
            let reason = if ended && idle_for >= ns(self.timeouts.linger) {
                Some(EndReason::EndOfFlow)
            } else if idle_for >= ns(self.timeouts.idle) {
                Some(EndReason::IdleTimeout)
            } else if now.saturating_sub(t.last_export) >= ns(self.timeouts.active) {
                t.last_export = now;
                emit(t.emit(&key, Some(EndReason::ActiveTimeout)));
                None
            } else {
                None
            };
            if let Some(reason) = reason {
                emit(t.emit(&key, Some(reason)));
                expired.push(key);
            }
        }
        for key in &expired {
            self.flows.remove(key);
        }
        // Known flows the kernel no longer has: evicted, or known only from an event.
        let gone: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, t)| t.seen != generation)
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            if let Some(mut t) = self.flows.remove(&key) {
                let ended = t.observed(&key).ended();
                let reason = if ended {
                    EndReason::EndOfFlow
                } else {
                    EndReason::LackOfResources
                };
                emit(t.emit(&key, Some(reason)));
            }
        }
        expired
    }

    /// Final records for every flow (the agent is stopping).
    pub fn flush(&mut self) -> Vec<Emitted> {
        self.flows
            .drain()
            .map(|(key, mut t)| t.emit(&key, Some(EndReason::ForcedEnd)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::abi::count_of;

    const S: u64 = 1_000_000_000;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            addr: [
                u32::from_ne_bytes([10, 0, 0, 1]),
                u32::from_ne_bytes([10, 0, 0, 2]),
            ],
            port: [port.to_be(), 80u16.to_be()],
            proto: 6,
            _pad: [0; 3],
        }
    }

    fn value(last: u64, packets: u32, flags: [u8; 2]) -> FlowValue {
        FlowValue {
            first_us: (S / 1000) as u32,
            last_ns: last,
            count: [
                count_of(packets, packets * 100),
                count_of(packets, packets * 60),
            ],
            side: flags.map(|f| u32::from(f) << 24),
            ..FlowValue::default()
        }
    }

    /// What one drain produced, collected.
    #[derive(Debug, Default)]
    struct Drained {
        records: Vec<Emitted>,
        expired: Vec<FlowKey>,
    }

    trait DrainAll {
        fn drain_all(
            &mut self,
            entries: impl IntoIterator<Item = (FlowKey, FlowValue)>,
            now: u64,
        ) -> Drained;
    }

    impl DrainAll for FlowCache {
        fn drain_all(
            &mut self,
            entries: impl IntoIterator<Item = (FlowKey, FlowValue)>,
            now: u64,
        ) -> Drained {
            let mut records = Vec::new();
            let expired = self.drain(entries, now, |e| records.push(e));
            Drained { records, expired }
        }
    }

    fn reasons(d: &Drained) -> Vec<Option<EndReason>> {
        d.records.iter().map(|r| r.reason).collect()
    }

    #[test]
    fn lifecycle_of_a_long_flow() {
        let mut c = FlowCache::new(Timeouts::default());
        let k = key(40000);
        let d = c.drain_all([(k, value(S, 1, [2, 0x12]))], S);
        assert_eq!(reasons(&d), vec![None], "first sight is a snapshot");
        let d = c.drain_all([(k, value(30 * S, 10, [0x1a, 0x12]))], 30 * S);
        assert!(d.records.is_empty());
        let d = c.drain_all([(k, value(61 * S, 20, [0x1a, 0x12]))], 61 * S);
        assert_eq!(reasons(&d), vec![Some(EndReason::ActiveTimeout)]);
        assert_eq!(d.records[0].forward_delta.packets, 20);
        let d = c.drain_all([(k, value(62 * S, 25, [0x1a, 0x12]))], 80 * S);
        assert_eq!(reasons(&d), vec![Some(EndReason::IdleTimeout)]);
        assert_eq!(
            d.records[0].forward_delta.packets, 5,
            "delta since the active record"
        );
        assert_eq!(d.records[0].observed.forward.packets, 25);
        assert_eq!(d.expired, vec![k]);
        assert!(c.is_empty());
    }

    #[test]
    fn tcp_end_is_reported_after_the_linger() {
        let mut c = FlowCache::new(Timeouts::default());
        let k = key(40001);
        let fin = value(5 * S, 4, [0x11, 0x11]);
        let d = c.drain_all([(k, fin)], 5 * S);
        assert_eq!(reasons(&d), vec![None]);
        let d = c.drain_all([(k, fin)], 6 * S);
        assert_eq!(reasons(&d), vec![Some(EndReason::EndOfFlow)]);
    }

    #[test]
    fn a_flow_known_only_from_an_event_still_gets_its_record() {
        let mut c = FlowCache::new(Timeouts::default());
        let k = key(40002);
        assert!(
            c.event(k, value(S, 3, [0x13, 0x13]), false, S).is_some(),
            "first sight"
        );
        assert!(c.event(k, value(S, 3, [0x13, 0x13]), false, S).is_none());
        let d = c.drain_all([], 2 * S);
        assert_eq!(reasons(&d), vec![Some(EndReason::EndOfFlow)]);
        assert_eq!(d.records[0].observed.forward.packets, 3);
    }

    #[test]
    fn eviction_is_lack_of_resources_and_drops_snapshot_once_a_second() {
        let mut c = FlowCache::new(Timeouts::default());
        let k = key(40003);
        assert!(c.event(k, value(S, 1, [2, 0]), true, 2 * S).is_some());
        assert!(c.event(k, value(S, 2, [2, 0]), true, 2 * S + 10).is_none());
        assert!(c.event(k, value(S, 2, [2, 0]), true, 3 * S + 10).is_some());
        let d = c.drain_all([], 4 * S);
        assert_eq!(reasons(&d), vec![Some(EndReason::LackOfResources)]);
    }

    #[test]
    fn a_stale_snapshot_never_rolls_counters_back() {
        let mut c = FlowCache::new(Timeouts::default());
        let k = key(40004);
        c.drain_all([(k, value(3 * S, 10, [0, 0]))], 3 * S);
        // An event read after the table, from before it; and a table reading whose
        // last_ns stepped back (another CPU wrote it later) but whose counters moved.
        c.event(k, value(2 * S, 8, [0, 0]), false, 3 * S);
        let d = c.drain_all([(k, value(3 * S - 5, 12, [0x11, 0x11]))], 9 * S);
        assert_eq!(reasons(&d), vec![Some(EndReason::EndOfFlow)]);
        assert_eq!(d.records[0].observed.forward.packets, 12);
        assert_eq!(d.records[0].observed.last_mono, 3 * S);
    }

    #[test]
    fn flush_forces_the_end() {
        let mut c = FlowCache::new(Timeouts::default());
        c.drain_all([(key(1), value(S, 1, [0, 0]))], S);
        let out = c.flush();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, Some(EndReason::ForcedEnd));
    }
}
