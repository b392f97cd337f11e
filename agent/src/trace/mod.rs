//! Traceflow on this node: starting traces whose source pod lives here
//! (injecting a crafted packet, or arming the datapath for the next real one),
//! answering any node's share of a packet's hops (`store`), and ending traces
//! when the orchestrator reports their result. `packet` crafts frames,
//! `inject` sends them from inside the pod, `objects` runs `Traceflow` objects
//! of the manifest directory.

pub mod inject;
pub mod objects;
pub mod packet;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData};
use lumen_api::flow::{Protocol, TcpFlags};
use lumen_api::trace::{
    SourceTrace, TraceDestination, TraceMode, TracePhase, TraceRequest, TraceRequestError,
    TraceResult, TraceVerdict, TracedPacket,
};
use tokio::sync::watch;

use crate::cluster::ClusterState;
use crate::datapath::TraceMaps;
use crate::datapath::abi::{LIVE_F_DROPPED_ONLY, LiveTrace, TraceKey, be_addr};
use crate::flows::clock;
use crate::node::Node;
use inject::{InjectError, Injector};
use store::{Collector, Store};

/// Finished traces kept for `GET /v1/traces/{id}`.
const KEEP_FINISHED: usize = 4096;
/// A trace the orchestrator never finished is ended this long after its timeout.
const ABANDON_GRACE: Duration = Duration::from_secs(2);
/// Packets a dropped-only live trace may mark before it stops looking.
const MAX_MARKS: usize = 256;

/// Why a trace could not start (each maps to an HTTP status in the API).
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Request(#[from] TraceRequestError),
    #[error("pod {pod} is not on node {node}")]
    NotLocal { pod: String, node: String },
    #[error("no pod {0} in the cluster")]
    UnknownPod(String),
    #[error("pod {0} has no IP address yet")]
    NoPodIp(String),
    #[error("no node {0} with an InternalIP in the cluster")]
    UnknownNode(String),
    #[error("a live trace from pod {pod} is already running ({id}): one at a time per pod")]
    LiveBusy { pod: String, id: String },
    #[error("no trace {0} on this node")]
    UnknownTrace(String),
    #[error("the datapath refused the trace")]
    Map(#[source] aya::maps::MapError),
    #[error("switching live tracing on in the datapath failed")]
    Datapath(#[source] crate::datapath::DatapathError),
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error("the trace state is poisoned")]
    Poisoned,
}

/// Traces by their final result, for metrics.
#[derive(Debug, Default)]
pub struct TraceCounts {
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub left_cluster: AtomicU64,
    pub failed: AtomicU64,
    pub started: AtomicU64,
}

/// A trace started here and not finished.
#[derive(Debug)]
struct Active {
    number: u32,
    result: TraceResult,
    deadline: Instant,
    injected: Option<TraceKey>,
    live_pod: Option<Ipv4Addr>,
}

#[derive(Debug, Default)]
struct Traces {
    active: HashMap<String, Active>,
    finished: HashMap<String, TraceResult>,
    finished_order: VecDeque<String>,
}

/// The node's tracer.
pub struct Tracer {
    pub node: Arc<Node>,
    cluster: watch::Receiver<Arc<ClusterState>>,
    store: Arc<Store>,
    packets: Mutex<BpfHashMap<MapData, TraceKey, u32>>,
    live: Mutex<BpfHashMap<MapData, u32, LiveTrace>>,
    traces: Mutex<Traces>,
    injector: Injector,
    next: AtomicU32,
    prefix: String,
    pub counts: TraceCounts,
    _collector: Collector,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").finish_non_exhaustive()
    }
}

