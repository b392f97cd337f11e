//! The overlay toward other nodes: for every remote node with a pod CIDR, a
//! datapath entry for BPF forwarding (`Datapath::set_remote`) and a route through
//! the VXLAN device (so host-stack traffic, e.g. after kube-proxy DNAT, reaches
//! `to_overlay` and gets a key too). Each remote node's own address gets a
//! datapath entry but no route: pod replies to a node go back through the tunnel
//! they came from (never masqueraded), while the host stack keeps reaching the
//! node over the underlay.

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

/// Where a remote prefix goes, and whether the host stack routes it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    pub node_ip: Ipv4Addr,
    pub routed: bool,
}

/// The remote prefixes wanted by a cluster state: every other node's pod CIDR
/// (routed) and its address (BPF only).
pub fn wanted(state: &ClusterState, me: &str) -> BTreeMap<Ipv4Cidr, Remote> {
    let mut want = BTreeMap::new();
    for node in state.nodes.values().filter(|n| n.name != me) {
        let (Some(cidr), Some(node_ip)) = (node.pod_cidr, node.internal_ip) else {
            continue;
        };
        want.insert(
            cidr,
            Remote {
                node_ip,
                routed: true,
            },
        );
        if let Ok(host) = Ipv4Cidr::new(node_ip, 32) {
            want.insert(
                host,
                Remote {
                    node_ip,
                    routed: false,
                },
            );
        }
    }
    want
}

/// Keeps the installed remote CIDRs equal to the wanted ones.
#[derive(Debug)]
pub struct Overlay {
    netlink: Netlink,
    vxlan_index: u32,
    installed: BTreeMap<Ipv4Cidr, Remote>,
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
    pub async fn reconcile(
        &mut self,
        datapath: &Arc<Mutex<Datapath>>,
        want: BTreeMap<Ipv4Cidr, Remote>,
    ) {
        let stale: Vec<(Ipv4Cidr, Remote)> = self
            .installed
            .iter()
            .filter(|(c, r)| want.get(c) != Some(r))
            .map(|(c, r)| (*c, *r))
            .collect();
        for (cidr, old) in stale {
            if let Ok(mut dp) = datapath.lock() {
                dp.remove_remote(cidr);
            }
            if old.routed
                && let Err(error) = self.netlink.delete_route(cidr, self.vxlan_index).await
            {
                tracing::warn!(%cidr, %error, "removing overlay route failed");
            }
            self.installed.remove(&cidr);
            tracing::info!(%cidr, "remote pod cidr removed");
        }
        for (cidr, remote) in want {
            if self.installed.get(&cidr) == Some(&remote) {
                continue;
            }
            let node_ip = remote.node_ip;
            let set = datapath
                .lock()
                .map_err(|_| "datapath lock poisoned".to_owned())
                .and_then(|mut dp| dp.set_remote(cidr, node_ip).map_err(|e| e.to_string()));
            if let Err(error) = set {
                tracing::warn!(%cidr, %error, "programming remote cidr failed");
                continue;
            }
            if remote.routed {
                let gw = cidr.addr();
                let routed = async {
                    self.netlink
                        .neighbour(self.vxlan_index, gw, GATEWAY_MAC)
                        .await?;
                    self.netlink.route_via(cidr, gw, self.vxlan_index).await
                };
                if let Err(error) = routed.await {
                    tracing::warn!(%cidr, %error, "overlay route failed");
                    continue;
                }
            }
            tracing::info!(%cidr, %node_ip, routed = remote.routed, "remote prefix installed");
            self.installed.insert(cidr, remote);
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
        let node_ip = Ipv4Addr::new(192, 0, 2, 12);
        assert_eq!(want.len(), 2, "{want:?}");
        assert_eq!(
            want[&"10.244.2.0/24".parse().unwrap()],
            Remote {
                node_ip,
                routed: true
            }
        );
        assert_eq!(
            want[&"192.0.2.12/32".parse().unwrap()],
            Remote {
                node_ip,
                routed: false
            }
        );
    }
}
