//! A minimal SCTP wire format (RFC 4960): the common header with its CRC32c checksum,
//! and the INIT / INIT-ACK chunks — just enough for a probe to ask "would this port
//! accept an association?" and for the pod server to answer, through raw sockets.

use super::nonce;

/// Common header: source port, destination port, verification tag, checksum.
pub const COMMON_HEADER_LEN: usize = 12;
pub const CHUNK_HEADER_LEN: usize = 4;
pub const CHUNK_INIT: u8 = 1;
pub const CHUNK_INIT_ACK: u8 = 2;
/// IANA protocol number, for raw sockets.
pub const IPPROTO_SCTP: i32 = 132;

/// INIT and INIT-ACK carry the same fixed fields after the chunk header.
const INIT_FIXED_LEN: usize = 16;
const PARAM_STATE_COOKIE: u16 = 7;
const CHECKSUM_OFFSET: usize = 8;
const ADVERTISED_RWND: u32 = 65_536;
const OUTBOUND_STREAMS: u16 = 10;
const MAX_INBOUND_STREAMS: u16 = u16::MAX;

#[derive(Debug, thiserror::Error)]
pub enum SctpError {
    #[error("sctp packet of {len} bytes is shorter than a common header and one chunk header")]
    Truncated { len: usize },
    #[error("sctp checksum mismatch: packet carries {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("sctp chunk type {chunk_type} claims {claimed} bytes but {available} remain")]
    BadChunkLength {
        chunk_type: u8,
        claimed: usize,
        available: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SctpHeader {
    pub src_port: u16,
    pub dst_port: u16,
    pub verification_tag: u32,
    /// CRC32c as sent on the wire (least significant byte first).
    pub checksum: u32,
}

/// The fixed part of an INIT or INIT-ACK chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitFields {
    pub initiate_tag: u32,
    pub a_rwnd: u32,
    pub outbound_streams: u16,
    pub inbound_streams: u16,
    pub initial_tsn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Init(InitFields),
    InitAck(InitFields),
    /// Any other chunk, or an INIT/INIT-ACK too short to hold its fixed fields.
    Other {
        chunk_type: u8,
    },
}

/// A checked SCTP packet: its header and its first chunk (the only one INIT and
/// INIT-ACK packets may carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SctpPacket {
    pub header: SctpHeader,
    pub first_chunk: Chunk,
}

// === impl SctpPacket ===

impl SctpPacket {
    pub fn chunk_type(&self) -> u8 {
        match self.first_chunk {
            Chunk::Init(_) => CHUNK_INIT,
            Chunk::InitAck(_) => CHUNK_INIT_ACK,
            Chunk::Other { chunk_type } => chunk_type,
        }
    }
}

// === CRC32c ===

/// Castagnoli polynomial, bit-reflected.
const CRC32C_POLY: u32 = 0x82F6_3B78;
const CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ CRC32C_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &byte in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC32c (iSCSI, RFC 3720; SCTP, RFC 4960 appendix B).
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

/// The SCTP checksum: CRC32c over the packet with the checksum field taken as zero.
fn packet_checksum(packet: &[u8]) -> u32 {
    let crc = crc32c_update(!0, &packet[..CHECKSUM_OFFSET]);
    let crc = crc32c_update(crc, &[0; 4]);
    !crc32c_update(crc, &packet[CHECKSUM_OFFSET + 4..])
}

// === building ===

/// An INIT from `src_port` to `dst_port`; `initiate_tag` must be non-zero and becomes
/// the verification tag of the peer's INIT-ACK.
pub fn init_packet(src_port: u16, dst_port: u16, initiate_tag: u32) -> Vec<u8> {
    let fields = InitFields {
        initiate_tag,
        a_rwnd: ADVERTISED_RWND,
        outbound_streams: OUTBOUND_STREAMS,
        inbound_streams: MAX_INBOUND_STREAMS,
        initial_tsn: initiate_tag,
    };
    // An INIT always carries verification tag 0 (RFC 4960 §8.5.1).
    let mut packet = common_header(src_port, dst_port, 0);
    push_init_chunk(&mut packet, CHUNK_INIT, &fields, &[]);
    seal(packet)
}

