//! The IPv4 header of packets read from raw sockets, which the kernel hands over with
//! the header in front of the payload.

use std::net::Ipv4Addr;

const MIN_HEADER_LEN: usize = 20;

/// The parts of an IPv4 packet the probes and the SCTP responder look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ipv4Packet<'a> {
    pub(crate) src: Ipv4Addr,
    pub(crate) dst: Ipv4Addr,
    pub(crate) protocol: u8,
    pub(crate) payload: &'a [u8],
}

/// Splits a raw-socket read into header fields and payload; `None` for anything that
/// is not a well-formed, unfragmented IPv4 packet (fragments cannot be parsed alone).
pub(crate) fn parse(packet: &[u8]) -> Option<Ipv4Packet<'_>> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < MIN_HEADER_LEN || packet.len() < header_len {
        return None;
    }
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total_len < header_len || total_len > packet.len() {
        return None;
    }
    let flags_fragment = u16::from_be_bytes([packet[6], packet[7]]);
    let more_fragments = flags_fragment & 0x2000 != 0;
    let offset = flags_fragment & 0x1fff;
    if more_fragments || offset != 0 {
        return None;
    }
    Some(Ipv4Packet {
        src: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        dst: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
        protocol: packet[9],
        payload: &packet[header_len..total_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(total_len: u16, flags_fragment: u16) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 132, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p[2..4].copy_from_slice(&total_len.to_be_bytes());
        p[6..8].copy_from_slice(&flags_fragment.to_be_bytes());
        p
    }

    #[test]
    fn parses_addresses_protocol_and_payload() {
        let mut p = header(24, 0x4000);
        p.extend_from_slice(&[1, 2, 3, 4, 0xee]);
        let parsed = parse(&p).unwrap();
        assert_eq!(parsed.src, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(parsed.dst, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(parsed.protocol, 132);
        assert_eq!(
            parsed.payload,
            &[1, 2, 3, 4],
            "trailing bytes beyond total length dropped"
        );
    }

    #[test]
    fn rejects_fragments_truncation_and_other_versions() {
        assert!(parse(&header(20, 0x2000)).is_none());
        assert!(parse(&header(20, 0x0001)).is_none());
        assert!(parse(&header(40, 0)).is_none());
        let mut v6 = header(20, 0);
        v6[0] = 0x65;
        assert!(parse(&v6).is_none());
        assert!(parse(&[]).is_none());
    }
}
