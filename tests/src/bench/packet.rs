//! Packets for `BPF_PROG_TEST_RUN`: Ethernet + IPv4 + TCP, with the checksums a
//! real stack would write, and such a frame in VXLAN.

use std::net::Ipv4Addr;

use lumen_lab::netio::checksum::internet_checksum;

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;
const UDP_LEN: usize = 8;
const VXLAN_LEN: usize = 8;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_SYN: u8 = 0x02;

/// A TCP SYN from `src` to `dst` in an Ethernet frame.
pub fn tcp_syn(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    tcp_packet([src_mac, dst_mac], (src, sport), (dst, dport), TCP_SYN)
}

/// A TCP segment without payload with the given flags, in an Ethernet frame.
pub fn tcp_packet(
    [src_mac, dst_mac]: [[u8; 6]; 2],
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
    flags: u8,
) -> Vec<u8> {
    let ip = ipv4_header(IPPROTO_TCP, src, dst, TCP_LEN);
    let mut tcp = [0u8; TCP_LEN];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes()); // sequence number
    tcp[12] = 0x50; // 5 words of header
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = IPPROTO_TCP;
    pseudo[10..12].copy_from_slice(&(TCP_LEN as u16).to_be_bytes());
    let sum = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());

    let mut frame = Vec::with_capacity(ETH_LEN + IP_LEN + TCP_LEN);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    frame
}

/// `frame` (an IPv4 packet in an Ethernet frame) grown with zeros to `ip_len`
/// bytes of IP, its total length set to match (the IP checksum is not redone:
/// the datapath does not check it).
pub fn padded(mut frame: Vec<u8>, ip_len: u16) -> Vec<u8> {
    frame.resize(ETH_LEN + usize::from(ip_len), 0);
    frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&ip_len.to_be_bytes());
    frame
}

/// `inner` (an Ethernet frame) in VXLAN (RFC 7348) with `vni`, sent by the
/// node at `from` to UDP `port` of the node at `to`, as that node's uplink
/// receives it: no UDP checksum, as the tunnel sends.
pub fn vxlan_frame(from: Ipv4Addr, to: Ipv4Addr, port: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
    const VXLAN_FLAG_I: u32 = 0x0800_0000;
    let udp_len = UDP_LEN + VXLAN_LEN + inner.len();
    let mut frame = Vec::with_capacity(ETH_LEN + IP_LEN + udp_len);
    frame.extend_from_slice(&[0x02, 0x0d, 0, 0, 0, 2]);
    frame.extend_from_slice(&[0x02, 0x0d, 0, 0, 0, 1]);
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    frame.extend_from_slice(&ipv4_header(IPPROTO_UDP, from, to, udp_len));
    frame.extend_from_slice(&54321u16.to_be_bytes());
    frame.extend_from_slice(&port.to_be_bytes());
    frame.extend_from_slice(&u16::try_from(udp_len).unwrap_or(u16::MAX).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&VXLAN_FLAG_I.to_be_bytes());
    frame.extend_from_slice(&(vni << 8).to_be_bytes());
    frame.extend_from_slice(inner);
    frame
}

/// An IPv4 header without options (don't fragment, TTL 64) with its checksum.
fn ipv4_header(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) -> [u8; IP_LEN] {
    let mut ip = [0u8; IP_LEN];
    ip[0] = 0x45; // version 4, 5 words of header
    let total = u16::try_from(IP_LEN + payload_len).unwrap_or(u16::MAX);
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // ttl
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

/// The Internet checksum over the concatenation of `parts`.
fn checksum(parts: &[&[u8]]) -> u16 {
    internet_checksum(&parts.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let src = Ipv4Addr::new(10, 244, 1, 2);
        let dst = Ipv4Addr::new(10, 244, 2, 2);
        let frame = tcp_syn([2; 6], [4; 6], src, dst, 40000, 80);
        assert_eq!(frame.len(), 54);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        let ip = &frame[ETH_LEN..ETH_LEN + IP_LEN];
        assert_eq!(checksum(&[ip]), 0);
        let tcp = &frame[ETH_LEN + IP_LEN..];
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&src.octets());
        pseudo[4..8].copy_from_slice(&dst.octets());
        pseudo[9] = IPPROTO_TCP;
        pseudo[11] = TCP_LEN as u8;
        assert_eq!(checksum(&[&pseudo, tcp]), 0);
    }

    #[test]
    fn vxlan_frames_wrap_the_inner_frame() {
        let inner = tcp_syn(
            [2; 6],
            [4; 6],
            Ipv4Addr::new(10, 244, 2, 7),
            Ipv4Addr::new(10, 244, 1, 2),
            1,
            80,
        );
        let frame = vxlan_frame(
            Ipv4Addr::new(192, 0, 2, 12),
            Ipv4Addr::new(192, 0, 2, 11),
            4789,
            769,
            &inner,
        );
        assert_eq!(
            frame.len(),
            inner.len() + 50,
            "outer Ethernet, IPv4, UDP, VXLAN"
        );
        let ip = &frame[ETH_LEN..ETH_LEN + IP_LEN];
        assert_eq!(checksum(&[ip]), 0);
        assert_eq!(
            u16::from_be_bytes([ip[2], ip[3]]) as usize,
            frame.len() - ETH_LEN
        );
        assert_eq!(&frame[36..38], &4789u16.to_be_bytes(), "UDP destination");
        assert_eq!(
            &frame[42..50],
            &[0x08, 0, 0, 0, 0, 0x03, 0x01, 0],
            "I flag, VNI 769"
        );
        assert_eq!(&frame[50..], &inner[..]);
    }

    /// The worked example of RFC 1071 section 3.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), !0xddf2);
    }
}
