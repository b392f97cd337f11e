//! ICMP echo (RFC 792) wire format for the ICMP probe: building a request and
//! recognising the matching reply.

use super::checksum::internet_checksum;

pub(crate) const ECHO_REPLY: u8 = 0;
pub(crate) const ECHO_REQUEST: u8 = 8;
const HEADER_LEN: usize = 8;

/// An echo request carrying `payload`, checksummed.
pub(crate) fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(HEADER_LEN + payload.len());
    packet.extend_from_slice(&[ECHO_REQUEST, 0, 0, 0]);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(payload);
    let checksum = internet_checksum(&packet);
    packet[2..4].copy_from_slice(&checksum.to_be_bytes());
    packet
}

/// Whether `packet` (an ICMP message without IP header) is an intact echo reply to
/// the request with `id` and `seq`.
pub(crate) fn is_echo_reply(packet: &[u8], id: u16, seq: u16) -> bool {
    packet.len() >= HEADER_LEN
        && packet[0] == ECHO_REPLY
        && packet[1] == 0
        && u16::from_be_bytes([packet[4], packet[5]]) == id
        && u16::from_be_bytes([packet[6], packet[7]]) == seq
        && internet_checksum(packet) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_matches_request_ids() {
        let request = echo_request(0x1234, 7, b"lumen");
        assert_eq!(internet_checksum(&request), 0);
        assert!(
            !is_echo_reply(&request, 0x1234, 7),
            "a request is not a reply"
        );

        // A reply is the request with type 0 and the checksum adjusted by 0x0800.
        let mut reply = request.clone();
        reply[0] = ECHO_REPLY;
        reply[2..4].copy_from_slice(&[0, 0]);
        let checksum = internet_checksum(&reply);
        reply[2..4].copy_from_slice(&checksum.to_be_bytes());
        assert!(is_echo_reply(&reply, 0x1234, 7));
        assert!(!is_echo_reply(&reply, 0x1234, 8));
        assert!(!is_echo_reply(&reply, 0x1235, 7));
        reply[9] ^= 1;
        assert!(!is_echo_reply(&reply, 0x1234, 7), "corrupt payload");
    }
}
