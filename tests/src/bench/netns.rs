//! Network namespaces a benchmark makes for itself (baselines, the reference CNI
//! node, the BPF test-run namespace): created with `ip`, deleted on drop, so a failed
//! or panicking run leaves nothing behind.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;
use lumen_agent::datapath::Uplink;
use lumen_lab::{config, topology};

/// A named network namespace that lives as long as this value.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME` with `lo` up. A namespace of the same name left by a run
    /// that was killed is deleted first.
    pub fn add(name: &str) -> Result<Self> {
        if topology::list_netns()?.iter().any(|ns| ns == name) {
            topology::del_netns(name)?;
        }
        topology::add_netns(name)?;
        Ok(Self {
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path a runtime (or `setns`) uses.
    pub fn path(&self) -> PathBuf {
        config::netns_path(&self.name)
    }

    /// `ip -n NAME ARGS…`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        Ok(topology::ip(&all)?)
    }

    /// A veth pair `name` here, `peer` in `peer_ns` (this namespace when `None`),
    /// both ends with `mtu` when given.
    pub fn veth(
        &self,
        name: &str,
        peer: &str,
        peer_ns: Option<&Netns>,
        mtu: Option<&str>,
    ) -> Result<()> {
        let mut args = vec!["link", "add", name];
        args.extend(mtu.map(|m| ["mtu", m]).into_iter().flatten());
        args.extend(["type", "veth", "peer", "name", peer]);
        args.extend(mtu.map(|m| ["mtu", m]).into_iter().flatten());
        args.extend(peer_ns.map(|ns| ["netns", ns.name()]).into_iter().flatten());
        self.ip(&args)
    }

    /// `bridge -n NAME ARGS…` (the VXLAN forwarding database).
    pub fn bridge(&self, args: &[&str]) -> Result<()> {
        topology::run(Command::new("bridge").args(["-n", &self.name]).args(args))?;
        Ok(())
    }

    /// Set a sysctl inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, setting: &str) -> Result<()> {
        topology::run(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(["sysctl", "-q", "-w", setting]),
        )?;
        Ok(())
    }

    /// The index of interface `ifname` in this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        self.link_field(ifname, "ifindex")?
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| anyhow::anyhow!("ifindex of {ifname} in {} is no index", self.name))
    }

    /// One field of `ip -j link show dev IFNAME`.
    fn link_field(&self, ifname: &str, field: &str) -> Result<serde_json::Value> {
        let out = topology::run(
            Command::new("ip").args(["-n", &self.name, "-j", "link", "show", "dev", ifname]),
        )?;
        let links: serde_json::Value = serde_json::from_str(&out)?;
        links
            .pointer(&format!("/0/{field}"))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no {field} for {ifname} in {}: {out}", self.name))
    }

    /// Interface `ifname` as the datapath's uplink: its index and MTU.
    pub fn link<'a>(&self, ifname: &'a str) -> Result<Uplink<'a>> {
        let mtu = self.link_field(ifname, "mtu")?;
        Ok(Uplink {
            name: ifname,
            index: self.ifindex(ifname)?,
            mtu: mtu
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| anyhow::anyhow!("mtu of {ifname} in {} is no MTU", self.name))?,
        })
    }

    /// A node's uplink as the datapath's encapsulation needs it: veth `name`
    /// (peer `peer`, both up) with `addr` (CIDR notation), and IPv4 forwarding
    /// on as the agent sets it.
    pub fn uplink<'a>(&self, name: &'a str, peer: &str, addr: &str) -> Result<Uplink<'a>> {
        self.veth(name, peer, None, None)?;
        self.ip(&["addr", "add", addr, "dev", name])?;
        self.ip(&["link", "set", name, "up"])?;
        self.ip(&["link", "set", peer, "up"])?;
        self.sysctl("net.ipv4.ip_forward=1")?;
        self.link(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = topology::del_netns(&self.name) {
            // Drop cannot return the error; say it where the bench output shows it.
            eprintln!(
                "lumen-bench: deleting namespace {} failed: {err}",
                self.name
            );
        }
    }
}
