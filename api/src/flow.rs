//! Flow records: what the agent's pipeline produces for every flow it sees, what
//! `GET /v1/flows` streams as NDJSON, and what every sink (IPFIX, the CLI, the web
//! UI) converts from. One record describes one bidirectional flow (RFC 5103) as
//! observed on one node; the side that sent the first packet is the source.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::Identity;

/// An IP protocol number, named for the ones Lumen understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Protocol(pub u8);

impl Protocol {
    pub const ICMP: Self = Self(1);
    pub const TCP: Self = Self(6);
    pub const UDP: Self = Self(17);
    pub const SCTP: Self = Self(132);

    /// The protocol's usual name, upper case, or its number.
    pub fn name(self) -> String {
        match self {
            Self::ICMP => "ICMP".into(),
            Self::TCP => "TCP".into(),
            Self::UDP => "UDP".into(),
            Self::SCTP => "SCTP".into(),
            Self(n) => n.to_string(),
        }
    }

    /// Parse a name (any case) or a number.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "ICMP" => Some(Self::ICMP),
            "TCP" => Some(Self::TCP),
            "UDP" => Some(Self::UDP),
            "SCTP" => Some(Self::SCTP),
            n => n.parse().ok().map(Self),
        }
    }

    /// Whether the protocol has ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Self::TCP | Self::UDP | Self::SCTP)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// What happened to the flow's packets on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Forwarded,
    Dropped,
}

impl Verdict {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "FORWARDED" => Some(Self::Forwarded),
            "DROPPED" => Some(Self::Dropped),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Forwarded => "FORWARDED",
            Self::Dropped => "DROPPED",
        })
    }
}

/// Why the datapath dropped a packet. The numbers are the datapath's
/// (`enum drop_reason` in `agent/bpf/maps.h`) and Lumen's `dropReason` IPFIX IE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DropReason {
    /// A NetworkPolicy denied it.
    Policy,
    /// The tunnel key could not be set.
    TunnelKey,
    /// The datapath had no configuration yet.
    NoConfig,
    /// No route to the destination (trace hops only: flows carry two bits).
    NoRoute,
    /// Not decodable by this version of Lumen.
    Unknown,
}

impl DropReason {
    /// The datapath's code; 0 means "not dropped".
    pub fn code(self) -> u8 {
        match self {
            Self::Policy => 1,
            Self::TunnelKey => 2,
            Self::NoConfig => 3,
            Self::NoRoute => 4,
            Self::Unknown => 255,
        }
    }

    /// The reason for a datapath code, `None` for 0 (not dropped).
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => None,
            1 => Some(Self::Policy),
            2 => Some(Self::TunnelKey),
            3 => Some(Self::NoConfig),
            4 => Some(Self::NoRoute),
            _ => Some(Self::Unknown),
        }
    }
}

/// Why a flow record was emitted (IPFIX `flowEndReason`, RFC 7011 IE 136).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndReason {
    /// No packet for the idle timeout.
    IdleTimeout,
    /// Still active; a periodic record after the active timeout.
    ActiveTimeout,
    /// The end was seen (TCP FIN or RST).
    EndOfFlow,
    /// The exporter stopped (agent shutdown).
    ForcedEnd,
    /// The flow table was full and the entry was evicted.
    LackOfResources,
}

impl EndReason {
    /// The IANA `flowEndReason` value.
    pub fn ipfix(self) -> u8 {
        match self {
            Self::IdleTimeout => 1,
            Self::ActiveTimeout => 2,
            Self::EndOfFlow => 3,
            Self::ForcedEnd => 4,
            Self::LackOfResources => 5,
        }
    }
}

/// Where the flow's endpoints are relative to each other (Antrea's `flowType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlowType {
    IntraNode,
    InterNode,
    ToExternal,
    FromExternal,
}

impl FlowType {
    /// Antrea's `flowType` value (IE 137, enterprise 56506).
    pub fn antrea(self) -> u8 {
        match self {
            Self::IntraNode => 1,
            Self::InterNode => 2,
            Self::ToExternal => 3,
            Self::FromExternal => 4,
        }
    }
}

