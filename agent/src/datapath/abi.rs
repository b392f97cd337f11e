//! `#[repr(C)]` mirrors of `agent/bpf/maps.h`: the kernel/user-space contract.
//!
//! No implicit padding; a test compares every size and offset with what the C
//! compiler reports for the header itself (`bpf/layout_probe.c`, run by build.rs).

use std::net::Ipv4Addr;

/// `struct endpoint`: a pod on this node, keyed by its IPv4 address.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointValue {
    pub ifindex: u32,
    pub identity: u32,
    pub mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub flags: u32,
}

/// `struct lpm_v4_key` is aya's `lpm_trie::Key<u32>`: prefix length, then the
/// address in network order.
pub type LpmV4Key = aya::maps::lpm_trie::Key<u32>;

/// `struct remote_node`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemoteNode {
    pub node_ip: u32,
    pub flags: u32,
}

/// `struct dp_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DpConfig {
    pub vxlan_ifindex: u32,
    pub node_ip: u32,
    pub cluster_addr: u32,
    pub cluster_mask: u32,
    pub flags: u32,
    pub events_per_sec: u32,
    pub policy_epoch: u32,
    /// Host order; 0 until the uplink's programs are attached, and until then
    /// neither overlay fast path (`from_pod`'s encapsulation, `from_underlay`)
    /// runs.
    pub vxlan_port: u32,
    /// The uplink `from_pod` sends what it encapsulates to (set with `vxlan_port`).
    pub uplink_ifindex: u32,
    /// The uplink's MTU when its programs were attached: a bigger packet once
    /// encapsulated takes the VXLAN device's path.
    pub uplink_mtu: u32,
    /// The node's pod CIDR (network order), which holds every endpoint.
    pub pod_addr: u32,
    pub pod_mask: u32,
    /// 32 minus the pod CIDRs' prefix length: a remote pod CIDR of this
    /// node's size has the slot (its offset in the cluster CIDR) >> this in
    /// `remote_slots`; 0 when the cluster CIDR holds more such CIDRs than
    /// there are slots.
    pub slot_shift: u32,
}

/// `dp_config.flags`: flow tracking off.
pub const CFG_NO_FLOWS: u32 = 1;
/// `dp_config.flags`: some endpoint is isolated; evaluate NetworkPolicy.
pub const CFG_POLICY: u32 = 2;

/// `struct ep_policy`: an endpoint's isolation and its rules' slots, indexed by
/// [`POL_INGRESS`] / [`POL_EGRESS`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EpPolicy {
    pub deny_rule: [u16; 2],
    pub first: [u16; 2],
    pub count: [u8; 2],
    pub isolated: u8,
    pub _pad: u8,
}

pub const POL_INGRESS: usize = 0;
pub const POL_EGRESS: usize = 1;
pub const POL_ISOLATED_INGRESS: u8 = 1;
pub const POL_ISOLATED_EGRESS: u8 = 2;
pub const MAX_RULES_PER_DIRECTION: usize = 64;
pub const RULE_PORTS: usize = 4;
pub const MAX_POLICY_RULES: u32 = 65536;

/// `struct port_range`: host-order ports, inclusive.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortRange {
    pub proto: u8,
    pub _pad: u8,
    pub from: u16,
    pub to: u16,
}

/// `struct policy_rule`: one slot of a rule (a rule with more port ranges takes
/// several slots with the same id).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyRule {
    pub id: u16,
    pub nports: u8,
    pub _pad: u8,
    pub ports: [PortRange; RULE_PORTS],
}

/// `struct peer_key` without its prefix length: aya's `Key<PeerKey>` adds it.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerKey {
    pub slot: u32,
    pub addr: u32,
}

/// `struct flow_key`: a 5-tuple in canonical order (side 0 is the lower
/// (address, port)); addresses and ports in network order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub addr: [u32; 2],
    pub port: [u16; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// `struct flow_value`: what the datapath accumulated for a flow, packed into
/// 48 bytes (see `maps.h`); the accessors unpack it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub last_ns: u64,
    pub first_us: u32,
    pub first_seq: u32,
    /// Per side: bytes sent in the top 32 bits, packets below, as one word the
    /// datapath adds to atomically ([`count_of`]).
    pub count: [u64; 2],
    pub side: [u32; 2],
    pub tag: u32,
    pub rule: [u16; 2],
}

