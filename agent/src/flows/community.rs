//! Community ID v1 (corelight/community-id-spec): a hash of the 5-tuple that every
//! tool computing it (Zeek, Suricata, Elastic, Hubble) agrees on, so a flow can be
//! joined across them.

use std::net::Ipv4Addr;

use sha1::{Digest, Sha1};

/// ICMP types with a counterpart (request ↔ reply), per the spec.
fn icmp_counterpart(t: u8) -> Option<u8> {
    match t {
        8 => Some(0),
        0 => Some(8),
        13 => Some(14),
        14 => Some(13),
        15 => Some(16),
        16 => Some(15),
        10 => Some(9),
        9 => Some(10),
        17 => Some(18),
        18 => Some(17),
        _ => None,
    }
}

/// The Community ID of a flow with seed 0. For ICMP, `sport` is the type and
/// `dport` the code of the source's packets.
pub fn community_id(saddr: Ipv4Addr, daddr: Ipv4Addr, proto: u8, sport: u16, dport: u16) -> String {
    let (mut sport, mut dport, mut one_way) = (sport, dport, false);
    if proto == 1 {
        match u8::try_from(sport).ok().and_then(icmp_counterpart) {
            Some(counter) => dport = u16::from(counter),
            None => one_way = true,
        }
    }
    let (mut a, mut b) = (saddr.octets(), daddr.octets());
    if !(one_way || a < b || (a == b && sport < dport)) {
        std::mem::swap(&mut a, &mut b);
        std::mem::swap(&mut sport, &mut dport);
    }
    let mut hasher = Sha1::new();
    hasher.update(0u16.to_be_bytes());
    hasher.update(a);
    hasher.update(b);
    hasher.update([proto, 0]);
    hasher.update(sport.to_be_bytes());
    hasher.update(dport.to_be_bytes());
    format!("1:{}", base64(&hasher.finalize()))
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's published examples.
    #[test]
    fn matches_the_spec_baseline() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        assert_eq!(
            community_id(ip("128.232.110.120"), ip("66.35.250.204"), 6, 34855, 80),
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
        );
        // Both directions give the same id.
        assert_eq!(
            community_id(ip("66.35.250.204"), ip("128.232.110.120"), 6, 80, 34855),
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
        );
        assert_eq!(
            community_id(ip("192.168.0.89"), ip("192.168.0.1"), 1, 8, 0),
            "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="
        );
        assert_eq!(
            community_id(ip("192.168.0.1"), ip("192.168.0.89"), 1, 0, 0),
            "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="
        );
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }
}