/// Packets and bytes (IP headers included) in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// TCP flags seen in one direction (the low byte of `tcpControlBits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;

    pub fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::SYN, "SYN"),
            (Self::ACK, "ACK"),
            (Self::PSH, "PSH"),
            (Self::FIN, "FIN"),
            (Self::RST, "RST"),
            (Self::URG, "URG"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(bit, _)| self.has(*bit))
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&set.join(","))
    }
}

/// One side of a flow, with its Kubernetes meaning when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEndpoint {
    pub ip: Ipv4Addr,
    /// Transport port; 0 for protocols without ports.
    pub port: u16,
    pub identity: Identity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl FlowEndpoint {
    /// An endpoint known only by address.
    pub fn bare(ip: Ipv4Addr, port: u16, identity: Identity) -> Self {
        Self {
            ip,
            port,
            identity,
            namespace: None,
            pod: None,
            node: None,
            labels: BTreeMap::new(),
        }
    }

    /// `namespace/pod`, when the endpoint is a pod.
    pub fn pod_ref(&self) -> Option<String> {
        Some(format!(
            "{}/{}",
            self.namespace.as_deref()?,
            self.pod.as_deref()?
        ))
    }

    /// Labels as Antrea exports them: a JSON object string (`{"app":"web"}`).
    pub fn labels_json(&self) -> String {
        serde_json::to_string(&self.labels).unwrap_or_else(|_| "{}".into())
    }
}

/// What the policy that decided a flow says (filled in by the policy engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RuleAction {
    Allow,
    Drop,
}

/// The policy rule that decided a direction of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
    /// The rule inside the policy, e.g. `ingress[0]`; empty for the default deny
    /// of a selected endpoint.
    pub rule: String,
    pub action: RuleAction,
}

/// One flow as observed on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// The node that observed the flow.
    pub node: String,
    /// First and last packet, nanoseconds since the Unix epoch.
    pub start_ns: u64,
    pub end_ns: u64,
    pub protocol: Protocol,
    /// The side that sent the first packet.
    pub source: FlowEndpoint,
    pub destination: FlowEndpoint,
    /// Totals since the flow began: source → destination, and back.
    pub forward: Counters,
    pub reverse: Counters,
    /// What changed since this flow's previous record (IPFIX delta counts).
    pub forward_delta: Counters,
    pub reverse_delta: Counters,
    pub tcp_flags: TcpFlags,
    pub reverse_tcp_flags: TcpFlags,
    /// ICMP type and code of the source's packets (`type << 8 | code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type_code: Option<u16>,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<DropReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_policy: Option<PolicyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_policy: Option<PolicyRef>,
    pub flow_type: FlowType,
    /// The VXLAN tag (VNI) of the last packet that came in from the overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u32>,
    /// A packet of the flow carried the trace bit.
    #[serde(default)]
    pub traced: bool,
    /// Why this record was emitted; `None` for a snapshot of a live flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    /// Equal on every node that saw the same flow: join records with it.
    pub correlation_id: String,
    /// Community ID v1 (`1:…`) of the 5-tuple.
    pub community_id: String,
}

impl Flow {
    /// A forwarded flow between two endpoints with nothing counted yet: the
    /// base tests build their records on (`Flow { field, ..Flow::between(…) }`).
    #[cfg(any(test, feature = "test-util"))]
    pub fn between(
        node: &str,
        protocol: Protocol,
        source: FlowEndpoint,
        destination: FlowEndpoint,
    ) -> Self {
        Self {
            node: node.to_owned(),
            start_ns: 0,
            end_ns: 0,
            protocol,
            source,
            destination,
            forward: Counters::default(),
            reverse: Counters::default(),
            forward_delta: Counters::default(),
            reverse_delta: Counters::default(),
            tcp_flags: TcpFlags::default(),
            reverse_tcp_flags: TcpFlags::default(),
            icmp_type_code: None,
            verdict: Verdict::Forwarded,
            drop_reason: None,
            ingress_policy: None,
            egress_policy: None,
            flow_type: FlowType::InterNode,
            tag: None,
            traced: false,
            end_reason: None,
            correlation_id: String::new(),
            community_id: String::new(),
        }
    }