/// `flow_value.side`: identity below, TCP flags on top.
pub const SIDE_IDENTITY_MASK: u32 = 0x00ff_ffff;
pub const SIDE_FLAGS_SHIFT: u32 = 24;
/// `flow_value.tag`: VNI below, flags and drop reason on top.
pub const TAG_VNI_MASK: u32 = 0x00ff_ffff;
pub const FLOW_F_SIDE1_FIRST: u32 = 1 << 24;
pub const FLOW_F_TRACED: u32 = 1 << 25;
pub const FLOW_F_OVERLAY: u32 = 1 << 26;
pub const FLOW_F_DENIED: u32 = 1 << 27;
pub const FLOW_EPOCH_SHIFT: u32 = 28;
pub const TAG_DROP_SHIFT: u32 = 30;

/// A `flow_value.count` word: `bytes` on top of `packets`. Each wraps at 32
/// bits, and a carry out of the packets moves into the bytes, so only the
/// difference of two readings splits into packets and bytes exactly
/// (`flows::decode::Widened`).
pub fn count_of(packets: u32, bytes: u32) -> u64 {
    u64::from(bytes) << 32 | u64::from(packets)
}

impl FlowValue {
    /// The identity of side `i` (0 or 1).
    pub fn identity(&self, i: usize) -> u32 {
        self.side[i] & SIDE_IDENTITY_MASK
    }

    /// The TCP flags side `i` sent.
    pub fn tcp_flags(&self, i: usize) -> u8 {
        (self.side[i] >> SIDE_FLAGS_SHIFT) as u8
    }

    /// The last VXLAN tag, 0 for none.
    pub fn vni(&self) -> u32 {
        self.tag & TAG_VNI_MASK
    }

    /// The drop reason of the last packet, 0 for forwarded.
    pub fn drop_reason(&self) -> u8 {
        (self.tag >> TAG_DROP_SHIFT) as u8
    }

    pub fn has(&self, flag: u32) -> bool {
        self.tag & flag != 0
    }

    /// The first packet's time in monotonic nanoseconds: `first_us` keeps only 32
    /// bits of microseconds, unwrapped here against `last_ns` (exact for flows
    /// younger than 71 minutes when first read; the agent keeps the result).
    pub fn first_ns(&self) -> u64 {
        let last_us = self.last_ns / 1000;
        let age_us = u64::from((last_us as u32).wrapping_sub(self.first_us));
        last_us.saturating_sub(age_us) * 1000
    }
}

/// `struct flow_event`: a ring-buffer record.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowEvent {
    pub key: FlowKey,
    pub value: FlowValue,
    pub kind: u32,
    pub ifindex: u32,
}

/// Sizes of the fixed maps.
pub const MAX_ENDPOINTS: u32 = 65536;
pub const MAX_REMOTE_CIDRS: u32 = 4096;
pub const MAX_REMOTE_SLOTS: u32 = 4096;

/// `enum direction` and `DROP_MAX`: the layout of the `traffic` map.
pub const DIR_EGRESS: u32 = 0;
pub const DIR_INGRESS: u32 = 1;
pub const DROP_MAX: u32 = 4;

/// `enum flow_event_kind`
pub const EVENT_END: u32 = 1;
pub const EVENT_DROP: u32 = 2;

impl FlowEvent {
    /// Read a record from ring-buffer bytes; `None` if it is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        record(bytes)
    }
}

/// A ring-buffer record of plain `repr(C)` data (every bit pattern valid, as
/// the layout test holds for each): `None` if `bytes` is too short.
fn record<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked, `T: Pod` is plain data for which every bit
    // pattern is valid, and `read_unaligned` needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// `struct traffic`: packets and bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

// === Traceflow ===

/// `CFG_LIVE_TRACE`: a live trace is armed, `from_pod` consults `trace_live`.
pub const CFG_LIVE_TRACE: u32 = 4;
/// `CFG_REMOTE_TRIE`: `remote_cidrs` holds a CIDR `remote_slots` has no slot for.
pub const CFG_REMOTE_TRIE: u32 = 8;
/// `IP_RF`: the IPv4 reserved flag, set on injected packets.
pub const IP_RF: u16 = 0x8000;
/// `TRACE_F_INJECTED`
pub const TRACE_F_INJECTED: u32 = 1;
/// `TRACE_DROP_NO_ROUTE`: a drop reason only trace events carry.
pub const TRACE_DROP_NO_ROUTE: u8 = 4;
/// `LIVE_F_DROPPED_ONLY`
pub const LIVE_F_DROPPED_ONLY: u8 = 1;
pub const MAX_TRACE_PACKETS: u32 = 65536;

