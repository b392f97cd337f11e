//! Shared helpers for the end-to-end tests over the lab and real peers.

pub mod harness;
