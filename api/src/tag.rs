//! The flow tag: what every overlay packet carries in its VXLAN header.
//!
//! The 24-bit VNI is the tag: bit 23 is the trace bit, bits 0–22 the source
//! endpoint's identity. The receiving node reads the sender's identity straight from
//! the header, without a lookup, and a traced packet stays traced across nodes.
//! `agent/bpf/maps.h` encodes the same layout (`TAG_TRACE`, `TAG_IDENTITY_MASK`).

use serde::{Deserialize, Serialize};

use crate::Identity;

/// A decoded VXLAN tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub identity: Identity,
    pub trace: bool,
}

impl Tag {
    /// The trace bit inside the VNI.
    pub const TRACE_BIT: u32 = 1 << 23;
    /// The identity bits inside the VNI.
    pub const IDENTITY_MASK: u32 = Self::TRACE_BIT - 1;

    /// Decode a 24-bit VNI as seen on the wire (e.g. tshark's `vxlan.vni`).
    pub fn from_vni(vni: u32) -> Self {
        Self {
            identity: Identity(vni & Self::IDENTITY_MASK),
            trace: vni & Self::TRACE_BIT != 0,
        }
    }

    /// The VNI that carries this tag.
    pub fn vni(&self) -> u32 {
        (self.identity.0 & Self::IDENTITY_MASK) | if self.trace { Self::TRACE_BIT } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for (identity, trace) in [(0, false), (256, false), (300, true), (0x7f_ffff, true)] {
            let tag = Tag {
                identity: Identity(identity),
                trace,
            };
            assert_eq!(Tag::from_vni(tag.vni()), tag);
        }
        assert_eq!(Tag::from_vni(0x80_0101).identity, Identity(257));
        assert!(Tag::from_vni(0x80_0101).trace);
    }
}
