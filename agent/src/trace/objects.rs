//! `Traceflow` objects (`lumen.dev/v1alpha1`, the shape the Kubernetes CRD will
//! have) in the manifest directory: the agent of the source pod's node runs
//! each new one through the orchestrator, over every node agent it knows
//! (`--peer-agent`), and writes the result into the object's `status`. Objects
//! with a final phase are left alone; a spec that does not read gets a
//! `Failed` status with the reason.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lumen_api::trace::orchestrate::{self, NodeAgent};
use lumen_api::trace::{API_VERSION, KIND, TracePhase, TraceRequest};
use serde::Deserialize;
use serde_yaml::Value;

use super::Tracer;
use crate::cluster::dirwatch::DirWake;

/// How often the directory is looked at while an object waits for its
/// destination pod's address; otherwise inotify wakes the scan, and `IDLE`
/// is only the fallback.
const INTERVAL: Duration = Duration::from_millis(250);
const IDLE: Duration = Duration::from_secs(2);

/// Why a `Traceflow` file could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("reading {path} failed")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not YAML")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("writing {path} failed")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the status of {path} failed")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
}

/// A `Traceflow` found in a file, not yet run.
#[derive(Debug, Clone)]
struct Pending {
    path: PathBuf,
    name: String,
    spec: Result<TraceRequest, String>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<Names>,
    #[serde(default)]
    status: Option<Status>,
}

#[derive(Debug, Deserialize)]
struct Names {
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Status {
    phase: Option<TracePhase>,
}

/// Run `Traceflow` objects of `dir` whose source pod is on this node.
pub async fn follow(dir: PathBuf, tracer: Arc<Tracer>, agents: Vec<NodeAgent>) {
    let running: Arc<Mutex<HashSet<(PathBuf, String)>>> = Arc::default();
    let mut first_seen: HashMap<(PathBuf, String), Instant> = HashMap::new();
    let mut wake = DirWake::new(&dir, "Traceflow objects");
    loop {
        let pendings = scan(&dir);
        // Objects gone or no longer pending are not waited for.
        first_seen
            .retain(|(path, name), _| pendings.iter().any(|p| p.path == *path && p.name == *name));
        for pending in pendings {
            let key = (pending.path.clone(), pending.name.clone());
            if !tracer.is_local(&pending) {
                continue;
            }
            // A destination pod whose address the cluster state does not have
            // yet (just created) is waited for, up to the trace's timeout.
            let since = *first_seen.entry(key.clone()).or_insert_with(Instant::now);
            if let Ok(request) = &pending.spec
                && matches!(
                    tracer.destination_ip(&request.destination),
                    Err(super::TraceError::NoPodIp(_))
                )
                && since.elapsed() < Duration::from_millis(request.timeout_ms)
            {
                continue;
            }
            first_seen.remove(&key);
            if !running.lock().is_ok_and(|mut r| r.insert(key.clone())) {
                continue;
            }
            let (agents, node, running) = (
                agents.clone(),
                tracer.node.config.node_name.clone(),
                running.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let status = match &pending.spec {
                    Ok(request) => match orchestrate::run(&agents, &node, request) {
                        Ok(result) => plain_yaml(&result),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(reason) => Err(reason.clone()),
                };
                let status = status.unwrap_or_else(|reason| failed(&reason));
                if let Err(error) = write_status(&pending.path, &pending.name, status) {
                    tracing::warn!(%error, traceflow = %pending.name, "cannot write the Traceflow status");
                }
                if let Ok(mut r) = running.lock() {
                    r.remove(&key);
                }
            });
        }
        let poll = if first_seen.is_empty() {
            IDLE
        } else {
            INTERVAL
        };
        wake.next(poll).await;
    }
}

impl Tracer {
    /// Whether a pending object's source pod is on this node (a spec that does
    /// not read is claimed by every node; the first to write its status wins).
    fn is_local(&self, pending: &Pending) -> bool {
        match &pending.spec {
            Ok(request) => self.local_endpoint(request).is_ok(),
            Err(_) => true,
        }
    }
}

/// `value` as YAML whose enums are one-key maps (as in Kubernetes objects),
/// not YAML tags.
fn plain_yaml(value: &impl serde::Serialize) -> Result<Value, String> {
    serde_json::to_value(value)
        .map_err(|e| e.to_string())
        .and_then(|j| serde_yaml::to_value(j).map_err(|e| e.to_string()))
}

/// The status of a trace that could not run.
fn failed(reason: &str) -> Value {
    let mut map = serde_yaml::Mapping::new();
    map.insert("phase".into(), "Failed".into());
    map.insert("reason".into(), reason.into());
    Value::Mapping(map)
}

/// Every `Traceflow` of the directory without a final phase.
fn scan(dir: &Path) -> Vec<Pending> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if !text.contains(KIND) {
            continue;
        }
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let Ok(value) = Value::deserialize(doc) else {
                break;
            };
            if let Some(p) = pending(&path, value) {
                out.push(p);
            }
        }
    }
    out
}