/// `struct trace_event`: one observation of a traced packet (ring buffer).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraceEvent {
    pub ts_ns: u64,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub ip_id: u16,
    pub proto: u8,
    pub point: u8,
    pub action: u8,
    pub reason: u8,
    pub rule: u16,
    pub ifindex: u32,
    pub tunnel_remote: u32,
    pub tag: u32,
    pub trace_id: u32,
    pub flags: u32,
}

impl TraceEvent {
    /// Read a record from ring-buffer bytes; `None` if it is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        record(bytes)
    }
}

/// `struct trace_key`: a packet about to be injected (network order fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub ip_id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// `struct live_trace`: a live trace armed on a source pod.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveTrace {
    pub daddr: u32,
    pub dmask: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub flags: u8,
    pub _pad: u16,
    pub trace_id: u32,
    pub armed: u32,
}

// SAFETY: plain `repr(C)` integers and byte arrays, no padding (checked by the
// layout test), so any bit pattern is valid and the bytes can be copied to the kernel.
unsafe impl aya::Pod for EndpointValue {}
// SAFETY: as above.
unsafe impl aya::Pod for RemoteNode {}
// SAFETY: as above.
unsafe impl aya::Pod for DpConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowValue {}
// SAFETY: as above.
unsafe impl aya::Pod for Traffic {}
// SAFETY: as above.
unsafe impl aya::Pod for EpPolicy {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyRule {}
// SAFETY: as above (packed, so no padding at all).
unsafe impl aya::Pod for PeerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for TraceKey {}
// SAFETY: as above.
unsafe impl aya::Pod for TraceEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for LiveTrace {}

/// An address as the datapath stores it: network byte order in a native `u32`.
pub fn be_addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Names of the per-CPU counters, in `enum counter` order.
pub const COUNTERS: &[&str] = &[
    "from_pod",
    "local_redirect",
    "tunnelled",
    "from_overlay",
    "overlay_delivered",
    "to_stack",
    "to_pod",
    "host_tunnelled",
    "drop_no_config",
    "drop_tunnel_key",
    "flows_created",
    "flow_table_full",
    "events",
    "events_rate_limited",
    "events_lost",
    "drop_policy",
    "trace_events",
    "trace_lost",
    "tunnelled_via_device",
];

/// Indexes into [`COUNTERS`] the flow collector reads.
pub mod counter {
    pub const FLOWS_CREATED: u32 = 10;
    pub const EVENTS_RATE_LIMITED: u32 = 13;
    pub const EVENTS_LOST: u32 = 14;
    pub const FLOW_TABLE_FULL: u32 = 11;
    pub const TRACE_EVENTS: u32 = 16;
    pub const TRACE_LOST: u32 = 17;
}

/// Map and program names, as in the C sources.
pub mod names {
    pub const ENDPOINTS: &str = "endpoints";
    pub const REMOTE_CIDRS: &str = "remote_cidrs";
    pub const REMOTE_SLOTS: &str = "remote_slots";
    pub const CONFIG: &str = "config";
    pub const COUNTERS: &str = "counters";
    pub const FLOWS: &str = "flows";
    pub const FLOW_EVENTS: &str = "flow_events";
    pub const TRAFFIC: &str = "traffic";
    pub const EP_POLICY: &str = "ep_policy";
    pub const POLICY_RULES: &str = "policy_rules";
    pub const POLICY_PEERS: &str = "policy_peers";
    pub const FROM_POD: &str = "from_pod";
    pub const TO_POD: &str = "to_pod";
    pub const FROM_OVERLAY: &str = "from_overlay";
    pub const TO_OVERLAY: &str = "to_overlay";
    pub const TO_UNDERLAY: &str = "to_underlay";
    pub const FROM_UNDERLAY: &str = "from_underlay";
    pub const NOOP: &str = "noop";
    pub const GROW_ONLY: &str = "grow_only";
    pub const SHRINK_ONLY: &str = "shrink_only";
    pub const TRACE_EVENTS: &str = "trace_events";
    pub const TRACE_PACKETS: &str = "trace_packets";
    pub const TRACE_LIVE: &str = "trace_live";
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use lumen_api::flow::DropReason;

