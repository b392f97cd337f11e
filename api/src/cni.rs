//! Wire types between the CNI plugin and the node agent.
//!
//! The plugin is a thin shim: it validates the runtime's input, forwards one of
//! these requests over the agent's unix socket and renders the answer in the CNI
//! result format of the requested spec version. Errors carry a CNI error code so
//! the plugin can pass the agent's verdict through unchanged.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::Ipv4Cidr;

/// CNI spec error codes (spec "Error" section) used by Lumen.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// First code of the plugin-specific range: an internal failure in the agent.
    pub const INTERNAL: u32 = 100;
    /// The node's pod CIDR has no free address.
    pub const NO_ADDRESS: u32 = 101;
}

/// The gateway address every pod routes through (Calico-style link-local hop).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Identifies one attachment: the runtime's (container id, interface name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// ADD, CHECK or DEL of one attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRequest {
    pub container_id: String,
    /// Path of the pod's network namespace; may be empty on DEL.
    pub netns: String,
    pub ifname: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// MTU asked for in the network config; the agent's default otherwise.
    pub mtu: Option<u32>,
}

impl CniRequest {
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// What ADD created; the plugin renders it as a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub ifname: String,
    pub mac: String,
    pub sandbox: String,
    pub host_ifname: String,
    pub host_mac: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// GC: every attachment the runtime still has; the agent releases the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    pub valid: Vec<AttachmentKey>,
}

/// What GC released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub released: Vec<AttachmentKey>,
}

/// One address handed out by the agent's IPAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub key: AttachmentKey,
    pub netns: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
}

/// The IPAM state as persisted and as served on [`crate::paths::IPAM`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamState {
    pub cidr: Ipv4Cidr,
    pub allocations: Vec<Allocation>,
}

/// An error answer from the agent, with the CNI code the plugin reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct AgentError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}
