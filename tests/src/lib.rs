//! Shared helpers for the end-to-end tests.

pub mod bench;
pub mod harness;
pub mod peers;
pub mod policy_cases;
pub mod promql;
