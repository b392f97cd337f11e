//! Lumen's lab: a whole cluster on one machine. Nodes, pods, an underlay and an
//! external host are network namespaces; each node runs a real `lumen-agent`, each
//! pod is attached by the real `lumen-cni` invoked as a container runtime would, and
//! runs an echo server. Nothing in the root network namespace is changed; the
//! optional Prometheus there reads the agents through their sockets.
//!
//! [`Lab::up`] builds a lab, [`Lab::open`] finds a running one, [`down()`] removes
//! one completely (even after a crash), and [`LabGuard`] removes it on drop.

pub mod cni_exec;
pub mod config;
pub mod down;
pub mod error;
pub mod lab;
pub mod manifest;
pub mod netio;
pub mod process;
pub mod prometheus;
pub mod reach;
pub mod relay;
pub mod state;
pub mod status;
pub mod topology;
pub mod traffic;

pub use cni_exec::CniCommand;
pub use config::{ContainerPort, DEFAULT_NAME, DEFAULT_STATE_ROOT, LabConfig, PodLayout};
pub use down::{DownReport, down};
pub use error::LabError;
pub use lab::{Lab, LabGuard, Progress};
pub use reach::ProbeReport;
pub use state::{
    Collector, External, LabState, MetricsRelay, Node, Pod, Prometheus, RelayTarget, Underlay,
};
pub use status::Status;
