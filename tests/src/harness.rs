//! Test harness: where the built binaries are, root detection, labs with unique
//! names, running the `lumen` CLI, and snapshots of the machine's state to prove a
//! lab leaves nothing behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lumen_lab::{LabConfig, LabGuard, PodLayout, ProbeReport};

/// `target/debug` (or release): the directory of the test executable's parent.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("test executable lives in target/<profile>/deps")
}

/// Privileged tests need root; outside CI they are skipped with a note, in CI
/// (`CI` set) a missing root is a failure.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(std::env::var_os("CI").is_none(), "{test} needs root in CI");
        eprintln!("skipping {test}: needs root");
    }
    root
}

/// The binaries the lab runs must exist: `cargo xtask test` builds them first.
pub fn require_binaries() {
    for bin in ["lumen", "lumen-agent", "lumen-cni"] {
        let path = bin_dir().join(bin);
        assert!(
            path.exists(),
            "{} is missing: run `cargo xtask test` (it builds the binaries first)",
            path.display()
        );
    }
}

/// Bring up a lab named `name`, removed when the guard drops (also on panic).
pub fn lab(name: &str, nodes: u32, pods: u32) -> LabGuard {
    lab_with(name, nodes, pods, &[])
}

/// [`lab`] with extra flags for every agent.
pub fn lab_with(name: &str, nodes: u32, pods: u32, agent_args: &[&str]) -> LabGuard {
    lab_with_config(LabConfig {
        name: name.to_owned(),
        nodes,
        pods_per_node: pods,
        agent_args: agent_args.iter().map(|a| (*a).to_owned()).collect(),
        ..LabConfig::default()
    })
}

/// A lab built from `config`, with this build's binaries.
pub fn lab_with_config(config: LabConfig) -> LabGuard {
    lab_with_layout(config, PodLayout::Numbered)
}

/// A lab of the upstream NetworkPolicy model (3 nodes of 3 pods: namespaces
/// x, y, z, pods a, b, c; see [`PodLayout::Model`]) with extra agent flags.
pub fn model_lab(name: &str, agent_args: &[&str]) -> LabGuard {
    let config = LabConfig {
        name: name.to_owned(),
        nodes: 3,
        pods_per_node: 3,
        agent_args: agent_args.iter().map(|a| (*a).to_owned()).collect(),
        ..LabConfig::default()
    };
    lab_with_layout(config, PodLayout::Model)
}

/// A lab built from `config` with the pods of `layout`, with this build's
/// binaries.
pub fn lab_with_layout(config: LabConfig, layout: PodLayout) -> LabGuard {
    require_binaries();
    let name = config.name.clone();
    // A previous run killed mid-way may have left a lab of this name.
    let _ = lumen_lab::down(&name, &config.state_root);
    let config = LabConfig {
        bin_dir: bin_dir(),
        ..config
    };
    LabGuard::up_with(&config, layout, &mut |_| {}).unwrap_or_else(|e| panic!("lab {name} up: {e}"))
}

/// Run the `lumen` CLI.
pub fn lumen(args: &[&str]) -> Output {
    Command::new(bin_dir().join("lumen"))
        .args(args)
        .output()
        .expect("lumen runs")
}

/// `lumen lab probe --name LAB FROM TO SPEC -o json`, parsed.
pub fn probe(lab: &str, from: &str, to: &str, spec: &str) -> ProbeReport {
    let out = lumen(&["lab", "probe", "--name", lab, from, to, spec, "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "probe {from} -> {to} {spec}: unparsable output ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Every node agent of `lab`, as `lumen_api::trace::orchestrate::run` takes them
/// (any node may see a traced packet).
pub fn trace_agents(lab: &lumen_lab::Lab) -> Vec<lumen_api::trace::orchestrate::NodeAgent> {
    lab.nodes()
        .iter()
        .map(|n| lumen_api::trace::orchestrate::NodeAgent {
            node: n.name.clone(),
            socket: n.socket.clone(),
        })
        .collect()
}

/// `GET PATH` from the agent at `socket`: the body of a 200 answer.
pub fn get_text(socket: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    // HTTP/1.0: the body ends when the server closes, no chunking to undo.
    write!(stream, "GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("response");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}\n{body}"
    );
    body.to_owned()
}

/// One sample of a Prometheus text exposition by its series as the agent writes
/// it (`name{label="v",…}`, labels sorted); 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            if name == series {
                value.parse().ok()
            } else {
                None
            }
        })
        .unwrap_or(0.0)
}