impl Tracer {
    /// Start the trace collector over the datapath's trace maps.
    pub fn start(
        node: Arc<Node>,
        maps: TraceMaps,
        cluster: watch::Receiver<Arc<ClusterState>>,
    ) -> Arc<Self> {
        let store = Arc::new(Store::new(
            &node.config.node_name,
            node.node_ip,
            node.config.flows.rules.clone(),
        ));
        let collector = Collector::start(maps.events, store.clone());
        // Ids stay unique across restarts of the agent: the start time is in them.
        let started_ms = clock::now_epoch_ns() / 1_000_000;
        let tracer = Arc::new(Self {
            prefix: format!("{}-{:x}", node.config.node_name, started_ms),
            node,
            cluster,
            store,
            packets: Mutex::new(maps.packets),
            live: Mutex::new(maps.live),
            traces: Mutex::new(Traces::default()),
            injector: Injector::default(),
            next: AtomicU32::new(1),
            counts: TraceCounts::default(),
            _collector: collector,
        });
        tokio::spawn(reap(Arc::downgrade(&tracer)));
        tracer
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Start `request` from its source pod, which must be on this node.
    pub async fn start_trace(&self, request: TraceRequest) -> Result<SourceTrace, TraceError> {
        request.validate()?;
        let source = self.local_endpoint(&request)?;
        let destination = self.destination_ip(&request.destination)?;
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{number}", self.prefix);
        let started_ns = clock::now_epoch_ns();
        let result = TraceResult {
            id: id.clone(),
            phase: TracePhase::Running,
            reason: None,
            request: request.clone(),
            source_node: self.node.config.node_name.clone(),
            packet: None,
            hops: Vec::new(),
            verdict: None,
            started_ns,
            end_to_end_ns: 0,
        };
        let deadline = Instant::now() + Duration::from_millis(request.timeout_ms);
        let mut active = Active {
            number,
            result,
            deadline,
            injected: None,
            live_pod: None,
        };
        let packets = match request.mode {
            TraceMode::Injected => {
                let packet = injected_packet(&request, source.ip, destination, number);
                let key = trace_key(&packet);
                self.packets
                    .lock()
                    .map_err(|_| TraceError::Poisoned)?
                    .insert(key, number, 0)
                    .map_err(TraceError::Map)?;
                active.injected = Some(key);
                active.result.packet = Some(packet);
                self.insert(id.clone(), active)?;
                if let Err(e) = self.inject(&request, &source, packet, number).await {
                    self.end(&id, None);
                    return Err(e);
                }
                vec![packet]
            }
            TraceMode::Live => {
                self.arm(&request, &source, destination, number)?;
                active.live_pod = Some(source.ip);
                self.insert(id.clone(), active)?;
                Vec::new()
            }
        };
        self.counts.started.fetch_add(1, Ordering::Relaxed);
        let result = self.snapshot(&id).ok_or(TraceError::UnknownTrace(id))?;
        Ok(SourceTrace { result, packets })
    }

    /// The source's view of trace `id`, once it has marked more than
    /// `packets` packets, ended, or `wait` passed.
    pub async fn wait_trace(
        &self,
        id: &str,
        packets: usize,
        wait: Duration,
    ) -> Result<SourceTrace, TraceError> {
        let number = self.number_of(id)?;
        self.store
            .wait_for(wait, |store| {
                let marks = store.marks(number);
                let ended = self
                    .snapshot(id)
                    .is_none_or(|r| r.phase != TracePhase::Running);
                (marks.len() > packets || ended).then_some(())
            })
            .await;
        let result = self
            .snapshot(id)
            .ok_or_else(|| TraceError::UnknownTrace(id.to_owned()))?;
        let packets = match result.request.mode {
            TraceMode::Injected => result.packet.into_iter().collect(),
            TraceMode::Live => self.store.marks(number),
        };
        Ok(SourceTrace { result, packets })
    }

    /// The orchestrator's result: disarm, count, keep.
    pub fn finish(&self, id: &str, result: TraceResult) -> Result<(), TraceError> {
        self.number_of(id)?;
        self.end(id, Some(result));
        Ok(())
    }

    fn number_of(&self, id: &str) -> Result<u32, TraceError> {
        let traces = self.traces.lock().map_err(|_| TraceError::Poisoned)?;
        if let Some(a) = traces.active.get(id) {
            return Ok(a.number);
        }
        if traces.finished.contains_key(id) {
            return Ok(0);
        }
        Err(TraceError::UnknownTrace(id.to_owned()))
    }

    fn snapshot(&self, id: &str) -> Option<TraceResult> {
        let traces = self.traces.lock().ok()?;
        traces
            .active
            .get(id)
            .map(|a| a.result.clone())
            .or_else(|| traces.finished.get(id).cloned())
    }

    fn insert(&self, id: String, active: Active) -> Result<(), TraceError> {
        self.traces
            .lock()
            .map_err(|_| TraceError::Poisoned)?
            .active
            .insert(id, active);
        Ok(())
    }

    /// End an active trace: with the orchestrator's result, or failed.
    fn end(&self, id: &str, result: Option<TraceResult>) {
        let Ok(mut traces) = self.traces.lock() else {
            return;
        };
        let Some(active) = traces.active.remove(id) else {
            return;
        };
        if let Some(key) = active.injected
            && let Ok(mut m) = self.packets.lock()
        {
            let _ = m.remove(&key);
        }
        if let Some(pod) = active.live_pod {
            self.disarm(pod);
        }
        self.store.forget_marks(active.number);
        let result = result.unwrap_or_else(|| TraceResult {
            phase: TracePhase::Failed,
            reason: Some("the trace was not finished by an orchestrator before its timeout".into()),
            ..active.result
        });
        let counter = match (result.phase, result.verdict) {
            (TracePhase::Succeeded, Some(TraceVerdict::Delivered)) => &self.counts.delivered,
            (TracePhase::Succeeded, Some(TraceVerdict::Dropped)) => &self.counts.dropped,
            (TracePhase::Succeeded, Some(TraceVerdict::LeftCluster)) => &self.counts.left_cluster,
            _ => &self.counts.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        traces.finished.insert(id.to_owned(), result);
        traces.finished_order.push_back(id.to_owned());
        while traces.finished_order.len() > KEEP_FINISHED {
            if let Some(old) = traces.finished_order.pop_front() {
                traces.finished.remove(&old);
            }
        }
    }

    /// The source endpoint of a request, if it is on this node.
    fn local_endpoint(&self, request: &TraceRequest) -> Result<Source, TraceError> {
        let eps = self
            .node
            .endpoints
            .lock()
            .map_err(|_| TraceError::Poisoned)?;
        let ep = eps
            .values()
            .find(|e| {
                e.namespace.as_deref() == Some(request.source.namespace.as_str())
                    && e.pod.as_deref() == Some(request.source.name.as_str())
            })
            .ok_or_else(|| {
                let known = self.cluster.borrow().pods.contains_key(&(
                    request.source.namespace.clone(),
                    request.source.name.clone(),
                ));
                if known {
                    TraceError::NotLocal {
                        pod: request.source.to_string(),
                        node: self.node.config.node_name.clone(),
                    }
                } else {
                    TraceError::UnknownPod(request.source.to_string())
                }
            })?;
        Ok(Source {
            ip: ep.ip,
            netns: PathBuf::from(&ep.netns),
            ifname: ep.ifname.clone(),
        })
    }

    fn destination_ip(&self, destination: &TraceDestination) -> Result<Ipv4Addr, TraceError> {
        let state = self.cluster.borrow();
        match destination {
            TraceDestination::Ip(ip) => Ok(*ip),
            TraceDestination::Pod(p) => {
                let known = state.pods.get(&(p.namespace.clone(), p.name.clone()));
                // A pod of this node is known as soon as it is attached, before
                // the cluster state has its address.
                let local = self.node.endpoints.lock().ok().and_then(|eps| {
                    eps.values()
                        .find(|e| {
                            e.namespace.as_deref() == Some(p.namespace.as_str())
                                && e.pod.as_deref() == Some(p.name.as_str())
                        })
                        .map(|e| e.ip)
                });
                match (known.and_then(|k| k.ip).or(local), known) {
                    (Some(ip), _) => Ok(ip),
                    (None, Some(_)) => Err(TraceError::NoPodIp(p.to_string())),
                    (None, None) => Err(TraceError::UnknownPod(p.to_string())),
                }
            }
            TraceDestination::Node(n) => state
                .nodes
                .get(n)
                .and_then(|n| n.internal_ip)
                .ok_or_else(|| TraceError::UnknownNode(n.clone())),
        }
    }

    /// Craft the packet and send it out of the source pod's interface.
    async fn inject(
        &self,
        request: &TraceRequest,
        source: &Source,
        packet: TracedPacket,
        number: u32,
    ) -> Result<(), TraceError> {
        let value = self
            .node
            .datapath
            .lock()
            .map_err(|_| TraceError::Poisoned)?
            .endpoint(source.ip)
            .ok_or_else(|| TraceError::UnknownPod(request.source.to_string()))?;
        let frame = packet::Frame {
            src_mac: value.mac,
            dst_mac: value.host_mac,
            packet,
            tcp_flags: request.tcp_flags.map_or(TcpFlags::SYN, |f| f.0),
            seq: number.wrapping_mul(2_654_435_761),
        }
        .bytes();
        let (ip, netns, ifname) = (source.ip, source.netns.clone(), source.ifname.clone());
        let injector = &self.injector;
        tokio::task::block_in_place(|| injector.send(ip, &netns, &ifname, &frame))?;
        Ok(())
    }

    /// Arm the datapath for the next packet from `source` matching `request`.
    fn arm(
        &self,
        request: &TraceRequest,
        source: &Source,
        destination: Ipv4Addr,
        number: u32,
    ) -> Result<(), TraceError> {
        let traces = self.traces.lock().map_err(|_| TraceError::Poisoned)?;
        if let Some((busy, _)) = traces
            .active
            .iter()
            .find(|(_, a)| a.live_pod == Some(source.ip))
        {
            return Err(TraceError::LiveBusy {
                pod: request.source.to_string(),
                id: busy.clone(),
            });
        }
        drop(traces);
        let value = LiveTrace {
            daddr: be_addr(destination),
            dmask: u32::MAX,
            sport: request.source_port.unwrap_or(0).to_be(),
            dport: request.destination_port.unwrap_or(0).to_be(),
            proto: request.protocol.0,
            flags: if request.dropped_only {
                LIVE_F_DROPPED_ONLY
            } else {
                0
            },
            _pad: 0,
            trace_id: number,
            armed: 1,
        };
        self.live
            .lock()
            .map_err(|_| TraceError::Poisoned)?
            .insert(be_addr(source.ip), value, 0)
            .map_err(TraceError::Map)?;
        self.node
            .datapath
            .lock()
            .map_err(|_| TraceError::Poisoned)?
            .set_live_tracing(true)
            .map_err(TraceError::Datapath)
    }

    fn disarm(&self, pod: Ipv4Addr) {
        let Ok(mut live) = self.live.lock() else {
            return;
        };
        let _ = live.remove(&be_addr(pod));
        let any = live.keys().next().is_some();
        drop(live);
        if !any && let Ok(mut dp) = self.node.datapath.lock() {
            let _ = dp.set_live_tracing(false);
        }
    }

    /// End traces past their timeout (their orchestrator went away), and
    /// dropped-only traces that marked too many packets.
    fn reap(&self) {
        let now = Instant::now();
        let expired: Vec<String> = self.traces.lock().map_or_else(
            |_| Vec::new(),
            |t| {
                t.active
                    .iter()
                    .filter(|(_, a)| {
                        now > a.deadline + ABANDON_GRACE
                            || (a.live_pod.is_some()
                                && self.store.marks(a.number).len() >= MAX_MARKS)
                    })
                    .map(|(id, _)| id.clone())
                    .collect()
            },
        );
        for id in expired {
            self.end(&id, None);
        }
        if let Ok(eps) = self.node.endpoints.lock() {
            let attached: std::collections::HashSet<Ipv4Addr> =
                eps.values().map(|e| e.ip).collect();
            drop(eps);
            self.injector.retain(|ip| attached.contains(&ip));
        }
    }
}

async fn reap(tracer: std::sync::Weak<Tracer>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(t) = tracer.upgrade() else {
            return;
        };
        t.reap();
    }
}

/// The source pod of a trace.
#[derive(Debug, Clone)]
struct Source {
    ip: Ipv4Addr,
    netns: PathBuf,
    ifname: String,
}

/// The injected packet of trace `number`: ports and IP id derived from the
/// number, so concurrent traces never share a packet.
fn injected_packet(
    request: &TraceRequest,
    source: Ipv4Addr,
    destination: Ipv4Addr,
    number: u32,
) -> TracedPacket {
    let ephemeral = 32_768 + u16::try_from(number % 28_232).unwrap_or(0);
    let ip_id = u16::try_from(number & 0xffff).unwrap_or(0);
    let (source_port, destination_port) = if request.protocol == Protocol::ICMP {
        (ephemeral, ephemeral)
    } else {
        (
            request.source_port.unwrap_or(ephemeral),
            request.destination_port.unwrap_or(0),
        )
    };
    TracedPacket {
        source,
        destination,
        protocol: request.protocol,
        source_port,
        destination_port,
        ip_id,
    }
}

fn trace_key(p: &TracedPacket) -> TraceKey {
    TraceKey {
        saddr: be_addr(p.source),
        daddr: be_addr(p.destination),
        sport: p.source_port.to_be(),
        dport: p.destination_port.to_be(),
        ip_id: p.ip_id.to_be(),
        proto: p.protocol.0,
        _pad: 0,
    }
}
