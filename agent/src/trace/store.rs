//! What this node saw of traced packets: the trace collector thread reads the
//! datapath's `trace_events` ring buffer, turns each event into a [`Hop`]
//! (names, rules, tunnel, wall-clock time) and files it under its packet;
//! readers wait on a version counter for the hops they need. Entries older
//! than [`KEEP`] are forgotten.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use lumen_api::flow::{DropReason, Protocol};
use lumen_api::trace::{Hop, HopAction, TracePoint, TracedPacket, TunnelInfo};
use tokio::sync::watch;

use crate::datapath::abi::TraceEvent;
use crate::flows::clock;
use crate::flows::enrich::PolicyRules;

/// How long hops are kept after their packet was first seen.
const KEEP: Duration = Duration::from_secs(120);
/// At most this many packets are kept; the oldest go first.
const MAX_PACKETS: usize = 65_536;

#[derive(Debug, Default)]
struct Inner {
    hops: HashMap<TracedPacket, Vec<Hop>>,
    /// (destination, protocol, destination port, ip id) → packet: a hop after
    /// source NAT is filed under the packet it was before.
    by_destination: HashMap<(Ipv4Addr, Protocol, u16, u16), TracedPacket>,
    order: VecDeque<(Instant, TracedPacket)>,
    marks: HashMap<u32, Vec<TracedPacket>>,
}

/// The hops of this node, shared by the collector and the API.
#[derive(Debug)]
pub struct Store {
    node: String,
    node_ip: Ipv4Addr,
    rules: PolicyRules,
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
    /// Interface names by index, looked up once.
    names: Mutex<HashMap<u32, String>>,
}

impl Store {
    pub fn new(node: &str, node_ip: Ipv4Addr, rules: PolicyRules) -> Self {
        Self {
            node: node.to_owned(),
            node_ip,
            rules,
            inner: Mutex::new(Inner::default()),
            version: watch::channel(0).0,
            names: Mutex::new(HashMap::new()),
        }
    }

    /// A receiver that changes whenever a hop arrives.
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// This node's hops of `packet`, in the order the datapath emitted them.
    pub fn hops(&self, packet: &TracedPacket) -> Vec<Hop> {
        self.inner
            .lock()
            .map(|i| i.hops.get(packet).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Packets the datapath marked for trace `id` (as its number), oldest first.
    pub fn marks(&self, trace: u32) -> Vec<TracedPacket> {
        self.inner
            .lock()
            .map(|i| i.marks.get(&trace).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Forget the marks of a finished trace.
    pub fn forget_marks(&self, trace: u32) {
        if let Ok(mut i) = self.inner.lock() {
            i.marks.remove(&trace);
        }
    }

    /// Wait (async) until `ready` holds or `wait` passes; returns its last value.
    pub async fn wait_for<T>(
        &self,
        wait: Duration,
        mut ready: impl FnMut(&Self) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            if let Some(v) = ready(self) {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return ready(self);
            }
        }
    }

    /// File one event; the source's first hop of a marked packet is a mark.
    fn record(&self, event: &TraceEvent, mono_to_epoch: u64) {
        let Some((packet, hop)) = self.hop(event, mono_to_epoch) else {
            return;
        };
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let now = Instant::now();
        while inner
            .order
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > KEEP || inner.hops.len() > MAX_PACKETS)
        {
            if let Some((_, old)) = inner.order.pop_front() {
                inner.hops.remove(&old);
                inner.by_destination.remove(&dest_key(&old));
            }
        }
        let packet = if hop.point == TracePoint::Masquerade {
            inner
                .by_destination
                .get(&dest_key(&packet))
                .copied()
                .unwrap_or(packet)
        } else {
            packet
        };
        if !inner.hops.contains_key(&packet) {
            inner.order.push_back((now, packet));
            inner.by_destination.insert(dest_key(&packet), packet);
        }
        if hop.point == TracePoint::FromPod && event.trace_id != 0 {
            inner.marks.entry(event.trace_id).or_default().push(packet);
        }
        inner.hops.entry(packet).or_default().push(hop);
        drop(inner);
        self.version.send_modify(|v| *v += 1);
    }

    fn hop(&self, e: &TraceEvent, mono_to_epoch: u64) -> Option<(TracedPacket, Hop)> {
        let point = TracePoint::from_code(e.point)?;
        let action = HopAction::from_code(e.action)?;
        let packet = TracedPacket {
            source: addr(e.saddr),
            destination: addr(e.daddr),
            protocol: Protocol(e.proto),
            source_port: u16::from_be(e.sport),
            destination_port: u16::from_be(e.dport),
            ip_id: u16::from_be(e.ip_id),
        };
        let policy = matches!(point, TracePoint::PolicyEgress | TracePoint::PolicyIngress)
            .then(|| (e.rule != 0).then(|| self.rules.get(e.rule)).flatten())
            .flatten();
        let tunnel = matches!(point, TracePoint::ToOverlay | TracePoint::FromOverlay)
            .then_some(())
            .filter(|()| e.tunnel_remote != 0)
            .map(|()| TunnelInfo {
                local: self.node_ip,
                remote: addr(e.tunnel_remote),
                vni: e.tag & 0x00ff_ffff,
            });
        let translated_source = (action == HopAction::Masqueraded)
            .then(|| SocketAddrV4::new(packet.source, packet.source_port));
        let hop = Hop {
            node: self.node.clone(),
            point,
            action,
            reason: DropReason::from_code(e.reason),
            policy,
            tunnel,
            translated_source,
            ifindex: e.ifindex,
            interface: self.name_of(e.ifindex),
            timestamp_ns: e.ts_ns.saturating_add(mono_to_epoch),
            latency_ns: 0,
        };
        Some((packet, hop))
    }

    fn name_of(&self, ifindex: u32) -> String {
        if let Ok(names) = self.names.lock()
            && let Some(n) = names.get(&ifindex)
        {
            return n.clone();
        }
        let mut buf = [0u8; libc::IF_NAMESIZE];
        // SAFETY: `buf` holds IF_NAMESIZE bytes, as if_indextoname requires.
        let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
        if p.is_null() {
            return String::new();
        }
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name = String::from_utf8_lossy(&buf[..len]).into_owned();
        if let Ok(mut names) = self.names.lock() {
            names.insert(ifindex, name.clone());
        }
        name
    }
}

fn dest_key(p: &TracedPacket) -> (Ipv4Addr, Protocol, u16, u16) {
    (p.destination, p.protocol, p.destination_port, p.ip_id)
}

fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

/// The thread that drains `trace_events` into the store.
#[derive(Debug)]
pub struct Collector {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    pub fn start(mut events: RingBuf<MapData>, store: Arc<Store>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("trace-events".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd: events.as_fd().as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&mut pfd, 1, 100) };
                    // Taken afresh for each batch: the wall clock is adjusted
                    // (NTP), and agents on one machine must agree on it.
                    let offset = clock::mono_to_epoch();
                    while let Some(item) = events.next() {
                        if let Some(e) = TraceEvent::from_bytes(&item) {
                            store.record(&e, offset);
                        }
                    }
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
