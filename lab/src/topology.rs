//! The lab's network plumbing: namespaces, veths, the underlay bridge, addresses
//! and routes, all made with iproute2 (`ip`) run as child processes and always
//! inside the lab's own namespaces — never in the root namespace.

use std::path::Path;
use std::process::Command;

use crate::LabError;
use crate::config::{self, EXTERNAL_PREFIX};
use crate::state::{External, Node, Pod, Underlay};

/// Run `ip ARGS…`, failing with its stderr when it fails.
pub fn ip(args: &[&str]) -> Result<(), LabError> {
    run(Command::new("ip").args(args)).map(drop)
}

/// Run `ip -n NETNS ARGS…`.
fn ip_in(netns: &str, args: &[&str]) -> Result<(), LabError> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Run a command to completion, returning its stdout; a non-zero exit is an error
/// that names the command and carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String, LabError> {
    let command = describe(cmd);
    let out = cmd.output().map_err(|source| LabError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command line for error messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ip netns add NAME` and bring its loopback up.
pub fn add_netns(netns: &str) -> Result<(), LabError> {
    ip(&["netns", "add", netns])?;
    ip_in(netns, &["link", "set", "lo", "up"])
}

/// The named namespaces on this machine (what `ip netns list` shows).
pub fn list_netns() -> Result<Vec<String>, LabError> {
    let dir = Path::new("/run/netns");
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabError::Io {
                action: "list",
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// The pids of processes whose network namespace is `netns`.
pub fn netns_pids(netns: &str) -> Result<Vec<u32>, LabError> {
    let out = run(Command::new("ip").args(["netns", "pids", netns]))?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// `ip netns del NAME`.
pub fn del_netns(netns: &str) -> Result<(), LabError> {
    ip(&["netns", "del", netns])
}

/// The underlay: a bridge with the gateway address, forwarding on, no default route.
pub fn create_underlay(underlay: &Underlay) -> Result<(), LabError> {
    let ns = underlay.netns.as_str();
    let br = underlay.bridge.as_str();
    let addr = format!("{}/{}", underlay.gateway, underlay.cidr.prefix());
    add_netns(ns)?;
    ip_in(ns, &["link", "add", br, "type", "bridge"])?;
    ip_in(ns, &["addr", "add", &addr, "dev", br])?;
    ip_in(ns, &["link", "set", br, "up"])?;
    run(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
    ]))
    .map(drop)
}

/// The external host: its own namespace, linked to the underlay on a separate
/// subnet so reaching it needs routing through the underlay.
pub fn create_external(underlay: &Underlay, external: &External) -> Result<(), LabError> {
    let ns = external.netns.as_str();
    let peer = "ext";
    add_netns(ns)?;
    veth_into(&underlay.netns, peer, ns)?;
    let gw = format!("{}/{EXTERNAL_PREFIX}", external.gateway);
    ip_in(&underlay.netns, &["addr", "add", &gw, "dev", peer])?;
    ip_in(&underlay.netns, &["link", "set", peer, "up"])?;
    let addr = format!("{}/{EXTERNAL_PREFIX}", external.ip);
    ip_in(ns, &["addr", "add", &addr, "dev", "eth0"])?;
    ip_in(ns, &["link", "set", "eth0", "up"])?;
    ip_in(
        ns,
        &[
            "route",
            "add",
            "default",
            "via",
            &external.gateway.to_string(),
        ],
    )
}

/// A node: its namespace with `eth0` plugged into the underlay bridge.
pub fn create_node(underlay: &Underlay, node: &Node) -> Result<(), LabError> {
    let ns = node.netns.as_str();
    let peer = config::node_peer_ifname(node.index);
    add_netns(ns)?;
    ipv4_only(ns)?;
    veth_into(&underlay.netns, &peer, ns)?;
    ip_in(
        &underlay.netns,
        &["link", "set", &peer, "master", &underlay.bridge],
    )?;
    ip_in(&underlay.netns, &["link", "set", &peer, "up"])?;
    let addr = format!("{}/{}", node.underlay_ip, underlay.cidr.prefix());
    ip_in(ns, &["addr", "add", &addr, "dev", "eth0"])?;
    ip_in(ns, &["link", "set", "eth0", "up"])?;
    ip_in(
        ns,
        &[
            "route",
            "add",
            "default",
            "via",
            &underlay.gateway.to_string(),
        ],
    )
}

/// Routes in the underlay to every node's pod CIDR through that node, so hosts
/// outside the cluster (the external host) reach pods directly, as on a
/// network that routes the pod CIDRs.
pub fn route_pod_cidrs(underlay: &Underlay, nodes: &[Node]) -> Result<(), LabError> {
    for node in nodes {
        let cidr = node.pod_cidr.to_string();
        let via = node.underlay_ip.to_string();
        ip_in(&underlay.netns, &["route", "replace", &cidr, "via", &via])?;
    }
    Ok(())
}

/// A pod's empty namespace, as a runtime creates it before calling CNI.
pub fn create_pod(pod: &Pod) -> Result<(), LabError> {
    add_netns(&pod.netns)?;
    ipv4_only(&pod.netns)
}

/// Lumen's lab is IPv4: no IPv6 router solicitations or MLD reports from pods or
/// the host ends of their veths (made later, so they inherit `default`), and a
/// pod's interface counters hold exactly the traffic it was given.
fn ipv4_only(netns: &str) -> Result<(), LabError> {
    run(Command::new("ip").args([
        "netns",
        "exec",
        netns,
        "sysctl",
        "-q",
        "-w",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ]))
    .map(drop)
}

/// A veth pair made inside `from_netns` (end `name`) whose other end becomes
/// `eth0` in `to_netns`.
fn veth_into(from_netns: &str, name: &str, to_netns: &str) -> Result<(), LabError> {
    ip_in(
        from_netns,
        &[
            "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", to_netns,
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_errors_carry_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("oops"), "{text}");
        assert!(matches!(err, LabError::Command { .. }));
        let err = run(&mut Command::new("/nonexistent/lumen-tool")).unwrap_err();
        assert!(matches!(err, LabError::Spawn { .. }), "{err}");
        assert_eq!(run(Command::new("echo").arg("hi")).unwrap(), "hi\n");
    }
}
