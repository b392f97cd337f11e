//! Decode: the datapath's canonical flow entry → an oriented observation (who
//! sent first, counters per direction in 64 bits, times on the wall clock), plus
//! the two identifiers every record carries: the correlation id and Community ID.

use std::net::Ipv4Addr;

use lumen_api::Identity;
use lumen_api::flow::{Counters, DropReason, Protocol, TcpFlags};

use super::community::community_id;
use crate::datapath::abi::{
    FLOW_F_SIDE1_FIRST, FLOW_F_TRACED, FlowKey, FlowValue, POL_EGRESS, POL_INGRESS,
};

/// 64-bit totals of a flow's 32-bit kernel counters, per side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

/// One direction of a flow, as the datapath saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub identity: Identity,
}

/// A flow entry, oriented from the side that sent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub source: Side,
    pub destination: Side,
    pub protocol: Protocol,
    /// Monotonic nanoseconds (the datapath's clock).
    pub first_mono: u64,
    pub last_mono: u64,
    pub forward: Counters,
    pub reverse: Counters,
    pub tcp_flags: TcpFlags,
    pub reverse_tcp_flags: TcpFlags,
    pub icmp_type_code: Option<u16>,
    pub drop_reason: Option<DropReason>,
    pub tag: Option<u32>,
    pub traced: bool,
    /// Equal on every node that saw the flow's first packet.
    pub correlation_id: String,
    pub community_id: String,
    /// The deciding policy rules (or default denies), ingress and egress; 0 none.
    pub rules: [u16; 2],
}

impl Observed {
    /// TCP: a RST, or a FIN from both sides.
    pub fn ended(&self) -> bool {
        let (f, r) = (self.tcp_flags, self.reverse_tcp_flags);
        f.has(TcpFlags::RST)
            || r.has(TcpFlags::RST)
            || (f.has(TcpFlags::FIN) && r.has(TcpFlags::FIN))
    }
}

/// The kernel's counters wrap at 32 bits; this keeps 64-bit totals, as long as it
/// reads them before any moves by 2^32 (seconds at 10 Gbit/s for bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Widened {
    /// Each side's `count` word as last read.
    raw: [u64; 2],
    totals: Totals,
}

/// The packets and bytes between two readings of a `count` word: the word is
/// bytes << 32 plus packets, modulo 2^64, so the low half of the difference is
/// the packets and the high half the bytes, carries included, as long as
/// fewer than 2^32 packets came between.
fn moved(now: u64, before: u64) -> (u32, u32) {
    let delta = now.wrapping_sub(before);
    (delta as u32, (delta >> 32) as u32)
}

impl Widened {
    /// Whether `value` is older than the last reading (a ring-buffer snapshot read
    /// after the table): some counter would have to move backwards.
    pub fn is_behind(&self, value: &FlowValue) -> bool {
        (0..2).any(|i| {
            let (packets, bytes) = moved(value.count[i], self.raw[i]);
            packets > u32::MAX / 2 || bytes > u32::MAX / 2
        })
    }

    /// The totals as of the last reading.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Advance by what the kernel counters moved since the last reading.
    pub fn update(&mut self, value: &FlowValue) -> Totals {
        for i in 0..2 {
            let (packets, bytes) = moved(value.count[i], self.raw[i]);
            self.totals.packets[i] += u64::from(packets);
            self.totals.bytes[i] += u64::from(bytes);
        }
        self.raw = value.count;
        self.totals
    }
}