/// `GET /v1/flows?QUERY` from the agent at `socket` (no follow), parsed.
pub fn flows(socket: &Path, query: &str) -> Vec<lumen_api::FlowEvent> {
    get_text(socket, &format!("/v1/flows?{query}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}")))
        .collect()
}

/// `GET /v1/flows/stats` from the agent at `socket`.
pub fn flow_stats(socket: &Path) -> serde_json::Value {
    lumen_api::client::Client::new(socket, std::time::Duration::from_secs(5))
        .get(lumen_api::paths::FLOW_STATS)
        .unwrap_or_else(|e| panic!("flow stats from {}: {e}", socket.display()))
}

/// Wait up to `timeout` for flow records on `socket` that satisfy `done`.
pub fn wait_flows(
    socket: &Path,
    query: &str,
    timeout: std::time::Duration,
    done: impl Fn(&[lumen_api::Flow]) -> bool,
) -> Vec<lumen_api::Flow> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let flows: Vec<lumen_api::Flow> = flows(socket, query)
            .into_iter()
            .filter_map(|e| match e {
                lumen_api::FlowEvent::Flow(f) => Some(*f),
                lumen_api::FlowEvent::LostEvents(_) => None,
            })
            .collect();
        if done(&flows) || std::time::Instant::now() > deadline {
            return flows;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Run `f` on a thread inside the network namespace at `netns` (a path).
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        lumen_lab::netio::netns::enter(&netns).expect("enter netns");
        f()
    })
    .join()
    .expect("thread in netns")
}

/// `eth0`'s counters in the calling thread's namespace: (rx packets, rx bytes,
/// tx packets, tx bytes), Ethernet bytes included.
pub fn eth0_counters() -> [u64; 4] {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("net/dev");
    let line = dev
        .lines()
        .find(|l| l.trim_start().starts_with("eth0:"))
        .expect("eth0 in net/dev");
    let n: Vec<u64> = line
        .split_once(':')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    [n[1], n[0], n[9], n[8]]
}

/// Pod interface counters around `f`, as IP-level (packets, bytes) sent and received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub sent: (u64, u64),
    pub received: (u64, u64),
}

pub fn measured<T>(f: impl FnOnce() -> T) -> (T, Seen) {
    let before = eth0_counters();
    let out = f();
    // Replies may still be in flight when `f` returns.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after = eth0_counters();
    let d: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let seen = Seen {
        received: (d[0], d[1] - 14 * d[0]),
        sent: (d[2], d[3] - 14 * d[2]),
    };
    (out, seen)
}

/// Every GSO/GRO offload off in a pod, so each skb its interface counts is one
/// packet on the wire.
pub fn offloads_off(netns: &str) {
    let status = Command::new("ip")
        .args(["netns", "exec", netns, "ethtool", "-K", "eth0"])
        .args(["tso", "off", "gso", "off", "gro", "off"])
        .status()
        .expect("ethtool runs (install with: cargo xtask deps)");
    assert!(status.success(), "ethtool -K in {netns}");
}

/// `lumen lab status --name LAB -o json`.
pub fn status(lab: &str) -> serde_json::Value {
    let out = lumen(&["lab", "status", "--name", lab, "-o", "json"]);
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

/// What a lab could leave behind on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub netns: BTreeSet<String>,
    pub root_links: BTreeSet<String>,
    pub root_routes: BTreeSet<String>,
    pub bpffs: BTreeSet<String>,
    pub processes: BTreeSet<String>,
}

fn lines(cmd: &mut Command) -> BTreeSet<String> {
    let out = cmd.output().expect("command runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn walk(dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        out.insert(path.display().to_string());
        if path.is_dir() {
            walk(&path, out);
        }
    }
}

/// Processes running one of our binaries (by executable path).
fn our_processes() -> BTreeSet<String> {
    let bins = bin_dir();
    let mut found = BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        if exe.parent() == Some(bins.as_path()) {
            found.insert(format!(
                "{} {}",
                entry.file_name().to_string_lossy(),
                exe.display()
            ));
        }
    }
    found
}

impl Snapshot {
    pub fn take() -> Self {
        let mut bpffs = BTreeSet::new();
        walk(Path::new("/sys/fs/bpf"), &mut bpffs);
        Self {
            netns: lines(Command::new("ip").args(["netns", "list"])),
            root_links: lines(Command::new("ip").args(["-o", "link", "show"]))
                .into_iter()
                .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_owned())
                .collect(),
            root_routes: lines(Command::new("ip").args(["route", "show", "table", "all"])),
            bpffs,
            processes: our_processes(),
        }
    }
}