    use super::*;

    include!(concat!(env!("OUT_DIR"), "/layout.rs"));

    /// aya's `Key<u32>` hides its fields; check its layout through its accessors.
    #[test]
    fn lpm_key_layout_matches_maps_h() {
        let key = LpmV4Key::new(24, 0x0a0b_0c0d);
        // SAFETY: Key<u32> is two u32s, `repr(C, packed)`; reading its bytes is sound.
        let bytes: [u8; 8] = unsafe { std::mem::transmute(key) };
        assert_eq!(bytes[..4], 24u32.to_ne_bytes());
        assert_eq!(bytes[4..], 0x0a0b_0c0du32.to_ne_bytes());
    }

    fn rust_fields() -> Vec<(&'static str, usize, usize)> {
        vec![
            ("endpoint.ifindex", offset_of!(EndpointValue, ifindex), 4),
            ("endpoint.identity", offset_of!(EndpointValue, identity), 4),
            ("endpoint.mac", offset_of!(EndpointValue, mac), 6),
            ("endpoint.host_mac", offset_of!(EndpointValue, host_mac), 6),
            ("endpoint.flags", offset_of!(EndpointValue, flags), 4),
            ("lpm_v4_key.prefixlen", 0, 4),
            ("lpm_v4_key.addr", 4, 4),
            ("remote_node.node_ip", offset_of!(RemoteNode, node_ip), 4),
            ("remote_node.flags", offset_of!(RemoteNode, flags), 4),
            (
                "dp_config.vxlan_ifindex",
                offset_of!(DpConfig, vxlan_ifindex),
                4,
            ),
            ("dp_config.node_ip", offset_of!(DpConfig, node_ip), 4),
            (
                "dp_config.cluster_addr",
                offset_of!(DpConfig, cluster_addr),
                4,
            ),
            (
                "dp_config.cluster_mask",
                offset_of!(DpConfig, cluster_mask),
                4,
            ),
            ("dp_config.flags", offset_of!(DpConfig, flags), 4),
            (
                "dp_config.events_per_sec",
                offset_of!(DpConfig, events_per_sec),
                4,
            ),
            (
                "dp_config.policy_epoch",
                offset_of!(DpConfig, policy_epoch),
                4,
            ),
            ("dp_config.vxlan_port", offset_of!(DpConfig, vxlan_port), 4),
            (
                "dp_config.uplink_ifindex",
                offset_of!(DpConfig, uplink_ifindex),
                4,
            ),
            ("dp_config.uplink_mtu", offset_of!(DpConfig, uplink_mtu), 4),
            ("dp_config.pod_addr", offset_of!(DpConfig, pod_addr), 4),
            ("dp_config.pod_mask", offset_of!(DpConfig, pod_mask), 4),
            ("dp_config.slot_shift", offset_of!(DpConfig, slot_shift), 4),
            ("flow_key.addr", offset_of!(FlowKey, addr), 8),
            ("flow_key.port", offset_of!(FlowKey, port), 4),
            ("flow_key.proto", offset_of!(FlowKey, proto), 1),
            ("flow_value.last_ns", offset_of!(FlowValue, last_ns), 8),
            ("flow_value.first_us", offset_of!(FlowValue, first_us), 4),
            ("flow_value.first_seq", offset_of!(FlowValue, first_seq), 4),
            ("flow_value.count", offset_of!(FlowValue, count), 16),
            ("flow_value.side", offset_of!(FlowValue, side), 8),
            ("flow_value.tag", offset_of!(FlowValue, tag), 4),
            ("flow_value.rule", offset_of!(FlowValue, rule), 4),
            ("flow_event.key", offset_of!(FlowEvent, key), 16),
            ("flow_event.value", offset_of!(FlowEvent, value), 48),
            ("flow_event.kind", offset_of!(FlowEvent, kind), 4),
            ("flow_event.ifindex", offset_of!(FlowEvent, ifindex), 4),
            ("ep_policy.deny_rule", offset_of!(EpPolicy, deny_rule), 4),
            ("ep_policy.first", offset_of!(EpPolicy, first), 4),
            ("ep_policy.count", offset_of!(EpPolicy, count), 2),
            ("ep_policy.isolated", offset_of!(EpPolicy, isolated), 1),
            ("port_range.proto", offset_of!(PortRange, proto), 1),
            ("port_range.from", offset_of!(PortRange, from), 2),
            ("port_range.to", offset_of!(PortRange, to), 2),
            ("policy_rule.id", offset_of!(PolicyRule, id), 2),
            ("policy_rule.nports", offset_of!(PolicyRule, nports), 1),
            ("policy_rule.ports", offset_of!(PolicyRule, ports), 24),
            ("peer_key.prefixlen", 0, 4),
            ("peer_key.slot", 4 + offset_of!(PeerKey, slot), 4),
            ("peer_key.addr", 4 + offset_of!(PeerKey, addr), 4),
            ("traffic.packets", offset_of!(Traffic, packets), 8),
            ("traffic.bytes", offset_of!(Traffic, bytes), 8),
            ("trace_event.ts_ns", offset_of!(TraceEvent, ts_ns), 8),
            ("trace_event.saddr", offset_of!(TraceEvent, saddr), 4),
            ("trace_event.daddr", offset_of!(TraceEvent, daddr), 4),
            ("trace_event.sport", offset_of!(TraceEvent, sport), 2),
            ("trace_event.dport", offset_of!(TraceEvent, dport), 2),
            ("trace_event.ip_id", offset_of!(TraceEvent, ip_id), 2),
            ("trace_event.proto", offset_of!(TraceEvent, proto), 1),
            ("trace_event.point", offset_of!(TraceEvent, point), 1),
            ("trace_event.action", offset_of!(TraceEvent, action), 1),
            ("trace_event.reason", offset_of!(TraceEvent, reason), 1),
            ("trace_event.rule", offset_of!(TraceEvent, rule), 2),
            ("trace_event.ifindex", offset_of!(TraceEvent, ifindex), 4),
            (
                "trace_event.tunnel_remote",
                offset_of!(TraceEvent, tunnel_remote),
                4,
            ),
            ("trace_event.tag", offset_of!(TraceEvent, tag), 4),
            ("trace_event.trace_id", offset_of!(TraceEvent, trace_id), 4),
            ("trace_event.flags", offset_of!(TraceEvent, flags), 4),
            ("trace_key.saddr", offset_of!(TraceKey, saddr), 4),
            ("trace_key.daddr", offset_of!(TraceKey, daddr), 4),
            ("trace_key.sport", offset_of!(TraceKey, sport), 2),
            ("trace_key.dport", offset_of!(TraceKey, dport), 2),
            ("trace_key.ip_id", offset_of!(TraceKey, ip_id), 2),
            ("trace_key.proto", offset_of!(TraceKey, proto), 1),
            ("live_trace.daddr", offset_of!(LiveTrace, daddr), 4),
            ("live_trace.dmask", offset_of!(LiveTrace, dmask), 4),
            ("live_trace.sport", offset_of!(LiveTrace, sport), 2),
            ("live_trace.dport", offset_of!(LiveTrace, dport), 2),
            ("live_trace.proto", offset_of!(LiveTrace, proto), 1),
            ("live_trace.flags", offset_of!(LiveTrace, flags), 1),
            ("live_trace.trace_id", offset_of!(LiveTrace, trace_id), 4),
            ("live_trace.armed", offset_of!(LiveTrace, armed), 4),
        ]
    }

