//! Traceflow: the hop-by-hop path of one packet across nodes, with the verdict
//! at each hop. A [`TraceRequest`] names a source pod and a destination; the
//! source node's agent injects a crafted packet (or marks the next real one),
//! every datapath hook that sees it reports a [`Hop`], and the orchestrator
//! (`trace::orchestrate`) assembles the hops of every node into a
//! [`TraceResult`]. The same request and result are the `spec` and `status` of
//! a `Traceflow` object (`lumen.dev/v1alpha1`).

pub mod orchestrate;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::flow::{DropReason, PolicyRef, Protocol, TcpFlags};
use crate::policy::PodRef;

/// The API group and version of `Traceflow` objects.
pub const API_VERSION: &str = "lumen.dev/v1alpha1";
/// Their kind.
pub const KIND: &str = "Traceflow";

/// How long a trace may take when the request does not say.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// Where the traced packet goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TraceDestination {
    /// A pod, by namespace and name.
    Pod(PodRef),
    /// A node's own address (its InternalIP), by node name.
    Node(String),
    /// Any IPv4 address: another pod's, a node's, or outside the cluster.
    Ip(Ipv4Addr),
}

impl fmt::Display for TraceDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod(p) => write!(f, "{p}"),
            Self::Node(n) => write!(f, "node/{n}"),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Injected: the agent crafts the packet; live: the next real one is marked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TraceMode {
    #[default]
    Injected,
    Live,
}

/// What to trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceRequest {
    pub source: PodRef,
    pub destination: TraceDestination,
    /// TCP, UDP, SCTP or ICMP (echo request).
    pub protocol: Protocol,
    /// Injected: chosen by the agent when absent. Live: any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    /// Required for TCP, UDP and SCTP when injected; live: any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// TCP flags of the injected packet (SYN when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<TcpFlags>,
    #[serde(default)]
    pub mode: TraceMode,
    /// Live only: trace only a packet that ends up dropped.
    #[serde(default)]
    pub dropped_only: bool,
    /// Milliseconds until a trace without a complete path fails.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl TraceRequest {
    /// An injected TCP SYN from `source` to `destination` port `port`.
    pub fn tcp(source: PodRef, destination: TraceDestination, port: u16) -> Self {
        Self {
            source,
            destination,
            protocol: Protocol::TCP,
            source_port: None,
            destination_port: Some(port),
            tcp_flags: None,
            mode: TraceMode::Injected,
            dropped_only: false,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    /// Check what needs no cluster state: protocol, ports, mode options.
    pub fn validate(&self) -> Result<(), TraceRequestError> {
        let p = self.protocol;
        if !(p.has_ports() || p == Protocol::ICMP) {
            return Err(TraceRequestError::Protocol(p));
        }
        if self.mode == TraceMode::Injected {
            if p.has_ports() && self.destination_port.unwrap_or(0) == 0 {
                return Err(TraceRequestError::NoPort(p));
            }
            if self.dropped_only {
                return Err(TraceRequestError::DroppedOnlyInjected);
            }
        }
        if !p.has_ports() && (self.source_port.is_some() || self.destination_port.is_some()) {
            return Err(TraceRequestError::PortsWithoutPorts(p));
        }
        if self.source_port == Some(0) {
            return Err(TraceRequestError::ZeroPort("source"));
        }
        if self.destination_port == Some(0) {
            return Err(TraceRequestError::ZeroPort("destination"));
        }
        if self.tcp_flags.is_some() && p != Protocol::TCP {
            return Err(TraceRequestError::FlagsNotTcp(p));
        }
        if self.tcp_flags.is_some() && self.mode == TraceMode::Live {
            return Err(TraceRequestError::FlagsLive);
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(TraceRequestError::Timeout(self.timeout_ms));
        }
        Ok(())
    }
}

/// The longest timeout a request may ask for (10 minutes).
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// Why a request is refused before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceRequestError {
    #[error("protocol {0} cannot be traced (TCP, UDP, SCTP or ICMP)")]
    Protocol(Protocol),
    #[error("an injected {0} trace needs a destination port 1-65535")]
    NoPort(Protocol),
    #[error("dropped-only applies to live traces (an injected packet is one packet)")]
    DroppedOnlyInjected,
    #[error("{0} has no ports")]
    PortsWithoutPorts(Protocol),
    #[error("the {0} port must be 1-65535")]
    ZeroPort(&'static str),
    #[error("TCP flags given for a {0} trace")]
    FlagsNotTcp(Protocol),
    #[error("TCP flags only shape an injected packet (a live trace takes the next SYN)")]
    FlagsLive,
    #[error("timeout {0} ms is out of range (1 ms to {MAX_TIMEOUT_MS} ms)")]
    Timeout(u64),
}

/// Where on a node a hop was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TracePoint {
    /// The source pod's host veth: the packet left the pod.
    FromPod,
    /// NetworkPolicy egress of the source pod (on its node).
    PolicyEgress,
    /// Into the VXLAN device toward another node.
    ToOverlay,
    /// Out of the VXLAN device from another node.
    FromOverlay,
    /// NetworkPolicy ingress of the destination pod (on its node).
    PolicyIngress,
    /// The destination pod's host veth: into the pod.
    ToPod,
    /// The node's own network stack (routing, local delivery).
    HostStack,
    /// Source NAT to the node's address, leaving the cluster.
    Masquerade,
}