/// The INIT-ACK answering `init` (an SCTP packet without IP header): ports swapped,
/// verification tag = the INIT's initiate tag, a fresh initiate tag of our own and a
/// small state cookie. `None` unless `init` is a valid INIT.
pub fn init_ack_for(init: &[u8]) -> Option<Vec<u8>> {
    let parsed = parse(init).ok()?;
    let Chunk::Init(theirs) = parsed.first_chunk else {
        return None;
    };
    if parsed.header.verification_tag != 0 || theirs.initiate_tag == 0 {
        return None;
    }
    let own_tag = nonce::nonzero_u32();
    let ours = InitFields {
        initiate_tag: own_tag,
        a_rwnd: ADVERTISED_RWND,
        outbound_streams: theirs.inbound_streams.min(OUTBOUND_STREAMS),
        inbound_streams: MAX_INBOUND_STREAMS,
        initial_tsn: own_tag,
    };
    // The cookie is never echoed back to us (the responder does not complete
    // associations), so it only has to be present: both tags identify the exchange.
    let mut cookie = [0u8; 8];
    cookie[..4].copy_from_slice(&theirs.initiate_tag.to_be_bytes());
    cookie[4..].copy_from_slice(&own_tag.to_be_bytes());
    let mut state_cookie = Vec::with_capacity(4 + cookie.len());
    state_cookie.extend_from_slice(&PARAM_STATE_COOKIE.to_be_bytes());
    state_cookie.extend_from_slice(&((4 + cookie.len()) as u16).to_be_bytes());
    state_cookie.extend_from_slice(&cookie);

    let mut packet = common_header(
        parsed.header.dst_port,
        parsed.header.src_port,
        theirs.initiate_tag,
    );
    push_init_chunk(&mut packet, CHUNK_INIT_ACK, &ours, &state_cookie);
    Some(seal(packet))
}

fn common_header(src_port: u16, dst_port: u16, verification_tag: u32) -> Vec<u8> {
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&src_port.to_be_bytes());
    packet.extend_from_slice(&dst_port.to_be_bytes());
    packet.extend_from_slice(&verification_tag.to_be_bytes());
    packet.extend_from_slice(&[0; 4]);
    packet
}

fn push_init_chunk(packet: &mut Vec<u8>, chunk_type: u8, fields: &InitFields, params: &[u8]) {
    let len = CHUNK_HEADER_LEN + INIT_FIXED_LEN + params.len();
    packet.push(chunk_type);
    packet.push(0);
    packet.extend_from_slice(&(len as u16).to_be_bytes());
    packet.extend_from_slice(&fields.initiate_tag.to_be_bytes());
    packet.extend_from_slice(&fields.a_rwnd.to_be_bytes());
    packet.extend_from_slice(&fields.outbound_streams.to_be_bytes());
    packet.extend_from_slice(&fields.inbound_streams.to_be_bytes());
    packet.extend_from_slice(&fields.initial_tsn.to_be_bytes());
    packet.extend_from_slice(params);
    // Chunks are padded to 4 bytes; the length field excludes the padding.
    packet.resize(packet.len().next_multiple_of(4), 0);
}

fn seal(mut packet: Vec<u8>) -> Vec<u8> {
    let checksum = packet_checksum(&packet);
    // Linux and Wireshark carry the reflected CRC least significant byte first.
    packet[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&checksum.to_le_bytes());
    packet
}

// === parsing ===

/// Parses an SCTP packet (no IP header) and verifies its checksum.
pub fn parse(bytes: &[u8]) -> Result<SctpPacket, SctpError> {
    if bytes.len() < COMMON_HEADER_LEN + CHUNK_HEADER_LEN {
        return Err(SctpError::Truncated { len: bytes.len() });
    }
    let stored = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let computed = packet_checksum(bytes);
    if stored != computed {
        return Err(SctpError::BadChecksum { stored, computed });
    }
    let header = SctpHeader {
        src_port: u16::from_be_bytes([bytes[0], bytes[1]]),
        dst_port: u16::from_be_bytes([bytes[2], bytes[3]]),
        verification_tag: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        checksum: stored,
    };
    let chunk = &bytes[COMMON_HEADER_LEN..];
    let chunk_type = chunk[0];
    let claimed = usize::from(u16::from_be_bytes([chunk[2], chunk[3]]));
    if claimed < CHUNK_HEADER_LEN || claimed > chunk.len() {
        return Err(SctpError::BadChunkLength {
            chunk_type,
            claimed,
            available: chunk.len(),
        });
    }
    let value = &chunk[CHUNK_HEADER_LEN..claimed];
    let first_chunk = match (chunk_type, init_fields(value)) {
        (CHUNK_INIT, Some(fields)) => Chunk::Init(fields),
        (CHUNK_INIT_ACK, Some(fields)) => Chunk::InitAck(fields),
        _ => Chunk::Other { chunk_type },
    };
    Ok(SctpPacket {
        header,
        first_chunk,
    })
}

