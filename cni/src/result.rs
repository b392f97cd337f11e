//! The CNI result format: rendering an agent [`Attachment`] in the shape of the
//! requested spec version, and reading back a `prevResult` for CHECK.

use lumen_api::cni::Attachment;
use serde_json::{Value, json};

use crate::version::CniVersion;

/// Index of the pod's interface in `interfaces` (the host veth is 0).
const POD_INTERFACE: usize = 1;

/// The ADD result: the host veth and the pod's interface, one /32 address on
/// the pod's interface and a default route through the link-local gateway.
///
/// 0.4.0 tags each address with `"version": "4"`; 1.0.0 dropped the tag; 1.1.0
/// added the interface `mtu`, which we report on the pod's interface.
pub fn render(version: CniVersion, attachment: &Attachment) -> Value {
    let gateway = attachment.gateway.to_string();
    let mut pod = json!({
        "name": attachment.ifname,
        "mac": attachment.mac,
        "sandbox": attachment.sandbox,
    });
    let mut ip = json!({
        "address": format!("{}/32", attachment.ip),
        "gateway": gateway,
        "interface": POD_INTERFACE,
    });
    match version {
        CniVersion::V0_4_0 => ip["version"] = json!("4"),
        CniVersion::V1_0_0 => {}
        CniVersion::V1_1_0 => pod["mtu"] = json!(attachment.mtu),
    }
    json!({
        "cniVersion": version.as_str(),
        "interfaces": [
            {"name": attachment.host_ifname, "mac": attachment.host_mac},
            pod,
        ],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": gateway}],
        "dns": {},
    })
}

/// Whether a `prevResult` lists the pod interface `ifname` in namespace
/// `netns`, i.e. describes the attachment CHECK is asked about.
pub fn describes(prev_result: &Value, ifname: &str, netns: &str) -> bool {
    prev_result
        .get("interfaces")
        .and_then(Value::as_array)
        .is_some_and(|interfaces| {
            interfaces.iter().any(|i| {
                i.get("name").and_then(Value::as_str) == Some(ifname)
                    && i.get("sandbox").and_then(Value::as_str) == Some(netns)
            })
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    pub(crate) fn attachment() -> Attachment {
        Attachment {
            ifname: "eth0".into(),
            mac: "02:00:0a:f4:00:05".into(),
            sandbox: "/var/run/netns/pod".into(),
            host_ifname: "lxc1a2b3c".into(),
            host_mac: "02:00:00:00:00:01".into(),
            ip: Ipv4Addr::new(10, 244, 0, 5),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            mtu: 1450,
        }
    }

    fn expected(version: &str, ip: Value, pod: Value) -> Value {
        json!({
            "cniVersion": version,
            "interfaces": [{"name": "lxc1a2b3c", "mac": "02:00:00:00:00:01"}, pod],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {},
        })
    }

    #[test]
    fn renders_each_version() {
        let pod =
            json!({"name": "eth0", "mac": "02:00:0a:f4:00:05", "sandbox": "/var/run/netns/pod"});
        let ip = json!({"address": "10.244.0.5/32", "gateway": "169.254.1.1", "interface": 1});

        let mut ip_v4 = ip.clone();
        ip_v4["version"] = json!("4");
        assert_eq!(
            render(CniVersion::V0_4_0, &attachment()),
            expected("0.4.0", ip_v4, pod.clone())
        );

        assert_eq!(
            render(CniVersion::V1_0_0, &attachment()),
            expected("1.0.0", ip.clone(), pod.clone())
        );

        let mut pod_mtu = pod;
        pod_mtu["mtu"] = json!(1450);
        assert_eq!(
            render(CniVersion::V1_1_0, &attachment()),
            expected("1.1.0", ip, pod_mtu)
        );
    }

    #[test]
    fn a_rendered_result_describes_its_attachment() {
        for version in CniVersion::SUPPORTED {
            let result = render(version, &attachment());
            assert!(describes(&result, "eth0", "/var/run/netns/pod"));
            assert!(!describes(&result, "eth1", "/var/run/netns/pod"));
            assert!(!describes(&result, "eth0", "/var/run/netns/other"));
        }
        assert!(!describes(&json!({}), "eth0", "/var/run/netns/pod"));
    }
}
