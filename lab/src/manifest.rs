//! The cluster state the agents watch: Kubernetes objects (Namespace, Node, Pod)
//! rendered as YAML, one object per file, written atomically.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::LabError;
use crate::state::{Node, Pod, write_atomic};

/// One Kubernetes object and the file it lives in.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub file_name: String,
    pub object: Value,
}

impl Manifest {
    /// The object as YAML.
    pub fn to_yaml(&self, dir: &Path) -> Result<String, LabError> {
        serde_yaml::to_string(&self.object).map_err(|source| LabError::Manifest {
            path: dir.join(&self.file_name),
            source,
        })
    }

    /// Write the object into `dir`, replacing any previous version atomically.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, LabError> {
        let yaml = self.to_yaml(dir)?;
        let path = dir.join(&self.file_name);
        write_atomic(&path, yaml.as_bytes())?;
        Ok(path)
    }
}

/// A Namespace with the label Kubernetes puts on every namespace.
pub fn namespace(name: &str) -> Manifest {
    Manifest {
        file_name: format!("namespace-{name}.yaml"),
        object: json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": { "kubernetes.io/metadata.name": name },
            },
        }),
    }
}

/// A Node with its pod CIDR and underlay address, as the agents read them.
pub fn node(node: &Node) -> Manifest {
    let cidr = node.pod_cidr.to_string();
    Manifest {
        file_name: format!("node-{}.yaml", node.name),
        object: json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "labels": {
                    "kubernetes.io/hostname": node.name,
                    "kubernetes.io/os": "linux",
                },
            },
            "spec": { "podCIDR": cidr, "podCIDRs": [cidr] },
            "status": {
                "addresses": [
                    { "type": "InternalIP", "address": node.underlay_ip.to_string() },
                    { "type": "Hostname", "address": node.name },
                ],
            },
        }),
    }
}

/// A Pod scheduled on `node`; Running with its IP once CNI ADD gave it one.
pub fn pod(pod: &Pod, node: &Node) -> Manifest {
    let status = match pod.ip {
        Some(ip) => json!({
            "phase": "Running",
            "hostIP": node.underlay_ip.to_string(),
            "podIP": ip.to_string(),
            "podIPs": [{ "ip": ip.to_string() }],
        }),
        None => json!({ "phase": "Pending" }),
    };
    Manifest {
        file_name: format!("pod-{}-{}.yaml", pod.namespace, pod.name),
        object: json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "labels": { "app": pod.name, "lab-node": node.name },
            },
            "spec": {
                "nodeName": node.name,
                "containers": [{
                    "name": "echo",
                    "image": "lumen-lab/echo",
                    "ports": [
                        { "name": "http", "containerPort": 80, "protocol": "TCP" },
                        { "name": "http-alt", "containerPort": 81, "protocol": "TCP" },
                        { "containerPort": 80, "protocol": "UDP" },
                        { "containerPort": 81, "protocol": "UDP" },
                    ],
                }],
            },
            "status": status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::state::LabState;
    use crate::state::tests::{TempDir, config};

    fn parse(m: &Manifest) -> serde_yaml::Value {
        serde_yaml::from_str(&m.to_yaml(Path::new("/x")).unwrap()).unwrap()
    }

    #[test]
    fn namespace_has_metadata_label() {
        let m = namespace("default");
        assert_eq!(m.file_name, "namespace-default.yaml");
        let y = parse(&m);
        assert_eq!(y["kind"].as_str(), Some("Namespace"));
        assert_eq!(
            y["metadata"]["labels"]["kubernetes.io/metadata.name"].as_str(),
            Some("default")
        );
    }

    #[test]
    fn node_has_cidr_and_internal_ip() {
        let state = LabState::plan(&config(Path::new("/r")));
        let m = node(&state.nodes[0]);
        assert_eq!(m.file_name, "node-node-1.yaml");
        let y = parse(&m);
        assert_eq!(y["kind"].as_str(), Some("Node"));
        assert_eq!(y["metadata"]["name"].as_str(), Some("node-1"));
        assert_eq!(y["spec"]["podCIDR"].as_str(), Some("10.244.1.0/24"));
        assert_eq!(
            y["metadata"]["labels"]["kubernetes.io/hostname"].as_str(),
            Some("node-1")
        );
        let addr = &y["status"]["addresses"][0];
        assert_eq!(addr["type"].as_str(), Some("InternalIP"));
        assert_eq!(addr["address"].as_str(), Some("192.0.2.11"));
    }

    #[test]
    fn pod_is_pending_then_running() {
        let mut state = LabState::plan(&config(Path::new("/r")));
        let node = state.nodes[1].clone();
        let pod_state = state.pods.iter_mut().find(|p| p.name == "pod-2-2").unwrap();
        let m = pod(pod_state, &node);
        assert_eq!(m.file_name, "pod-default-pod-2-2.yaml");
        let y = parse(&m);
        assert_eq!(y["kind"].as_str(), Some("Pod"));
        assert_eq!(y["metadata"]["namespace"].as_str(), Some("default"));
        assert_eq!(y["metadata"]["labels"]["app"].as_str(), Some("pod-2-2"));
        assert_eq!(y["metadata"]["labels"]["lab-node"].as_str(), Some("node-2"));
        assert_eq!(y["spec"]["nodeName"].as_str(), Some("node-2"));
        let ports = &y["spec"]["containers"][0]["ports"];
        let seen: Vec<(u64, &str, Option<&str>)> = ports
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["containerPort"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap(),
                    p["name"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (80, "TCP", Some("http")),
                (81, "TCP", Some("http-alt")),
                (80, "UDP", None),
                (81, "UDP", None)
            ]
        );
        assert_eq!(y["status"]["phase"].as_str(), Some("Pending"));
        assert!(y["status"]["podIP"].is_null());

        pod_state.ip = Some(Ipv4Addr::new(10, 244, 2, 5));
        let y = parse(&pod(pod_state, &node));
        assert_eq!(y["status"]["phase"].as_str(), Some("Running"));
        assert_eq!(y["status"]["podIP"].as_str(), Some("10.244.2.5"));
        assert_eq!(y["status"]["podIPs"][0]["ip"].as_str(), Some("10.244.2.5"));
        assert_eq!(y["status"]["hostIP"].as_str(), Some("192.0.2.12"));
    }

    #[test]
    fn writes_atomically_and_replaces() {
        let dir = TempDir::new("manifest");
        let m = namespace("default");
        let path = m.write(&dir.0).unwrap();
        let again = namespace("default").write(&dir.0).unwrap();
        assert_eq!(path, again);
        let entries: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
        assert_eq!(entries.len(), 1, "no temporary file left behind");
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains("kind: Namespace"), "{text}");
    }
}
