//! The overlay toward other nodes: for every remote node with a pod CIDR, an LPM
//! entry for BPF forwarding and a route through the VXLAN device (so host-stack
//! traffic, e.g. after kube-proxy DNAT, reaches `to_overlay` and gets a key too).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use lumen_api::Ipv4Cidr;

use crate::cluster::ClusterState;
use crate::datapath::Datapath;
use crate::netlink::Netlink;

/// The MAC the host stack puts on packets routed into the overlay; `from_overlay`
/// on the receiving node rewrites it, so any fixed unicast address works.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x4c, 0x55, 0x4d, 0x45, 0x4e];

/// The remote CIDRs wanted by a cluster state: every other node's pod CIDR.
pub fn wanted(state: &ClusterState, me: &str) -> BTreeMap<Ipv4Cidr, Ipv4Addr> {
    state
        .nodes
        .values()
        .filter(|n| n.name != me)
        .filter_map(|n| Some((n.pod_cidr?, n.internal_ip?)))
        .collect()
}

/// Keeps the installed remote CIDRs equal to the wanted ones.
#[derive(Debug)]
pub struct Overlay {
    netlink: Netlink,
    vxlan_index: u32,
    installed: BTreeMap<Ipv4Cidr, Ipv4Addr>,
}

impl Overlay {
    pub fn new(netlink: Netlink, vxlan_index: u32) -> Self {
        Self {
            netlink,
            vxlan_index,
            installed: BTreeMap::new(),
        }
    }

    /// Apply the difference; errors are logged and retried on the next change.
    pub async fn reconcile(&mut self, datapath: &Arc<Mutex<Datapath>>, want: BTreeMap<Ipv4Cidr, Ipv4Addr>) {
        let stale: Vec<Ipv4Cidr> = self
            .installed
            .keys()
            .filter(|c| !want.contains_key(c))
            .copied()
            .collect();
        for cidr in stale {
            if let Ok(mut dp) = datapath.lock() {
                dp.remove_remote(cidr);
            }
            if let Err(error) = self.netlink.delete_route(cidr, self.vxlan_index).await {
                tracing::warn!(%cidr, %error, "removing overlay route failed");
            }
            self.installed.remove(&cidr);
            tracing::info!(%cidr, "remote pod cidr removed");
        }
        for (cidr, node_ip) in want {
            if self.installed.get(&cidr) == Some(&node_ip) {
                continue;
            }
            let set = datapath
                .lock()
                .map_err(|_| "datapath lock poisoned".to_owned())
                .and_then(|mut dp| dp.set_remote(cidr, node_ip).map_err(|e| e.to_string()));
            if let Err(error) = set {
                tracing::warn!(%cidr, %error, "programming remote cidr failed");
                continue;
            }
            let gw = cidr.addr();
            let routed = async {
                self.netlink.neighbour(self.vxlan_index, gw, GATEWAY_MAC).await?;
                self.netlink.route_via(cidr, gw, self.vxlan_index).await
            };
            if let Err(error) = routed.await {
                tracing::warn!(%cidr, %error, "overlay route failed");
                continue;
            }
            tracing::info!(%cidr, %node_ip, "remote pod cidr installed");
            self.installed.insert(cidr, node_ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeInfo;

    #[test]
    fn wants_every_other_node_with_cidr_and_ip() {
        let mut state = ClusterState::default();
        for (name, cidr, ip) in [
            ("node-1", Some("10.244.1.0/24"), Some("192.0.2.11")),
            ("node-2", Some("10.244.2.0/24"), Some("192.0.2.12")),
            ("node-3", None, Some("192.0.2.13")),
            ("node-4", Some("10.244.4.0/24"), None),
        ] {
            state.nodes.insert(
                name.to_owned(),
                NodeInfo {
                    name: name.to_owned(),
                    pod_cidr: cidr.map(|c| c.parse().unwrap()),
                    internal_ip: ip.map(|i| i.parse().unwrap()),
                },
            );
        }
        let want = wanted(&state, "node-1");
        assert_eq!(want.len(), 1);
        assert_eq!(
            want[&"10.244.2.0/24".parse().unwrap()],
            Ipv4Addr::new(192, 0, 2, 12)
        );
    }
}
