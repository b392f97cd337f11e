//! Lumen's shared vocabulary: the types every crate exchanges with the node agent,
//! the flow tag carried in the VXLAN header, and a small blocking client for the
//! agent's unix-socket API.

pub mod cidr;
pub mod client;
pub mod cni;
pub mod endpoint;
pub mod filter;
pub mod flow;
pub mod paths;
pub mod policy;
pub mod tag;
pub mod trace;

pub use cidr::Ipv4Cidr;
pub use endpoint::{Endpoint, Identity};
pub use filter::{FilterError, FlowFilter, FlowQuery};
pub use flow::{Flow, FlowEndpoint, FlowEvent, LostEvents, LostSource};
pub use tag::Tag;