impl TracePoint {
    /// The datapath's code (`enum trace_point` in `agent/bpf/maps.h`).
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::FromPod,
            2 => Self::PolicyEgress,
            3 => Self::ToOverlay,
            4 => Self::FromOverlay,
            5 => Self::PolicyIngress,
            6 => Self::ToPod,
            7 => Self::HostStack,
            8 => Self::Masquerade,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::FromPod => "from_pod",
            Self::PolicyEgress => "policy egress",
            Self::ToOverlay => "to_overlay",
            Self::FromOverlay => "from_overlay",
            Self::PolicyIngress => "policy ingress",
            Self::ToPod => "to_pod",
            Self::HostStack => "host stack",
            Self::Masquerade => "masquerade",
        }
    }
}

/// What happened to the packet at a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HopAction {
    Received,
    Forwarded,
    Tunnelled,
    Delivered,
    Dropped,
    /// Refused with an answer to the sender (no NetworkPolicy v1 rule does
    /// this; kept so the vocabulary matches Antrea's).
    Rejected,
    Masqueraded,
}

impl HopAction {
    /// The datapath's code (`enum trace_action` in `agent/bpf/maps.h`).
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Received,
            2 => Self::Forwarded,
            3 => Self::Tunnelled,
            4 => Self::Delivered,
            5 => Self::Dropped,
            6 => Self::Rejected,
            7 => Self::Masqueraded,
            _ => return None,
        })
    }

    /// Whether the packet's path ends with this action.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Delivered | Self::Dropped | Self::Rejected | Self::Masqueraded
        )
    }
}

impl fmt::Display for HopAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Received => "RECEIVED",
            Self::Forwarded => "FORWARDED",
            Self::Tunnelled => "TUNNELLED",
            Self::Delivered => "DELIVERED",
            Self::Dropped => "DROPPED",
            Self::Rejected => "REJECTED",
            Self::Masqueraded => "MASQUERADED",
        })
    }
}

/// The VXLAN leg of a hop: underlay addresses and the tag in the VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelInfo {
    /// This node's underlay address.
    pub local: Ipv4Addr,
    /// The other node's.
    pub remote: Ipv4Addr,
    /// The VNI: the sender's identity and the trace bit.
    pub vni: u32,
}

/// One observation of the traced packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hop {
    pub node: String,
    pub point: TracePoint,
    pub action: HopAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DropReason>,
    /// At policy points: the rule (or default deny) that decided; `None` when
    /// no policy isolates the pod for this direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelInfo>,
    /// At the masquerade point: the source the packet left with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translated_source: Option<SocketAddrV4>,
    pub ifindex: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// Since the previous hop of the path (0 for the first). Across nodes this
    /// compares two nodes' clocks: exact in the lab (one machine), as good as
    /// their time synchronisation in a cluster (a negative difference shows 0).
    #[serde(default)]
    pub latency_ns: u64,
}

