//! Kubernetes NetworkPolicy: validation (`model`), compilation into per-endpoint
//! rules and verdicts (`engine`), the CIDR sets rules match peers with
//! (`cidrs`), enforcement on this node (`enforce`) and what the node API
//! reports of it (`report`). The engine is pure user space: the datapath's maps
//! are generated from the compiled form.

pub mod cidrs;
pub mod enforce;
pub mod engine;
pub mod model;
pub mod report;

pub use engine::{
    CompileError, Compiled, Direction, DirectionRules, DirectionVerdict, EndpointPolicy,
    Evaluation, InForce, PolicyEngine, PortRange, Ports, Rejected, RuleEntry,
};
pub use model::{Policy, PolicyError};