    /// Whether either side is the pod `namespace/pod`.
    pub fn involves_pod(&self, namespace: &str, pod: &str) -> bool {
        [&self.source, &self.destination]
            .iter()
            .any(|e| e.namespace.as_deref() == Some(namespace) && e.pod.as_deref() == Some(pod))
    }
}

/// Where records were lost on the way to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LostSource {
    /// The kernel's event ring buffer was full.
    RingBuffer,
    /// The datapath's event rate limit was hit.
    RateLimit,
    /// The kernel flow table evicted live flows before they were read.
    FlowTable,
    /// A sink (a collector, a slow reader of the stream) could not keep up.
    Sink,
}

/// A count of records lost, reported as data rather than a log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvents {
    pub node: String,
    pub source: LostSource,
    /// Records lost since the previous report from the same source.
    pub count: u64,
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
}

/// One line of `GET /v1/flows`: a flow or a report of lost records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowEvent {
    Flow(Box<Flow>),
    LostEvents(LostEvents),
}

impl FlowEvent {
    /// When the event happened: a flow's last packet, or the loss report.
    pub fn time_ns(&self) -> u64 {
        match self {
            Self::Flow(f) => f.end_ns,
            Self::LostEvents(l) => l.time_ns,
        }
    }
}

/// Records lost, by where they were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LostCounts {
    pub ring_buffer: u64,
    pub rate_limit: u64,
    pub flow_table: u64,
    pub sink: u64,
}

impl LostCounts {
    pub fn add(&mut self, source: LostSource, count: u64) {
        let slot = match source {
            LostSource::RingBuffer => &mut self.ring_buffer,
            LostSource::RateLimit => &mut self.rate_limit,
            LostSource::FlowTable => &mut self.flow_table,
            LostSource::Sink => &mut self.sink,
        };
        *slot += count;
    }

    pub fn total(&self) -> u64 {
        self.ring_buffer + self.rate_limit + self.flow_table + self.sink
    }
}

/// Forwarded and dropped packets of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DirectionTraffic {
    pub forwarded: Counters,
    pub dropped: Counters,
}

/// The datapath's traffic: `egress` leaves a pod or the node (toward another
/// pod, the overlay or the host stack), `ingress` comes toward one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Traffic {
    pub egress: DirectionTraffic,
    pub ingress: DirectionTraffic,
}

impl Traffic {
    /// Every packet, whatever its direction and verdict.
    pub fn total(&self) -> Counters {
        [
            self.egress.forwarded,
            self.egress.dropped,
            self.ingress.forwarded,
            self.ingress.dropped,
        ]
        .iter()
        .fold(Counters::default(), |a, c| Counters {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        })
    }
}

/// The flow pipeline's state on one node (`GET /v1/flows/stats`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FlowStats {
    pub node: String,
    /// Flows the agent currently tracks.
    pub active_flows: u64,
    /// Records that closed a period of a flow (they went to the sinks).
    pub records: u64,
    /// Snapshots for the live stream (first sight, drops).
    pub snapshots: u64,
    /// Ring-buffer events read.
    pub events: u64,
    pub lost: LostCounts,
    /// Final records by end reason (`IDLE_TIMEOUT`, …); active-timeout ones
    /// are `periodic`.
    #[serde(default)]
    pub ended: BTreeMap<String, u64>,
    #[serde(default)]
    pub periodic: u64,
    /// Entries in the kernel flow table at the last read.
    #[serde(default)]
    pub table_entries: u64,
    /// Every packet the datapath accounted (per-CPU counters, summed).
    #[serde(default)]
    pub traffic: Traffic,
    /// Packets the datapath dropped, by reason (`POLICY`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drops: BTreeMap<String, Counters>,
    /// The IPFIX exporter's own statistics, per collector, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exporter: Option<serde_json::Value>,
}
