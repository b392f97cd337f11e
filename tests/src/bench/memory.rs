//! The memory benchmark: a one-node lab whose pod opens 100,000 UDP flows to the
//! lab's external host, held active (long idle timeout). Reports the agent's RSS
//! with those flows next to the same agent idle, the kernel's memory for the flow
//! table (the map's `memlock`, what the kernel charges for it) per entry and per
//! active flow, and the agent's CPU while it tracks them.

use std::net::{SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lumen_lab::LabGuard;
use lumen_lab::config::{self, LabConfig};
use lumen_lab::netio::netns as enter_netns;

use super::report::{Verdict, print_verdicts, ratio};

const LAB_NAME: &str = "bench-mem";
const RSS_TARGET_MIB: f64 = 64.0;
const BYTES_PER_FLOW_TARGET: f64 = 128.0;
/// The kernel table's size (the agent's default).
const MAX_FLOWS: u64 = 131_072;
/// `BPF_MAP_TYPE_LRU_HASH` in `/proc/PID/fdinfo`.
const LRU_HASH: u32 = 9;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub flows: u32,
}

pub fn run(options: Options) -> Result<()> {
    println!(
        "memory: one node, {} UDP flows from one pod held active; agent RSS vs idle, \
         kernel flow-table memory",
        options.flows
    );
    let guard = lab()?;
    let lab = guard.lab();
    let pid = lab
        .state()
        .nodes
        .first()
        .and_then(|n| n.agent_pid)
        .context("the agent's pid")?;
    let socket = lab
        .state()
        .nodes
        .first()
        .map(|n| n.socket.clone())
        .context("the agent's socket")?;
    // Let the agent settle after start-up before taking its idle size.
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_kib(pid)?;
    let table = flow_table_memlock(pid)?;

    let netns = config::netns_path(&lab.require_netns("pod-1-1")?);
    let target = lab.external().ip;
    let flows = options.flows;
    let sent = std::thread::spawn(move || open_flows(&netns, target, flows))
        .join()
        .map_err(|_| anyhow::anyhow!("the flow generator panicked"))??;
    let active = wait_active(&socket, u64::from(sent), Duration::from_secs(60))?;
    let cpu_before = cpu_ticks(pid)?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let cpu =
        (cpu_ticks(pid)? - cpu_before) as f64 / ticks_per_second() / start.elapsed().as_secs_f64();
    let busy_rss = rss_kib(pid)?;

    let mib = |kib: u64| kib as f64 / 1024.0;
    let per_entry = table as f64 / MAX_FLOWS as f64;
    let per_active = table as f64 / active.max(1) as f64;
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "", "figure", "baseline", "ratio"
    );
    println!(
        "{:<44} {:>8.1} MiB {:>8.1} MiB {:>7.2}x",
        format!("agent RSS, {active} active flows vs idle"),
        mib(busy_rss),
        mib(idle_rss),
        ratio(busy_rss as f64, idle_rss as f64)
    );
    println!(
        "{:<44} {:>10.0} B {:>10.0} B {:>7.2}x",
        format!("kernel flow table per entry ({MAX_FLOWS} entries)"),
        per_entry,
        BYTES_PER_FLOW_TARGET,
        ratio(per_entry, BYTES_PER_FLOW_TARGET)
    );
    println!(
        "{:<44} {:>10.0} B {:>10.0} B {:>7.2}x",
        format!("kernel flow table per active flow ({active})"),
        per_active,
        BYTES_PER_FLOW_TARGET,
        ratio(per_active, BYTES_PER_FLOW_TARGET)
    );
    println!(
        "{:<44} {:>9.1} %",
        "agent CPU tracking them (one core = 100 %)",
        cpu * 100.0
    );
    print_verdicts(&[
        Verdict::new(
            format!("agent RSS with {active} flows <= {RSS_TARGET_MIB} MiB"),
            mib(busy_rss) <= RSS_TARGET_MIB,
            format!("{:.1} MiB", mib(busy_rss)),
        ),
        Verdict::new(
            format!("kernel bytes per flow <= {BYTES_PER_FLOW_TARGET}"),
            // Whole bytes: the map's fixed header spreads as a fraction of one.
            per_entry.round() <= BYTES_PER_FLOW_TARGET,
            format!("{per_entry:.0} B per entry, {table} B memlock for {MAX_FLOWS} entries"),
        ),
    ]);
    Ok(())
}

/// One node, one pod; flows stay active for the whole measurement.
fn lab() -> Result<LabGuard> {
    let config = LabConfig {
        name: LAB_NAME.to_owned(),
        nodes: 1,
        pods_per_node: 1,
        bin_dir: config::default_bin_dir(),
        agent_args: vec![
            format!("--max-flows={MAX_FLOWS}"),
            "--idle-timeout=10m".to_owned(),
            "--active-timeout=10m".to_owned(),
        ],
        ..LabConfig::default()
    };
    lumen_lab::down(&config.name, &config.state_root)?;
    Ok(LabGuard::up(&config, &mut |_| {})?)
}

/// From inside the pod: one datagram from each of `flows` (source port,
/// destination port) pairs to the external host. Returns how many were sent.
fn open_flows(netns: &Path, target: std::net::Ipv4Addr, flows: u32) -> Result<u32> {
    enter_netns::enter(netns)?;
    let per_port = 50_000u32;
    let mut sent = 0;
    'outer: for dport in 9000u16.. {
        for sport in 0..per_port {
            if sent == flows {
                break 'outer;
            }
            let sport = u16::try_from(10_000 + sport).context("source port")?;
            let sock = UdpSocket::bind(("0.0.0.0", sport))
                .with_context(|| format!("bind UDP port {sport}"))?;
            sock.send_to(b"lumen", SocketAddrV4::new(target, dport))
                .context("send")?;
            sent += 1;
        }
    }
    Ok(sent)
}

/// Wait until the agent tracks at least `want` flows; returns how many it does.
fn wait_active(socket: &Path, want: u64, timeout: Duration) -> Result<u64> {
    let client = lumen_api::client::Client::new(socket, Duration::from_secs(10));
    let deadline = Instant::now() + timeout;
    loop {
        let stats: lumen_api::flow::FlowStats = client.get(lumen_api::paths::FLOW_STATS)?;
        if stats.active_flows >= want {
            return Ok(stats.active_flows);
        }
        if Instant::now() > deadline {
            bail!("the agent tracks {} flows, not {want}", stats.active_flows);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS in /proc/PID/status")
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may contain spaces, end with ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .context("utime/stime in /proc/PID/stat")
    };
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    Ok(field(11)? + field(12)?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `memlock` of the agent's flow table: the LRU hash with MAX_FLOWS entries.
fn flow_table_memlock(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir)? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        if field("map_type:") == Some(u64::from(LRU_HASH))
            && field("max_entries:") == Some(MAX_FLOWS)
        {
            return field("memlock:").context("memlock of the flow table");
        }
    }
    bail!("no LRU flow table with {MAX_FLOWS} entries among the agent's descriptors")
}