/// 64-bit FNV-1a: stable across builds and nodes, unlike std's hasher.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Orient a kernel entry, with its widened `totals` and the first packet's time.
pub fn decode(key: &FlowKey, value: &FlowValue, totals: Totals, first_ns: u64) -> Observed {
    let first = usize::from(value.has(FLOW_F_SIDE1_FIRST));
    let (s, d) = (first, first ^ 1);
    let side = |i: usize| Side {
        ip: Ipv4Addr::from(key.addr[i].to_ne_bytes()),
        port: u16::from_be(key.port[i]),
        identity: Identity(value.identity(i)),
    };
    let (mut source, mut destination) = (side(s), side(d));
    let protocol = Protocol(key.proto);
    let mut icmp_type_code = None;
    let (mut cid_sport, mut cid_dport) = (source.port, destination.port);
    if protocol == Protocol::ICMP {
        // Echo flows carry the id on both sides; anything else type << 8 | code.
        let type_code = if source.port == destination.port {
            0x0800
        } else {
            source.port
        };
        icmp_type_code = Some(type_code);
        cid_sport = type_code >> 8;
        cid_dport = type_code & 0xff;
        source.port = 0;
        destination.port = 0;
    }
    let correlation = fnv1a(&[
        &key.addr[s].to_ne_bytes(),
        &key.addr[d].to_ne_bytes(),
        &key.port[s].to_ne_bytes(),
        &key.port[d].to_ne_bytes(),
        &[key.proto],
        &value.first_seq.to_ne_bytes(),
    ]);
    Observed {
        community_id: community_id(source.ip, destination.ip, key.proto, cid_sport, cid_dport),
        source,
        destination,
        protocol,
        first_mono: first_ns,
        last_mono: value.last_ns,
        forward: Counters {
            packets: totals.packets[s],
            bytes: totals.bytes[s],
        },
        reverse: Counters {
            packets: totals.packets[d],
            bytes: totals.bytes[d],
        },
        tcp_flags: TcpFlags(value.tcp_flags(s)),
        reverse_tcp_flags: TcpFlags(value.tcp_flags(d)),
        icmp_type_code,
        drop_reason: DropReason::from_code(value.drop_reason()),
        tag: (value.vni() != 0).then_some(value.vni()),
        traced: value.has(FLOW_F_TRACED),
        correlation_id: format!("{correlation:016x}"),
        rules: [value.rule[POL_INGRESS], value.rule[POL_EGRESS]],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::abi::count_of;

    fn be(ip: [u8; 4]) -> u32 {
        u32::from_ne_bytes(ip)
    }

    fn key(a: [u8; 4], pa: u16, b: [u8; 4], pb: u16, proto: u8) -> FlowKey {
        FlowKey {
            addr: [be(a), be(b)],
            port: [pa.to_be(), pb.to_be()],
            proto,
            _pad: [0; 3],
        }
    }

    #[test]
    fn orients_from_the_side_that_sent_first() {
        let k = key([10, 244, 1, 2], 80, [10, 244, 2, 3], 40000, 6);
        let v = FlowValue {
            side: [258 | 0x12 << 24, 515 | 0x02 << 24],
            tag: FLOW_F_SIDE1_FIRST,
            first_seq: 7,
            ..FlowValue::default()
        };
        let totals = Totals {
            packets: [4, 2],
            bytes: [500, 100],
        };
        let o = decode(&k, &v, totals, 0);
        assert_eq!(o.source.ip, Ipv4Addr::new(10, 244, 2, 3));
        assert_eq!(o.source.port, 40000);
        assert_eq!(o.source.identity, Identity(515));
        assert_eq!(o.destination.port, 80);
        assert_eq!(
            o.forward,
            Counters {
                packets: 2,
                bytes: 100
            }
        );
        assert_eq!(
            o.reverse,
            Counters {
                packets: 4,
                bytes: 500
            }
        );
        assert_eq!(o.tcp_flags, TcpFlags(0x02));
        assert_eq!(o.correlation_id.len(), 16);
        assert!(!o.ended());
    }

    #[test]
    fn correlation_depends_on_the_first_packet_not_the_node() {
        let k = key([10, 244, 1, 2], 5000, [10, 244, 2, 3], 5001, 17);
        let v = FlowValue {
            first_seq: 1234,
            ..FlowValue::default()
        };
        let other_node = FlowValue {
            last_ns: 99,
            count: [count_of(1, 1), count_of(1, 2)],
            first_seq: 1234,
            ..FlowValue::default()
        };
        let again = FlowValue {
            first_seq: 1235,
            ..FlowValue::default()
        };
        let id = |v: &FlowValue| decode(&k, v, Totals::default(), 0).correlation_id;
        assert_eq!(id(&v), id(&other_node));
        assert_ne!(id(&v), id(&again));
    }

    #[test]
    fn icmp_echo_is_typed_and_portless() {
        let k = key([10, 244, 1, 2], 77, [10, 244, 1, 3], 77, 1);
        let o = decode(&k, &FlowValue::default(), Totals::default(), 0);
        assert_eq!(o.icmp_type_code, Some(0x0800));
        assert_eq!((o.source.port, o.destination.port), (0, 0));
        assert!(o.community_id.starts_with("1:"));
    }

    #[test]
    fn widening_survives_wraparound() {
        // As the datapath counts: one wrapping 64-bit add of bytes << 32 | packets.
        let add = |v: &mut FlowValue, side: usize, packets: u32, bytes: u32| {
            v.count[side] = v.count[side].wrapping_add(count_of(packets, bytes));
        };
        let mut w = Widened::default();
        let mut v = FlowValue::default();
        add(&mut v, 0, u32::MAX, u32::MAX - 1);
        add(&mut v, 1, 3, 7);
        let t = w.update(&v);
        assert_eq!(
            (t.packets, t.bytes),
            ([u64::from(u32::MAX), 3], [u64::from(u32::MAX) - 1, 7])
        );
        // Side 0's packets wrap (their carry lands in the bytes), and so do its bytes.
        let before = v;
        add(&mut v, 0, 3, 7);
        let t = w.update(&v);
        assert_eq!(t.packets, [u64::from(u32::MAX) + 3, 3]);
        assert_eq!(t.bytes, [u64::from(u32::MAX) + 6, 7]);
        // A snapshot from before the last reading is told apart.
        assert!(w.is_behind(&before));
        assert!(!w.is_behind(&v));
    }
}