fn init_fields(value: &[u8]) -> Option<InitFields> {
    let fixed = value.get(..INIT_FIXED_LEN)?;
    let be32 =
        |at: usize| u32::from_be_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]]);
    let be16 = |at: usize| u16::from_be_bytes([fixed[at], fixed[at + 1]]);
    Some(InitFields {
        initiate_tag: be32(0),
        a_rwnd: be32(4),
        outbound_streams: be16(8),
        inbound_streams: be16(10),
        initial_tsn: be32(12),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3720 appendix B.4, plus the common "123456789" check value.
    #[test]
    fn crc32c_matches_rfc3720_vectors() {
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        let descending: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&descending), 0x113F_DB5C);
        let iscsi_read_pdu = [
            0x01, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14, 0, 0, 0, 0, 0, 0x04, 0, 0,
            0, 0, 0x14, 0, 0, 0, 0x18, 0x28, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(crc32c(&iscsi_read_pdu), 0xD996_3A56);
        // The RFC lists CRC bytes in transmission order, least significant first.
        assert_eq!(
            crc32c(&iscsi_read_pdu).to_le_bytes(),
            [0x56, 0x3a, 0x96, 0xd9]
        );
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn init_round_trips() {
        let packet = init_packet(40000, 80, 0xdead_beef);
        assert_eq!(
            packet.len(),
            COMMON_HEADER_LEN + CHUNK_HEADER_LEN + INIT_FIXED_LEN
        );
        let parsed = parse(&packet).unwrap();
        assert_eq!(parsed.header.src_port, 40000);
        assert_eq!(parsed.header.dst_port, 80);
        assert_eq!(parsed.header.verification_tag, 0);
        assert_eq!(parsed.chunk_type(), CHUNK_INIT);
        let Chunk::Init(fields) = parsed.first_chunk else {
            panic!("not an INIT: {parsed:?}");
        };
        assert_eq!(fields.initiate_tag, 0xdead_beef);
        assert_eq!(fields.outbound_streams, OUTBOUND_STREAMS);
    }

    #[test]
    fn init_ack_answers_init() {
        let init = init_packet(40000, 81, 0x0102_0304);
        let ack = init_ack_for(&init).unwrap();
        assert_eq!(ack.len() % 4, 0);
        let parsed = parse(&ack).unwrap();
        assert_eq!(parsed.header.src_port, 81);
        assert_eq!(parsed.header.dst_port, 40000);
        assert_eq!(parsed.header.verification_tag, 0x0102_0304);
        let Chunk::InitAck(fields) = parsed.first_chunk else {
            panic!("not an INIT-ACK: {parsed:?}");
        };
        assert_ne!(fields.initiate_tag, 0);
        // The state cookie parameter follows the fixed fields.
        let param = &ack[COMMON_HEADER_LEN + CHUNK_HEADER_LEN + INIT_FIXED_LEN..];
        assert_eq!(u16::from_be_bytes([param[0], param[1]]), PARAM_STATE_COOKIE);
        assert_eq!(u16::from_be_bytes([param[2], param[3]]), 12);
    }

    #[test]
    fn init_ack_for_rejects_non_init() {
        let init = init_packet(40000, 81, 7);
        let ack = init_ack_for(&init).unwrap();
        assert!(init_ack_for(&ack).is_none(), "an INIT-ACK is not answered");
        assert!(
            init_ack_for(&init_packet(40000, 81, 0)).is_none(),
            "zero tag"
        );
        assert!(init_ack_for(&init[..10]).is_none());
    }

    #[test]
    fn parse_rejects_corruption() {
        let mut packet = init_packet(1, 2, 3);
        packet[16] ^= 0x01;
        assert!(matches!(parse(&packet), Err(SctpError::BadChecksum { .. })));
        assert!(matches!(
            parse(&packet[..8]),
            Err(SctpError::Truncated { len: 8 })
        ));

        let mut long_chunk = common_header(1, 2, 0);
        long_chunk.extend_from_slice(&[CHUNK_INIT, 0, 0, 200]);
        let long_chunk = seal(long_chunk);
        assert!(matches!(
            parse(&long_chunk),
            Err(SctpError::BadChunkLength {
                claimed: 200,
                available: 4,
                ..
            })
        ));
    }

    #[test]
    fn short_init_is_other_chunk() {
        let mut packet = common_header(1, 2, 0);
        packet.extend_from_slice(&[CHUNK_INIT, 0, 0, 4]);
        let parsed = parse(&seal(packet)).unwrap();
        assert_eq!(
            parsed.first_chunk,
            Chunk::Other {
                chunk_type: CHUNK_INIT
            }
        );
    }
}
