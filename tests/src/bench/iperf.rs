//! Single-stream TCP throughput between two namespaces with iperf3: a one-off server
//! in the destination, a client with JSON output in the source.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::server::Server;

const PORT: u16 = 5201;

/// Gbit/s received by `dst_ip` in namespace `dst` from a client in `src`, over
/// `seconds`.
pub fn stream_gbps(src: &str, dst: &str, dst_ip: Ipv4Addr, seconds: u64) -> Result<f64> {
    let port = PORT.to_string();
    let _server = Server::start(
        Command::new("ip").args(["netns", "exec", dst, "iperf3", "-s", "-1", "-p", &port]),
        PORT,
    )?;
    let out = Command::new("ip")
        .args(["netns", "exec", src, "iperf3", "-J", "-p", &port])
        .args(["-c", &dst_ip.to_string(), "-t", &seconds.to_string()])
        .output()
        .context("running the iperf3 client")?;
    let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 client in {src} printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(error) = json.get("error").and_then(Value::as_str) {
        bail!("iperf3 {src} -> {dst_ip}: {error}");
    }
    let bits = json
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    Ok(bits / 1e9)
}
