//! The manifest-directory source: Kubernetes YAML files (Namespace, Node, Pod,
//! NetworkPolicy; more kinds are ignored) in one directory, re-read whenever a file changes.
//!
//! A change is noticed through inotify (`dirwatch`) within milliseconds, and
//! by a slower poll of the files' metadata as well (for filesystems without
//! inotify, and writers it does not see). Only files whose size, time or inode
//! changed are parsed again, so a change costs one file's parse, not the
//! directory's. A file caught half-written keeps the objects it had: one that
//! does not parse (with a warning, until it changes again), and one found empty
//! right after a write (a writer truncates, then writes) until it has been
//! empty for `SETTLE` (2 s). So rewriting a policy's file in place never takes the
//! policy out of force for a moment.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use tokio::sync::watch;

use super::dirwatch::DirWake;
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

/// How long after its last write an empty file that had objects is taken as
/// being written rather than emptied on purpose.
const SETTLE: Duration = Duration::from_secs(2);

/// Watches a directory of manifests.
#[derive(Debug)]
pub struct ManifestSource {
    rx: watch::Receiver<Arc<ClusterState>>,
}

impl ManifestSource {
    /// Read the directory once, then re-read what changes: when inotify says
    /// so, and at the latest every `poll`.
    pub fn start(dir: PathBuf, poll: Duration) -> Result<Self, ManifestError> {
        let mut files = Files::default();
        files.refresh(&dir)?;
        let (tx, rx) = watch::channel(Arc::new(files.state()));
        let mut wake = DirWake::new(&dir, "manifest directory");
        tokio::spawn(async move {
            loop {
                wake.next(poll).await;
                match files.refresh(&dir) {
                    Ok(false) => {}
                    Ok(true) => {
                        let state = files.state();
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

/// What identifies a version of a file: a rewrite in place changes the
/// size or time, a replacement by rename the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    modified_ns: i128,
    len: u64,
    inode: u64,
}

// === impl Version ===

impl Version {
    /// Was the file written less than `span` ago (or, by its clock, later than now)?
    fn written_within(&self, span: Duration) -> bool {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        now - self.modified_ns < span.as_nanos() as i128
    }
}

/// Every manifest file's objects as last read, by path.
#[derive(Debug, Default)]
struct Files(BTreeMap<PathBuf, (Version, ClusterState)>);

impl Files {
    /// Read the files that are new or changed and forget the ones gone;
    /// `true` if anything did.
    fn refresh(&mut self, dir: &Path) -> Result<bool, ManifestError> {
        let mut seen = BTreeMap::new();
        for path in manifest_files(dir)? {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let version = Version {
                modified_ns: i128::from(meta.mtime()) * 1_000_000_000
                    + i128::from(meta.mtime_nsec()),
                len: meta.len(),
                inode: meta.ino(),
            };
            seen.insert(path, version);
        }
        let before = self.0.len();
        self.0.retain(|path, _| seen.contains_key(path));
        let mut changed = self.0.len() != before;
        for (path, version) in seen {
            let known = self.0.get(&path);
            if known.is_some_and(|(v, _)| *v == version) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let had_objects = known.is_some_and(|(_, o)| *o != ClusterState::default());
            if had_objects && text.trim().is_empty() && version.written_within(SETTLE) {
                // Being written: read again at the next wake.
                continue;
            }
            let mut objects = ClusterState::default();
            let complete = parse_into(&mut objects, &path, &text);
            if !complete && let Some((read, _)) = self.0.get_mut(&path) {
                tracing::warn!(path = %path.display(), "keeping the objects it had until it parses");
                *read = version;
                continue;
            }
            self.0.insert(path, (version, objects));
            changed = true;
        }
        Ok(changed)
    }

    /// Every file's objects together, in the order of their paths (an object
    /// in two files: the later path's).
    fn state(&self) -> ClusterState {
        let mut state = ClusterState::default();
        for (_, objects) in self.0.values() {
            state.merge(objects);
        }
        state
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

/// Add every supported object of a (multi-document) YAML file to `state`;
/// `false` if the file does not parse as YAML (what came before the document
/// that does not is added).
pub fn parse_into(state: &mut ClusterState, path: &Path, text: &str) -> bool {
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "unparsable manifest");
                return false;
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
    true
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
    fn files_are_read_again_only_when_they_change() {
        let dir = std::env::temp_dir().join(format!("lumen-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ns = |name: &str, team: &str| {
            format!("kind: Namespace\nmetadata: {{name: {name}, labels: {{team: {team}}}}}\n")
        };
        std::fs::write(dir.join("a.yaml"), ns("a", "one")).expect("write");
        std::fs::write(dir.join("b.yaml"), ns("b", "one")).expect("write");
        std::fs::write(dir.join("notes.txt"), "not a manifest").expect("write");
        let mut files = Files::default();
        assert!(files.refresh(&dir).expect("readable"));
        assert_eq!(files.state().namespaces.len(), 2);
        assert!(!files.refresh(&dir).expect("readable"), "nothing changed");

        // Replaced by rename (same size, maybe the same time): still seen.
        std::fs::write(dir.join("b.tmp"), ns("b", "two")).expect("write");
        std::fs::rename(dir.join("b.tmp"), dir.join("b.yaml")).expect("rename");
        assert!(files.refresh(&dir).expect("readable"));
        assert_eq!(files.state().namespaces["b"]["team"], "two");

        std::fs::remove_file(dir.join("a.yaml")).expect("remove");
        assert!(files.refresh(&dir).expect("readable"));
        let state = files.state();
        assert_eq!(state.namespaces.keys().collect::<Vec<_>>(), ["b"]);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_file_caught_half_written_keeps_its_objects() {
        let dir = std::env::temp_dir().join(format!("lumen-rewrites-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("policy.yaml");
        let policy = |pods: &str| {
            format!(
                "kind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\n\
                 spec: {{podSelector: {{matchLabels: {{app: {pods}}}}}}}\n"
            )
        };
        // The app label policy p selects, from its spec as the state holds it.
        let selects = |files: &Files| {
            let state = files.state();
            let spec = state.policies[&("x".to_owned(), "p".to_owned())]
                .spec
                .clone()
                .expect("spec");
            let labels =
                serde_json::to_value(spec).expect("json")["podSelector"]["matchLabels"]["app"]
                    .clone();
            labels.as_str().expect("app label").to_owned()
        };
        std::fs::write(&path, policy("one")).expect("write");
        let mut files = Files::default();
        assert!(files.refresh(&dir).expect("readable"));
        assert_eq!(selects(&files), "one");

        // Truncated by a writer that has not written yet: the policy stays.
        std::fs::File::create(&path).expect("truncate");
        assert!(!files.refresh(&dir).expect("readable"));
        assert_eq!(selects(&files), "one");
        // Half a document: still the old one, on this refresh and the next.
        std::fs::write(&path, "kind: NetworkPolicy\nmetadata: {name: p, names").expect("write");
        assert!(!files.refresh(&dir).expect("readable"));
        assert!(!files.refresh(&dir).expect("readable"));
        assert_eq!(selects(&files), "one");
        // The write completes.
        std::fs::write(&path, policy("two")).expect("write");
        assert!(files.refresh(&dir).expect("readable"));
        assert_eq!(selects(&files), "two");

        // Emptied and left empty past SETTLE: its objects go.
        let file = std::fs::File::create(&path).expect("truncate");
        file.set_modified(SystemTime::now() - SETTLE - Duration::from_millis(100))
            .expect("set mtime");
        assert!(files.refresh(&dir).expect("readable"));
        assert!(files.state().policies.is_empty());
        std::fs::remove_dir_all(&dir).expect("clean up");
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
