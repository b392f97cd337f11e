//! The lab's network tools: entering a pod's namespace, the per-pod echo server, the
//! probes that test reachability through the datapath (TCP, UDP, ICMP, SCTP), and a
//! request/response latency tool for benchmarks. Blocking std sockets only, so each tool
//! can run on a plain thread right after `netns::enter`.

pub mod checksum;
mod echo;
mod icmp;
mod ipv4;
pub mod netns;
mod nonce;
pub mod probe;
pub mod rr;
pub mod sctp;
pub mod serve;