fn pending(path: &Path, value: Value) -> Option<Pending> {
    let meta: Meta = serde_yaml::from_value(value.clone()).ok()?;
    if meta.kind.as_deref() != Some(KIND) || meta.api_version.as_deref() != Some(API_VERSION) {
        return None;
    }
    if meta
        .status
        .and_then(|s| s.phase)
        .is_some_and(|p| p != TracePhase::Running)
    {
        return None;
    }
    let name = meta.metadata.and_then(|m| m.name)?;
    let spec = value
        .get("spec")
        .cloned()
        .ok_or_else(|| "the Traceflow has no spec".to_owned())
        .and_then(|s| {
            // Through JSON: serde_yaml reads enums from a Value only as YAML
            // tags, a Kubernetes object has them as one-key maps.
            serde_json::to_value(s)
                .and_then(serde_json::from_value::<TraceRequest>)
                .map_err(|e| format!("spec: {e}"))
        })
        .and_then(|r| r.validate().map(|()| r).map_err(|e| format!("spec: {e}")));
    Some(Pending {
        path: path.to_owned(),
        name,
        spec,
    })
}

/// Replace the status of the Traceflow `name` in `path`, keeping the file's
/// other objects; the file is replaced whole (written aside, then renamed).
fn write_status(path: &Path, name: &str, status: Value) -> Result<(), ObjectError> {
    let text = std::fs::read_to_string(path).map_err(|source| ObjectError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc).map_err(|source| ObjectError::Parse {
            path: path.to_owned(),
            source,
        })?;
        docs.push(value);
    }
    for doc in &mut docs {
        let is_it = doc.get("kind").and_then(Value::as_str) == Some(KIND)
            && doc
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                == Some(name);
        if is_it && let Value::Mapping(m) = doc {
            m.insert("status".into(), status.clone());
        }
    }
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(
            &serde_yaml::to_string(doc).map_err(|source| ObjectError::Encode {
                path: path.to_owned(),
                source,
            })?,
        );
    }
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, out).map_err(|source| ObjectError::Write {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| ObjectError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBJECT: &str = "\
apiVersion: lumen.dev/v1alpha1
kind: Traceflow
metadata:
  name: t1
spec:
  source: {namespace: default, name: pod-1-1}
  destination: {pod: {namespace: default, name: pod-2-1}}
  protocol: 6
  destinationPort: 80
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
";

    #[test]
    fn pending_objects_are_read_and_status_is_written_in_place() {
        let dir = std::env::temp_dir().join(format!("lumen-traceflow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("t1.yaml");
        std::fs::write(&path, OBJECT).expect("write");
        let found = scan(&dir);
        assert_eq!(found.len(), 1);
        let spec = found[0].spec.as_ref().expect("the spec reads");
        assert_eq!(spec.destination_port, Some(80));
        assert_eq!(spec.timeout_ms, lumen_api::trace::DEFAULT_TIMEOUT_MS);

        write_status(&path, "t1", failed("no agent")).expect("status written");
        let text = std::fs::read_to_string(&path).expect("read back");
        assert!(text.contains("phase: Failed"), "{text}");
        assert!(
            text.contains("kind: Namespace"),
            "other objects kept: {text}"
        );
        assert!(scan(&dir).is_empty(), "a final phase is not run again");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_bad_spec_is_pending_with_its_reason() {
        let value: Value = serde_yaml::from_str(
            "apiVersion: lumen.dev/v1alpha1\nkind: Traceflow\nmetadata: {name: bad}\nspec:\n  source: {namespace: default, name: a}\n  destination: {ip: 10.0.0.1}\n  protocol: 6\n",
        )
        .expect("yaml");
        let p = pending(Path::new("x.yaml"), value).expect("pending");
        let reason = p.spec.expect_err("no port");
        assert!(reason.contains("destination port"), "{reason}");
    }
}
