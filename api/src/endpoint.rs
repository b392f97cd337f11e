//! Endpoints (pods attached to a node) and their numeric identities.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::Ipv4Cidr;

/// A cluster-wide numeric identity of a traffic source, carried in the flow tag.
///
/// 0 is unknown, 1 the node's host stack, 2 the world outside the cluster; pods get
/// `POD_BASE + offset of their IP in the cluster CIDR`, so every node derives the
/// same identity for a pod without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Identity(pub u32);

impl Identity {
    pub const UNKNOWN: Self = Self(0);
    pub const HOST: Self = Self(1);
    pub const WORLD: Self = Self(2);
    /// First identity handed to pods; below it are reserved identities.
    pub const POD_BASE: u32 = 256;

    /// The identity of the pod with address `ip`, if `ip` is inside `cluster` and
    /// the identity fits in the tag.
    pub fn for_pod(cluster: Ipv4Cidr, ip: Ipv4Addr) -> Option<Self> {
        let id = Self::POD_BASE.checked_add(cluster.offset_of(ip)?)?;
        (id <= crate::Tag::IDENTITY_MASK).then_some(Self(id))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A pod interface attached to this node, as the datapath knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub container_id: String,
    pub ifname: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub ip: Ipv4Addr,
    pub identity: Identity,
    /// Host-side veth name and index.
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// MAC address of the pod's interface.
    pub mac: String,
    pub netns: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_identity_is_offset_in_cluster() {
        let cluster: Ipv4Cidr = "10.244.0.0/16".parse().unwrap();
        assert_eq!(
            Identity::for_pod(cluster, Ipv4Addr::new(10, 244, 1, 2)),
            Some(Identity(256 + 258))
        );
        assert_eq!(
            Identity::for_pod(cluster, Ipv4Addr::new(10, 245, 0, 1)),
            None
        );
        let huge: Ipv4Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            Identity::for_pod(huge, Ipv4Addr::new(10, 255, 255, 255)),
            None
        );
    }
}
