//! Kubernetes NetworkPolicy: validation (`model`), compilation into per-endpoint
//! rules and verdicts (`engine`), and the CIDR sets rules match peers with
//! (`cidrs`). Pure user space: the datapath's maps are generated from the
//! compiled form.

pub mod cidrs;
pub mod enforce;
pub mod engine;
pub mod model;

pub use engine::{
    CompileError, Compiled, Direction, DirectionRules, DirectionVerdict, EndpointPolicy,
    Evaluation, InForce, PolicyEngine, PortRange, Ports, Rejected, RuleEntry,
};
pub use model::{Policy, PolicyError};
