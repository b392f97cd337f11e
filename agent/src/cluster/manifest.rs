//! The manifest-directory source: Kubernetes YAML files (Namespace, Node, Pod,
//! NetworkPolicy; more kinds are ignored) in one directory, re-read whenever a file changes.
//!
//! Polling file metadata keeps this dependency-free and works on any filesystem;
//! a half-written file is skipped with a warning and picked up on the next change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use tokio::sync::watch;

use super::{ClusterSource, ClusterState};

/// Why reading the manifest directory failed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest directory {path} cannot be read")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Watches a directory of manifests.
#[derive(Debug)]
pub struct ManifestSource {
    rx: watch::Receiver<Arc<ClusterState>>,
}

type Fingerprint = BTreeMap<PathBuf, (SystemTime, u64)>;

impl ManifestSource {
    /// Read the directory once, then keep watching it every `interval`.
    pub fn start(dir: PathBuf, interval: Duration) -> Result<Self, ManifestError> {
        let (print, state) = load(&dir)?;
        let (tx, rx) = watch::channel(Arc::new(state));
        tokio::spawn(async move {
            let mut last = print;
            loop {
                tokio::time::sleep(interval).await;
                match fingerprint(&dir) {
                    Ok(now) if now == last => continue,
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "manifest directory unreadable");
                        continue;
                    }
                }
                match load(&dir) {
                    Ok((print, state)) => {
                        last = print;
                        tx.send_if_modified(|old| {
                            let changed = **old != state;
                            if changed {
                                *old = Arc::new(state);
                            }
                            changed
                        });
                    }
                    Err(error) => tracing::warn!(%error, "manifest directory unreadable"),
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self { rx })
    }
}

impl ClusterSource for ManifestSource {
    fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.rx.clone()
    }
}

fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ManifestError::ReadDir {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    Ok(files)
}

fn fingerprint(dir: &Path) -> Result<Fingerprint, ManifestError> {
    Ok(manifest_files(dir)?
        .into_iter()
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            Some((p, (meta.modified().ok()?, meta.len())))
        })
        .collect())
}

#[derive(Deserialize)]
struct TypeMeta {
    kind: Option<String>,
    metadata: Option<Names>,
}

#[derive(Deserialize)]
struct Names {
    name: Option<String>,
    namespace: Option<String>,
}

fn load(dir: &Path) -> Result<(Fingerprint, ClusterState), ManifestError> {
    let print = fingerprint(dir)?;
    let mut state = ClusterState::default();
    for path in print.keys() {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        parse_into(&mut state, path, &text);
    }
    Ok((print, state))
}

/// Add every supported object of a (multi-document) YAML file to `state`.
pub fn parse_into(state: &mut ClusterState, path: &Path, text: &str) {
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "skipping unparsable manifest");
                return;
            }
        };
        let meta = serde_yaml::from_value::<TypeMeta>(value.clone()).ok();
        let kind = meta.as_ref().and_then(|t| t.kind.clone());
        let result = match kind.as_deref() {
            Some("Node") => serde_yaml::from_value::<Node>(value).map(|n| state.add_node(&n)),
            Some("Pod") => serde_yaml::from_value::<Pod>(value).map(|p| state.add_pod(&p)),
            Some("Namespace") => {
                serde_yaml::from_value::<Namespace>(value).map(|n| state.add_namespace(&n))
            }
            Some("NetworkPolicy") => {
                let read = serde_yaml::from_value::<NetworkPolicy>(value);
                // A policy that does not read is refused by name, so the
                // engine keeps its previous version rather than dropping it.
                if let (
                    Err(error),
                    Some(Names {
                        name: Some(name),
                        namespace,
                    }),
                ) = (&read, meta.and_then(|m| m.metadata))
                {
                    state.add_unreadable_policy(namespace.as_deref(), &name, error.to_string());
                }
                read.map(|p| state.add_policy(&p))
            }
            _ => Ok(()),
        };
        if let Err(error) = result {
            tracing::warn!(path = %path.display(), %error, "skipping invalid object");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nodes_pods_namespaces_policies() {
        let yaml = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status:
  addresses: [{type: InternalIP, address: 192.0.2.11}]
---
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 8080}
    - {containerPort: 9090}
  - name: d
    ports: [{name: dns, containerPort: 53, protocol: UDP}]
status: {podIP: 10.244.1.5}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec:
  podSelector: {}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"#;
        let mut state = ClusterState::default();
        parse_into(&mut state, Path::new("test.yaml"), yaml);
        let node = &state.nodes["node-1"];
        assert_eq!(node.pod_cidr.unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(node.internal_ip.unwrap().to_string(), "192.0.2.11");
        assert_eq!(state.namespaces["x"]["team"], "a");
        let pod = &state.pods[&("x".to_owned(), "a".to_owned())];
        assert_eq!(pod.node.as_deref(), Some("node-1"));
        assert_eq!(pod.ip.unwrap().to_string(), "10.244.1.5");
        assert_eq!(pod.labels["app"], "a");
        let ports: Vec<_> = pod
            .ports
            .iter()
            .map(|p| format!("{}={}/{}", p.name, p.port, p.protocol))
            .collect();
        assert_eq!(ports, ["http=8080/TCP", "dns=53/UDP"]);
        assert_eq!(
            state.policies.keys().collect::<Vec<_>>(),
            [&("x".to_owned(), "deny".to_owned())]
        );
    }

    #[test]
    fn bad_documents_are_skipped() {
        let mut state = ClusterState::default();
        parse_into(
            &mut state,
            Path::new("bad.yaml"),
            "kind: Node\nmetadata: [oops",
        );
        parse_into(
            &mut state,
            Path::new("bad2.yaml"),
            "kind: Node\nmetadata: {name: n}\nspec: {podCIDR: not-a-cidr}\n",
        );
        assert!(state.nodes["n"].pod_cidr.is_none());
        parse_into(
            &mut state,
            Path::new("bad3.yaml"),
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {ingress: [{ports: [{port: [80]}]}]}\n",
        );
        assert!(state.policies.is_empty());
        let reason = &state.unreadable_policies[&("x".to_owned(), "p".to_owned())];
        assert!(reason.contains("IntOrString"), "{reason}");
    }
}
