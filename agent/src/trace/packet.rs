//! The frames an injected trace sends: Ethernet + IPv4 (reserved flag set, so
//! the datapath can stop it at its last hop) + a TCP, UDP, SCTP INIT or ICMP
//! echo header, with correct checksums, as the pod itself would send them.

use lumen_api::flow::Protocol;
use lumen_api::trace::TracedPacket;

/// `IP_RF` in the flags/fragment-offset word.
const IP_RF: u16 = crate::datapath::abi::IP_RF;
const PAYLOAD: &[u8] = b"lumen-trace";

/// What goes on the wire besides the packet's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub packet: TracedPacket,
    /// TCP flags (the low byte of the flags word).
    pub tcp_flags: u8,
    /// TCP sequence number, SCTP initiate tag.
    pub seq: u32,
}

impl Frame {
    /// The bytes of the frame.
    pub fn bytes(&self) -> Vec<u8> {
        let p = &self.packet;
        let l4 = match p.protocol {
            Protocol::TCP => tcp(p, self.tcp_flags, self.seq),
            Protocol::UDP => udp(p),
            Protocol::SCTP => sctp(p, self.seq),
            _ => icmp_echo(p),
        };
        let mut out = Vec::with_capacity(14 + 20 + l4.len());
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        out.extend_from_slice(&0x0800u16.to_be_bytes());
        out.extend_from_slice(&ipv4(p, l4.len()));
        out.extend_from_slice(&l4);
        out
    }
}

fn ipv4(p: &TracedPacket, l4_len: usize) -> [u8; 20] {
    let total = u16::try_from(20 + l4_len).unwrap_or(u16::MAX);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&p.ip_id.to_be_bytes());
    h[6..8].copy_from_slice(&IP_RF.to_be_bytes());
    h[8] = 64;
    h[9] = p.protocol.0;
    h[12..16].copy_from_slice(&p.source.octets());
    h[16..20].copy_from_slice(&p.destination.octets());
    let sum = checksum(&[&h]);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

fn tcp(p: &TracedPacket, flags: u8, seq: u32) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&p.source_port.to_be_bytes());
    h[2..4].copy_from_slice(&p.destination_port.to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    let sum = checksum(&[&pseudo(p, h.len()), &h]);
    h[16..18].copy_from_slice(&sum.to_be_bytes());
    h
}

fn udp(p: &TracedPacket) -> Vec<u8> {
    let len = 8 + PAYLOAD.len();
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&p.source_port.to_be_bytes());
    h[2..4].copy_from_slice(&p.destination_port.to_be_bytes());
    h[4..6].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    h.extend_from_slice(PAYLOAD);
    let sum = match checksum(&[&pseudo(p, len), &h]) {
        0 => 0xffff,
        s => s,
    };
    h[6..8].copy_from_slice(&sum.to_be_bytes());
    h
}

/// An SCTP INIT (RFC 9260 §3.3.2) with verification tag 0, as an association starts.
fn sctp(p: &TracedPacket, initiate_tag: u32) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[0..2].copy_from_slice(&p.source_port.to_be_bytes());
    h[2..4].copy_from_slice(&p.destination_port.to_be_bytes());
    let mut init = [0u8; 20];
    init[0] = 1;
    init[2..4].copy_from_slice(&20u16.to_be_bytes());
    init[4..8].copy_from_slice(&initiate_tag.max(1).to_be_bytes());
    init[8..12].copy_from_slice(&65_535u32.to_be_bytes());
    init[12..14].copy_from_slice(&1u16.to_be_bytes());
    init[14..16].copy_from_slice(&1u16.to_be_bytes());
    init[16..20].copy_from_slice(&initiate_tag.to_be_bytes());
    h.extend_from_slice(&init);
    let crc = crc32c(&h);
    h[8..12].copy_from_slice(&crc.to_le_bytes());
    h
}

fn icmp_echo(p: &TracedPacket) -> Vec<u8> {
    let mut h = vec![8u8, 0, 0, 0];
    h.extend_from_slice(&p.source_port.to_be_bytes());
    h.extend_from_slice(&1u16.to_be_bytes());
    h.extend_from_slice(PAYLOAD);
    let sum = checksum(&[&h]);
    h[2..4].copy_from_slice(&sum.to_be_bytes());
    h
}

/// The TCP/UDP pseudo-header.
fn pseudo(p: &TracedPacket, len: usize) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0..4].copy_from_slice(&p.source.octets());
    h[4..8].copy_from_slice(&p.destination.octets());
    h[9] = p.protocol.0;
    h[10..12].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    h
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`, each of
/// even length but the last.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(u16::try_from(sum).unwrap_or(u16::MAX))
}

/// CRC-32C (Castagnoli), as SCTP's checksum (RFC 9260 Appendix B).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn source_of(frame: &[u8]) -> Option<Ipv4Addr> {
        let b: [u8; 4] = frame.get(26..30)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    }

    fn packet(protocol: Protocol) -> TracedPacket {
        TracedPacket {
            source: Ipv4Addr::new(10, 244, 1, 2),
            destination: Ipv4Addr::new(10, 244, 2, 3),
            protocol,
            source_port: 40_001,
            destination_port: 80,
            ip_id: 7,
        }
    }

    fn frame(protocol: Protocol) -> Vec<u8> {
        Frame {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            packet: packet(protocol),
            tcp_flags: 0x02,
            seq: 1,
        }
        .bytes()
    }

    #[test]
    fn ipv4_header_has_reserved_flag_and_valid_checksum() {
        let f = frame(Protocol::TCP);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([f[20], f[21]]), IP_RF);
        assert_eq!(checksum(&[&f[14..34]]), 0, "header checksum verifies");
        assert_eq!(source_of(&f), Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 7, "ip id");
    }

    #[test]
    fn transport_checksums_verify() {
        for protocol in [Protocol::TCP, Protocol::UDP] {
            let f = frame(protocol);
            let l4 = &f[34..];
            let p = packet(protocol);
            assert_eq!(checksum(&[&pseudo(&p, l4.len()), l4]), 0, "{protocol}");
        }
        let f = frame(Protocol::ICMP);
        assert_eq!(checksum(&[&f[34..]]), 0, "icmp");
        assert_eq!(f[34], 8, "echo request");
    }

    #[test]
    fn sctp_crc32c_matches_rfc_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        let f = frame(Protocol::SCTP);
        let mut l4 = f[34..].to_vec();
        let sent = u32::from_le_bytes([l4[8], l4[9], l4[10], l4[11]]);
        l4[8..12].fill(0);
        assert_eq!(crc32c(&l4), sent);
        assert_eq!(l4[12], 1, "INIT chunk");
    }
}
