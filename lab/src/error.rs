//! The lab's error type: every step of building, inspecting or removing a lab
//! reports what it was doing and on which object.
//!
//! One enum for the orchestration modules because callers (the CLI, the tests) act
//! on a lab as a whole; the network tools in `netio` keep their own errors.

use std::path::PathBuf;
use std::time::Duration;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("invalid lab configuration: {reason}")]
    Config { reason: String },
    #[error("lab {name:?} already exists ({what}); run `lumen lab down --name {name}` first")]
    AlreadyUp { name: String, what: String },
    #[error("lab {name:?} is not up: {path} does not exist")]
    NotUp { name: String, path: PathBuf },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lab state {path} is not valid")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode manifest {path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error(
        "agent of {node} is not ready after {waited:?} (socket {socket}); {log} ends with:\n{log_tail}"
    )]
    AgentNotReady {
        node: String,
        socket: PathBuf,
        waited: Duration,
        log: PathBuf,
        log_tail: String,
    },
    #[error("agent of {node} exited ({status}) before it was ready; {log} ends with:\n{log_tail}")]
    AgentExited {
        node: String,
        status: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error(
        "echo server {name} is not listening on ports {ports:?} after {waited:?}; {log} ends with:\n{log_tail}"
    )]
    ServerNotReady {
        name: String,
        ports: Vec<u16>,
        waited: Duration,
        log: PathBuf,
        log_tail: String,
    },
    #[error("CNI {command} of {pod} failed with code {code}: {msg}: {details}")]
    Cni {
        pod: String,
        command: String,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("CNI {command} of {pod} gave an unexpected answer ({reason}): {output}")]
    CniOutput {
        pod: String,
        command: String,
        reason: String,
        output: String,
    },
    #[error("lab {lab:?} has no pod, node or host named {name:?}")]
    UnknownTarget { lab: String, name: String },
    #[error("lab {lab:?} has no Kubernetes namespace {namespace:?}")]
    UnknownNamespace { lab: String, namespace: String },
    #[error("{name} has no address yet")]
    NoAddress { name: String },
    #[error("invalid probe {spec:?}")]
    ProbeSpec {
        spec: String,
        #[source]
        source: crate::netio::probe::ProbeError,
    },
    #[error("cannot use namespace {netns}")]
    Netns {
        netns: String,
        #[source]
        source: crate::netio::netns::NetnsError,
    },
    #[error("the probe from {from} to {to} panicked")]
    ProbePanicked { from: String, to: String },
    #[error("{path} is not installed; install with: cargo xtask deps")]
    Missing { path: PathBuf },
    #[error("no free loopback port for {what} from {from} on")]
    NoFreePort { what: &'static str, from: u16 },
    #[error("{name} is not ready after {waited:?}; {log} ends with:\n{log_tail}")]
    NotReady {
        name: String,
        waited: Duration,
        log: PathBuf,
        log_tail: String,
    },
    #[error("the metrics relay failed")]
    Relay(#[source] crate::relay::RelayError),
    #[error("cannot install the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}