impl Hop {
    /// A bare hop: nothing but where, what and when (`Hop { field, ..Hop::at(…) }`
    /// in tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn at(node: &str, point: TracePoint, action: HopAction, timestamp_ns: u64) -> Self {
        Self {
            node: node.to_owned(),
            point,
            action,
            reason: None,
            policy: None,
            tunnel: None,
            translated_source: None,
            ifindex: 0,
            interface: String::new(),
            timestamp_ns,
            latency_ns: 0,
        }
    }

    /// Whether the path ends here: delivered, dropped, or leaving the cluster
    /// at the masquerade point (translated or not).
    pub fn is_final(&self) -> bool {
        self.action.is_final() || self.point == TracePoint::Masquerade
    }
}

/// The headers that tell the traced packet apart from every other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracedPacket {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub protocol: Protocol,
    /// ICMP echo: the identifier.
    pub source_port: u16,
    pub destination_port: u16,
    /// The IPv4 identification field.
    pub ip_id: u16,
}

impl fmt::Display for TracedPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.protocol.has_ports() {
            write!(
                f,
                "{} {}:{} -> {}:{} ip id {}",
                self.protocol,
                self.source,
                self.source_port,
                self.destination,
                self.destination_port,
                self.ip_id
            )
        } else {
            write!(
                f,
                "{} {} -> {} echo id {} ip id {}",
                self.protocol, self.source, self.destination, self.source_port, self.ip_id
            )
        }
    }
}

/// Where a trace is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum TracePhase {
    #[default]
    Running,
    Succeeded,
    Failed,
}

/// How the traced packet's path ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TraceVerdict {
    /// It reached the destination (the injected packet stopped there).
    Delivered,
    Dropped,
    /// It left the cluster (masqueraded or forwarded to the underlay).
    LeftCluster,
}

impl fmt::Display for TraceVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Delivered => "DELIVERED",
            Self::Dropped => "DROPPED",
            Self::LeftCluster => "LEFT_CLUSTER",
        })
    }
}

/// A trace, as far as it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceResult {
    pub id: String,
    pub phase: TracePhase,
    /// Why the trace failed; on a trace that succeeded, what went wrong
    /// after (e.g. the source agent did not take the result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub request: TraceRequest,
    /// The node of the source pod, which injected or marked the packet.
    pub source_node: String,
    /// The traced packet, once known (live traces: once one matched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet: Option<TracedPacket>,
    /// In path order, every node's.
    #[serde(default)]
    pub hops: Vec<Hop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<TraceVerdict>,
    /// When the trace started, nanoseconds since the Unix epoch.
    pub started_ns: u64,
    /// From the first hop to the last.
    #[serde(default)]
    pub end_to_end_ns: u64,
}

impl TraceResult {
    /// The hop that ended the path, when there is one.
    pub fn final_hop(&self) -> Option<&Hop> {
        self.hops.iter().find(|h| h.is_final())
    }
}

/// The body of `POST /v1/traces/hops`: what one node saw of a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HopsQuery {
    pub packet: TracedPacket,
    /// Answer once the node has more hops than this, or has the final one.
    #[serde(default)]
    pub after: usize,
    /// …or after this many milliseconds (0: at once).
    #[serde(default)]
    pub wait_ms: u64,
}

/// One node's hops of a packet, in its order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeHops {
    pub node: String,
    pub hops: Vec<Hop>,
}

/// The query string of `GET /v1/traces/{id}`: wait until something changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceWait {
    /// Answer once the trace knows more packets than this…
    #[serde(default)]
    pub packets: usize,
    /// …or after this many milliseconds (0: at once).
    #[serde(default)]
    pub wait_ms: u64,
}

/// The source node's view of a trace (`POST /v1/traces`, `GET /v1/traces/{id}`):
/// the result so far plus, for live traces, every packet it marked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceTrace {
    pub result: TraceResult,
    /// Packets marked for this trace, oldest first (one for injected traces).
    #[serde(default)]
    pub packets: Vec<TracedPacket>,
}