    #[test]
    fn field_offsets_match_maps_h() {
        assert_eq!(rust_fields(), C_FIELDS.to_vec());
    }

    #[test]
    fn sizes_match_maps_h() {
        let rust = [
            ("endpoint", size_of::<EndpointValue>()),
            ("lpm_v4_key", size_of::<LpmV4Key>()),
            ("remote_node", size_of::<RemoteNode>()),
            ("dp_config", size_of::<DpConfig>()),
            ("flow_key", size_of::<FlowKey>()),
            ("flow_value", size_of::<FlowValue>()),
            ("flow_event", size_of::<FlowEvent>()),
            ("traffic", size_of::<Traffic>()),
            ("ep_policy", size_of::<EpPolicy>()),
            ("port_range", size_of::<PortRange>()),
            ("policy_rule", size_of::<PolicyRule>()),
            ("peer_key", 4 + size_of::<PeerKey>()),
            ("trace_event", size_of::<TraceEvent>()),
            ("trace_key", size_of::<TraceKey>()),
            ("live_trace", size_of::<LiveTrace>()),
        ];
        assert_eq!(rust.to_vec(), C_SIZES.to_vec());
    }

    #[test]
    fn constants_match_maps_h() {
        let consts: std::collections::HashMap<_, _> = C_CONSTS.iter().copied().collect();
        assert_eq!(consts["TAG_TRACE"], u64::from(lumen_api::Tag::TRACE_BIT));
        assert_eq!(consts["CNT_MAX"], COUNTERS.len() as u64);
        assert_eq!(
            consts["IDENTITY_POD_BASE"],
            u64::from(lumen_api::Identity::POD_BASE)
        );
        for (name, reason) in [
            ("DROP_POLICY", DropReason::Policy),
            ("DROP_TUNNEL_KEY", DropReason::TunnelKey),
            ("DROP_NO_CONFIG", DropReason::NoConfig),
        ] {
            assert_eq!(consts[name], u64::from(reason.code()), "{name}");
        }
        assert_eq!(consts["EVENT_END"], u64::from(EVENT_END));
        assert_eq!(consts["CFG_LIVE_TRACE"], u64::from(CFG_LIVE_TRACE));
        assert_eq!(consts["IP_RF"], u64::from(IP_RF));
        assert_eq!(consts["TRACE_F_INJECTED"], u64::from(TRACE_F_INJECTED));
        assert_eq!(
            consts["TRACE_DROP_NO_ROUTE"],
            u64::from(TRACE_DROP_NO_ROUTE)
        );
        assert_eq!(
            u64::from(TRACE_DROP_NO_ROUTE),
            u64::from(DropReason::NoRoute.code())
        );
        assert_eq!(
            consts["LIVE_F_DROPPED_ONLY"],
            u64::from(LIVE_F_DROPPED_ONLY)
        );
        assert_eq!(consts["MAX_TRACE_PACKETS"], u64::from(MAX_TRACE_PACKETS));
        for (name, code) in [
            ("TP_FROM_POD", lumen_api::trace::TracePoint::FromPod),
            (
                "TP_POLICY_EGRESS",
                lumen_api::trace::TracePoint::PolicyEgress,
            ),
            ("TP_TO_OVERLAY", lumen_api::trace::TracePoint::ToOverlay),
            ("TP_FROM_OVERLAY", lumen_api::trace::TracePoint::FromOverlay),
            (
                "TP_POLICY_INGRESS",
                lumen_api::trace::TracePoint::PolicyIngress,
            ),
            ("TP_TO_POD", lumen_api::trace::TracePoint::ToPod),
            ("TP_HOST_STACK", lumen_api::trace::TracePoint::HostStack),
            ("TP_MASQUERADE", lumen_api::trace::TracePoint::Masquerade),
        ] {
            let c = u8::try_from(consts[name]).expect("a point fits a byte");
            assert_eq!(
                lumen_api::trace::TracePoint::from_code(c),
                Some(code),
                "{name}"
            );
        }
        for (name, code) in [
            ("TA_RECEIVED", lumen_api::trace::HopAction::Received),
            ("TA_FORWARDED", lumen_api::trace::HopAction::Forwarded),
            ("TA_TUNNELLED", lumen_api::trace::HopAction::Tunnelled),
            ("TA_DELIVERED", lumen_api::trace::HopAction::Delivered),
            ("TA_DROPPED", lumen_api::trace::HopAction::Dropped),
            ("TA_REJECTED", lumen_api::trace::HopAction::Rejected),
            ("TA_MASQUERADED", lumen_api::trace::HopAction::Masqueraded),
        ] {
            let c = u8::try_from(consts[name]).expect("an action fits a byte");
            assert_eq!(
                lumen_api::trace::HopAction::from_code(c),
                Some(code),
                "{name}"
            );
        }
        assert_eq!(consts["DROP_MAX"], u64::from(DROP_MAX));
        assert_eq!(consts["MAX_ENDPOINTS"], u64::from(MAX_ENDPOINTS));
        assert_eq!(consts["MAX_REMOTE_CIDRS"], u64::from(MAX_REMOTE_CIDRS));
        assert_eq!(consts["MAX_REMOTE_SLOTS"], u64::from(MAX_REMOTE_SLOTS));
        assert_eq!(consts["CFG_REMOTE_TRIE"], u64::from(CFG_REMOTE_TRIE));
        assert_eq!(consts["DIR_MAX"], u64::from(DIR_INGRESS) + 1);
        assert_eq!(consts["EVENT_DROP"], u64::from(EVENT_DROP));
        assert_eq!(consts["FLOW_F_SIDE1_FIRST"], u64::from(FLOW_F_SIDE1_FIRST));
        assert_eq!(consts["SIDE_FLAGS_SHIFT"], u64::from(SIDE_FLAGS_SHIFT));
        assert_eq!(consts["TAG_DROP_SHIFT"], u64::from(TAG_DROP_SHIFT));
        assert_eq!(consts["FLOW_F_TRACED"], u64::from(FLOW_F_TRACED));
        assert_eq!(consts["FLOW_F_OVERLAY"], u64::from(FLOW_F_OVERLAY));
        assert_eq!(consts["CFG_NO_FLOWS"], u64::from(CFG_NO_FLOWS));
        assert_eq!(consts["CFG_POLICY"], u64::from(CFG_POLICY));
        assert_eq!(consts["FLOW_EPOCH_SHIFT"], u64::from(FLOW_EPOCH_SHIFT));
        assert_eq!(consts["FLOW_F_DENIED"], u64::from(FLOW_F_DENIED));
        assert_eq!(
            consts["POL_ISOLATED_INGRESS"],
            u64::from(POL_ISOLATED_INGRESS)
        );
        assert_eq!(
            consts["POL_ISOLATED_EGRESS"],
            u64::from(POL_ISOLATED_EGRESS)
        );
        assert_eq!(
            consts["MAX_RULES_PER_DIRECTION"],
            MAX_RULES_PER_DIRECTION as u64
        );
        assert_eq!(consts["RULE_PORTS"], RULE_PORTS as u64);
        assert_eq!(consts["MAX_POLICY_RULES"], u64::from(MAX_POLICY_RULES));
        let index = |name: &str| COUNTERS.iter().position(|c| *c == name).map(|i| i as u32);
        assert_eq!(
            index("events_rate_limited"),
            Some(counter::EVENTS_RATE_LIMITED)
        );
        assert_eq!(index("events_lost"), Some(counter::EVENTS_LOST));
        assert_eq!(index("flows_created"), Some(counter::FLOWS_CREATED));
        assert_eq!(index("flow_table_full"), Some(counter::FLOW_TABLE_FULL));
    }

