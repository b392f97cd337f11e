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
}

// SAFETY: plain `repr(C)` integers and byte arrays, no padding (checked by the
// layout test), so any bit pattern is valid and the bytes can be copied to the kernel.
unsafe impl aya::Pod for EndpointValue {}
// SAFETY: as above.
unsafe impl aya::Pod for RemoteNode {}
// SAFETY: as above.
unsafe impl aya::Pod for DpConfig {}

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
];

/// Map and program names, as in the C sources.
pub mod names {
    pub const ENDPOINTS: &str = "endpoints";
    pub const REMOTE_CIDRS: &str = "remote_cidrs";
    pub const CONFIG: &str = "config";
    pub const COUNTERS: &str = "counters";
    pub const FROM_POD: &str = "from_pod";
    pub const TO_POD: &str = "to_pod";
    pub const FROM_OVERLAY: &str = "from_overlay";
    pub const TO_OVERLAY: &str = "to_overlay";
    pub const NOOP: &str = "noop";
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

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
        ];
        assert_eq!(rust.to_vec(), C_SIZES.to_vec());
    }

    #[test]
    fn constants_match_maps_h() {
        let consts: std::collections::HashMap<_, _> = C_CONSTS.iter().copied().collect();
        assert_eq!(consts["TAG_TRACE"], u64::from(lumen_api::Tag::TRACE_BIT));
        assert_eq!(consts["CNT_MAX"], COUNTERS.len() as u64);
    }
}
