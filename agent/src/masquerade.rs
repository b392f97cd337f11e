//! Masquerade of pod traffic leaving the cluster, as nftables rules inside the
//! node's own namespace (never the root namespace's firewall), and no
//! connection tracking for the overlay's own UDP packets.
//!
//! Masquerading turns connection tracking on in the node's namespace; without
//! the `notrack` rules every encapsulated packet, sent or received, would be
//! looked up and kept in the conntrack table for nothing (the datapath tracks
//! the inner flows itself).

use std::io::Write;
use std::process::{Command, Stdio};

use lumen_api::Ipv4Cidr;

/// Why installing the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    #[error("running nft failed (is the nftables package installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the ruleset: {stderr}")]
    Refused { stderr: String },
}

/// The ruleset: pod sources going outside the cluster leave with the node's
/// address; traffic to the overlay is never touched, and the tunnel's packets
/// (UDP to `vxlan_port`) are not tracked.
pub fn ruleset(cluster: Ipv4Cidr, overlay_iface: &str, vxlan_port: u16) -> String {
    format!(
        "table ip lumen {{}}\n\
         delete table ip lumen\n\
         table ip lumen {{\n\
         \tchain tunnel_in {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tudp dport {vxlan_port} notrack\n\
         \t}}\n\
         \tchain tunnel_out {{\n\
         \t\ttype filter hook output priority raw; policy accept;\n\
         \t\tudp dport {vxlan_port} notrack\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cluster} ip daddr != {cluster} oifname != \"{overlay_iface}\" counter masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// Replace the `ip lumen` table atomically (one `nft -f` transaction).
pub fn install(
    cluster: Ipv4Cidr,
    overlay_iface: &str,
    vxlan_port: u16,
) -> Result<(), MasqueradeError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(MasqueradeError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset(cluster, overlay_iface, vxlan_port).as_bytes())
            .map_err(MasqueradeError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(MasqueradeError::Spawn)?;
    if !out.status.success() {
        return Err(MasqueradeError::Refused {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_only_cluster_sources_leaving_the_cluster() {
        let rules = ruleset("10.244.0.0/16".parse().unwrap(), "lumen_vxlan", 4789);
        assert_eq!(rules.matches("udp dport 4789 notrack").count(), 2);
        assert!(rules.contains(
            "ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 oifname != \"lumen_vxlan\" counter masquerade"
        ));
        assert!(rules.starts_with("table ip lumen {}\ndelete table ip lumen\n"));
    }
}
