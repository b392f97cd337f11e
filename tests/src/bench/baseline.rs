//! The datapath benchmark's baselines, built with plain `ip` in namespaces of their
//! own (prefix `lbf-`): a flannel-style overlay (Linux bridge per node, kernel VXLAN
//! device with static forwarding entries, as flannel's vxlan backend programs them)
//! and two namespaces joined by one veth pair (the ceiling for any overlay).

use std::net::Ipv4Addr;

use anyhow::Result;
use lumen_lab::config::{node_ip, pod_cidr, underlay_cidr};

use super::netns::Netns;

/// Pod MTU of both overlays: the underlay's 1500 minus VXLAN's 50.
const POD_MTU: &str = "1450";
const VXLAN: &str = "flannel.1";
const BRIDGE: &str = "cni0";

/// Two nodes, one pod each, flannel vxlan style. Torn down on drop.
#[derive(Debug)]
pub struct Flannel {
    pods: [(Netns, Ipv4Addr); 2],
    _nodes: [Netns; 2],
    _underlay: Netns,
}

/// Two namespaces on one veth pair. Torn down on drop.
#[derive(Debug)]
pub struct DirectVeth {
    a: Netns,
    b: Netns,
}

/// The fixed MAC of node `i`'s VXLAN device, so peers can be programmed before it
/// exists (flannel publishes it in the node's annotations instead).
fn vxlan_mac(node: u32) -> String {
    format!("02:fb:00:00:00:{node:02x}")
}

/// The address flannel gives a node's VXLAN device: the network address of its
/// pod subnet, used as the next hop other nodes route through.
fn vxlan_addr(node: u32) -> Ipv4Addr {
    pod_cidr(node).addr()
}

// === impl Flannel ===

impl Flannel {
    pub fn up() -> Result<Self> {
        let underlay = Netns::add("lbf-underlay")?;
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        let node1 = node(&underlay, 1)?;
        let node2 = node(&underlay, 2)?;
        let pod1 = pod(&node1, 1)?;
        let pod2 = pod(&node2, 2)?;
        peer(&node1, 2)?;
        peer(&node2, 1)?;
        Ok(Self {
            pods: [pod1, pod2],
            _nodes: [node1, node2],
            _underlay: underlay,
        })
    }

    /// Both pods (on node 1, then node 2): namespace and address.
    pub fn pods(&self) -> [(&str, Ipv4Addr); 2] {
        self.pods.each_ref().map(|(ns, ip)| (ns.name(), *ip))
    }
}

/// Node `i`: underlay link, a VXLAN device without learning, and the `cni0` bridge
/// as the pods' gateway.
fn node(underlay: &Netns, i: u32) -> Result<Netns> {
    let ns = Netns::add(&format!("lbf-node-{i}"))?;
    let peer = format!("n{i}");
    underlay.veth(&peer, "eth0", Some(&ns), None)?;
    underlay.ip(&["link", "set", &peer, "master", "br0", "up"])?;
    let ip = node_ip(i).to_string();
    let addr = format!("{ip}/{}", underlay_cidr().prefix());
    ns.ip(&["addr", "add", &addr, "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.sysctl("net.ipv4.ip_forward=1")?;
    ns.ip(&[
        "link",
        "add",
        VXLAN,
        "address",
        &vxlan_mac(i),
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &ip,
        "dev",
        "eth0",
        "dstport",
        "4789",
        "nolearning",
    ])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{}/32", vxlan_addr(i)),
        "dev",
        VXLAN,
    ])?;
    ns.ip(&["link", "set", VXLAN, "up"])?;
    let cidr = pod_cidr(i);
    let gateway = format!("{}/{}", gateway(i), cidr.prefix());
    ns.ip(&["link", "add", BRIDGE, "mtu", POD_MTU, "type", "bridge"])?;
    ns.ip(&["addr", "add", &gateway, "dev", BRIDGE])?;
    ns.ip(&["link", "set", BRIDGE, "up"])?;
    Ok(ns)
}

fn gateway(node: u32) -> Ipv4Addr {
    let [a, b, c, _] = pod_cidr(node).addr().octets();
    Ipv4Addr::new(a, b, c, 1)
}

/// The pod on node `i`: a veth into `cni0`, address `.2`, default via the bridge.
fn pod(node: &Netns, i: u32) -> Result<(Netns, Ipv4Addr)> {
    let ns = Netns::add(&format!("lbf-pod-{i}"))?;
    let host = format!("veth{i}");
    node.veth(&host, "eth0", Some(&ns), Some(POD_MTU))?;
    node.ip(&["link", "set", &host, "master", BRIDGE, "up"])?;
    let [a, b, c, _] = pod_cidr(i).addr().octets();
    let ip = Ipv4Addr::new(a, b, c, 2);
    let prefix = pod_cidr(i).prefix();
    ns.ip(&["addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "default", "via", &gateway(i).to_string()])?;
    Ok((ns, ip))
}

/// What flannel's vxlan backend writes on `node` for peer node `other`: a route to
/// its pod subnet via its VXLAN address (onlink), a permanent neighbour entry for
/// that address with the peer's VXLAN MAC, and an fdb entry sending that MAC to the
/// peer's underlay address.
fn peer(node: &Netns, other: u32) -> Result<()> {
    let next_hop = vxlan_addr(other).to_string();
    let mac = vxlan_mac(other);
    node.ip(&[
        "route",
        "add",
        &pod_cidr(other).to_string(),
        "via",
        &next_hop,
        "dev",
        VXLAN,
        "onlink",
    ])?;
    node.ip(&[
        "neigh",
        "add",
        &next_hop,
        "lladdr",
        &mac,
        "dev",
        VXLAN,
        "nud",
        "permanent",
    ])?;
    node.bridge(&[
        "fdb",
        "append",
        &mac,
        "dev",
        VXLAN,
        "dst",
        &node_ip(other).to_string(),
        "self",
        "permanent",
    ])
}

// === impl DirectVeth ===

impl DirectVeth {
    pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

    pub fn up() -> Result<Self> {
        let a = Netns::add("lbf-direct-a")?;
        let b = Netns::add("lbf-direct-b")?;
        a.veth("eth0", "eth0", Some(&b), None)?;
        for (ns, ip) in [(&a, Self::A_IP), (&b, Self::B_IP)] {
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
        }
        Ok(Self { a, b })
    }

    pub fn a(&self) -> &str {
        self.a.name()
    }

    pub fn b(&self) -> &str {
        self.b.name()
    }
}
