//! Removing a lab completely — processes, namespaces, BPF pins, state — whether or
//! not its state file survived, and however its processes died.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::LabError;
use crate::config::{self, is_lab_netns};
use crate::process;
use crate::state::LabState;
use crate::topology;

/// Where agents may pin BPF objects, one directory per lab.
pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf/lumen";
/// How long processes get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DownReport {
    pub name: String,
    /// Processes that were running and were stopped.
    pub killed: Vec<u32>,
    /// Namespaces deleted.
    pub netns: Vec<String>,
    /// The BPF pin directory, if there was one.
    pub bpf_pins: Option<PathBuf>,
    /// The state directory, if there was one.
    pub state_dir: Option<PathBuf>,
}

impl DownReport {
    /// Whether there was nothing left of the lab.
    pub fn is_empty(&self) -> bool {
        self.killed.is_empty()
            && self.netns.is_empty()
            && self.bpf_pins.is_none()
            && self.state_dir.is_none()
    }
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "lab {}: nothing to remove", self.name);
        }
        write!(
            f,
            "lab {}: stopped {} processes, deleted {} namespaces",
            self.name,
            self.killed.len(),
            self.netns.len()
        )?;
        if let Some(pins) = &self.bpf_pins {
            write!(f, ", removed {}", pins.display())?;
        }
        if let Some(dir) = &self.state_dir {
            write!(f, ", removed {}", dir.display())?;
        }
        Ok(())
    }
}

/// Remove lab `name` whose state lives under `state_root`. Idempotent.
///
/// Processes are found through the namespaces (`ip netns pids`) and the lab's
/// mark ([`process::marked`]), which work after a crash of `lumen lab up`, and
/// through the state file. Every step is tried
/// even if an earlier one failed; the first failure is returned, and the state
/// directory is kept then so a second `down` still knows the lab's pids.
pub fn down(name: &str, state_root: &Path) -> Result<DownReport, LabError> {
    config::validate_name(name)?;
    let mut report = DownReport {
        name: name.to_owned(),
        ..DownReport::default()
    };
    let namespaces: Vec<String> = topology::list_netns()?
        .into_iter()
        .filter(|ns| is_lab_netns(name, ns))
        .collect();

    let mut pids = BTreeSet::new();
    for ns in &namespaces {
        // A namespace deleted under our feet has no processes left to find.
        pids.extend(topology::netns_pids(ns).unwrap_or_default());
    }
    let dir = config::state_dir(state_root, name);
    if let Ok(state) = LabState::load(name, state_root) {
        // A recorded pid may have been reused since: only stop lumen processes
        // (Prometheus names the lab's state directory on its command line).
        let inside = format!("{}/", dir.display());
        let ours = |pid: &u32| {
            process::cmdline(*pid).is_some_and(|c| c.contains("lumen") || c.contains(&inside))
        };
        pids.extend(state.pids().into_iter().filter(ours));
    }
    // The lab's processes in the root namespace (Prometheus, the metrics relay)
    // carry the lab's mark, found even without a state file.
    pids.extend(process::marked(&dir));
    pids.remove(&std::process::id());
    let pids: Vec<u32> = pids.into_iter().collect();
    report.killed = process::terminate(&pids, GRACE);

    let mut first_error = None;
    for ns in namespaces {
        match topology::del_netns(&ns) {
            Ok(()) => report.netns.push(ns),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }

    let pins = Path::new(BPF_PIN_ROOT).join(name);
    if pins.exists() {
        match std::fs::remove_dir_all(&pins) {
            Ok(()) => report.bpf_pins = Some(pins),
            Err(source) => {
                first_error.get_or_insert(LabError::Io {
                    action: "remove BPF pins",
                    path: pins,
                    source,
                });
            }
        }
    }

    if first_error.is_none() && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| LabError::Io {
            action: "remove state directory",
            path: dir.clone(),
            source,
        })?;
        report.state_dir = Some(dir);
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::TempDir;

    #[test]
    fn down_of_unknown_lab_is_empty_and_idempotent() {
        let dir = TempDir::new("down");
        let report = down("lumen-unit-absent", &dir.0).unwrap();
        assert!(report.is_empty(), "{report:?}");
        assert_eq!(
            report.to_string(),
            "lab lumen-unit-absent: nothing to remove"
        );
        assert!(down("Bad Name", &dir.0).is_err());
    }

    #[test]
    fn down_removes_state_dir_without_namespaces() {
        let dir = TempDir::new("down-state");
        let lab_dir = dir.0.join("lumen-unit-state");
        std::fs::create_dir_all(lab_dir.join("manifests")).unwrap();
        std::fs::write(lab_dir.join("state.json"), b"not json").unwrap();
        let report = down("lumen-unit-state", &dir.0).unwrap();
        assert_eq!(report.state_dir, Some(lab_dir.clone()));
        assert!(!lab_dir.exists());
        assert!(down("lumen-unit-state", &dir.0).unwrap().is_empty());
    }
}