    /// Key + value, plus the kernel's 48-byte LRU element header and 16-byte
    /// bucket: 64 + 48 + 16 = 128 bytes a flow (`cargo xtask bench memory`
    /// measures the kernel's own figure).
    #[test]
    fn flow_entry_fits_the_memory_budget() {
        assert_eq!(size_of::<FlowKey>() + size_of::<FlowValue>(), 64);
    }
}

#[cfg(test)]
mod unpack_tests {
    use super::*;

    #[test]
    fn first_time_unwraps_against_the_last() {
        let first_ns: u64 = 5_000_000_000_123_000;
        let v = FlowValue {
            last_ns: first_ns + 3_000_000_000,
            first_us: (first_ns / 1000) as u32,
            ..FlowValue::default()
        };
        assert_eq!(v.first_ns(), first_ns);
    }

    #[test]
    fn packed_fields() {
        let v = FlowValue {
            side: [300 | 0x12 << 24, 2],
            tag: 0x80_0101 | FLOW_F_OVERLAY | 1 << TAG_DROP_SHIFT,
            ..FlowValue::default()
        };
        assert_eq!((v.identity(0), v.tcp_flags(0)), (300, 0x12));
        assert_eq!((v.identity(1), v.tcp_flags(1)), (2, 0));
        assert_eq!(v.vni(), 0x80_0101);
        assert_eq!(v.drop_reason(), 1);
        assert!(v.has(FLOW_F_OVERLAY) && !v.has(FLOW_F_TRACED));
    }
}
