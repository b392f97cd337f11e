//! Lumen's benchmarks, behind the `lumen-bench` binary (`cargo xtask bench <name>`).
//! Each one builds its own setups, measures Lumen next to a baseline in the same run,
//! prints every figure with its baseline and ratio, ends with one verdict line per
//! target, and removes everything it created, also on error or panic. A missed
//! target is a result, not a failure: only errors make a benchmark fail.
//!
//! Errors are `anyhow` here rather than one enum per module: these modules serve only
//! the bench binary, which prints the chain of context and exits non-zero.

pub mod alloc;
pub mod baseline;
pub mod bpf;
pub mod cni;
pub mod datapath;
pub mod export;
pub mod iperf;
pub mod memory;
pub mod metrics;
pub mod netns;
pub mod packet;
pub mod policy;
pub mod policy_tax;
pub mod policy_update;
pub mod report;
pub mod rr;
pub mod server;
pub mod stats;
pub mod trace;
