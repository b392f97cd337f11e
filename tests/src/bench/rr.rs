//! Request/response latency between two namespaces with the lab's RR tool. Server
//! and client are this bench binary again (hidden subcommands `rr-server` and
//! `rr-client`), because entering a namespace with `setns` must happen in a process
//! of its own before any other thread exists.
//!
//! Both run pinned to one CPU: on a small VM a wake-up across CPUs costs 50–100 µs
//! at random (idle exits), which swamps the datapath's few microseconds and makes
//! runs bimodal. On one CPU every transaction's whole path — both directions, all
//! softirq work — runs there, so transactions per second measure the path's cost.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lumen_lab::netio::{netns, rr};
use lumen_lab::topology::describe;

use super::server::Server;

/// One-byte requests, as netperf's TCP_RR: the cost per transaction is the path's,
/// not the copy's.
const REQUEST_SIZE: usize = 1;
/// The CPU server and client are pinned to (`taskset -c`).
const CPU: &str = "0";

/// The body of `lumen-bench rr-server`: echo on `port` inside `netns` until killed.
pub fn serve(netns: &Path, port: u16) -> Result<()> {
    netns::enter(netns)?;
    rr::rr_server(port)?;
    Ok(())
}

/// The body of `lumen-bench rr-client`: ping-pong with `target` from inside `netns`.
pub fn client(netns: &Path, target: Ipv4Addr, port: u16, seconds: u64) -> Result<rr::RrStats> {
    netns::enter(netns)?;
    Ok(rr::rr_client(
        target,
        port,
        Duration::from_secs(seconds),
        REQUEST_SIZE,
    )?)
}

/// Start `lumen-bench rr-server` in `netns` and wait until it listens.
pub fn start_server(netns: &Path, port: u16) -> Result<Server> {
    let mut cmd = pinned_self()?;
    cmd.arg("rr-server")
        .arg("--netns")
        .arg(netns)
        .args(["--port", &port.to_string()]);
    Server::start(&mut cmd, port)
}

/// Run `lumen-bench rr-client` in `netns` for `seconds` and read its stats.
pub fn run_client(netns: &Path, target: Ipv4Addr, port: u16, seconds: u64) -> Result<rr::RrStats> {
    let mut cmd = pinned_self()?;
    cmd.arg("rr-client")
        .arg("--netns")
        .arg(netns)
        .args(["--target", &target.to_string()])
        .args(["--port", &port.to_string()])
        .args(["--seconds", &seconds.to_string()]);
    let out = cmd
        .output()
        .with_context(|| format!("running `{}`", describe(&cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("rr-client printed no stats")
}

/// This binary under `taskset`, which execs it (the pid stays the server's).
fn pinned_self() -> Result<Command> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", CPU]).arg(std::env::current_exe()?);
    Ok(cmd)
}
