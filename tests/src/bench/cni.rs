//! The CNI benchmark: ADD and DEL latency over many pods, one at a time and many at
//! once, Lumen's plugin (talking to a real agent in a one-node lab) against the
//! reference `bridge` + `host-local` plugins from containernetworking-plugins. Both
//! are called the same way, as a runtime does — forked and executed in the node's
//! network namespace (entered between fork and exec, as a runtime living there
//! would run it; not `ip netns exec`, whose mount namespace and `/sys` remount
//! alone take 40–75 ms a call at 20 at once), CNI environment, config on stdin —
//! and timed wall-clock with the process start included.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use lumen_lab::LabGuard;
use lumen_lab::cni_exec::{self, CniCommand, POD_IFNAME};
use lumen_lab::config::{self, LabConfig, MAX_PODS_PER_NODE, POD_NAMESPACE};
use lumen_lab::netio::netns;
use lumen_lab::topology::describe;
use serde_json::json;

use super::netns::Netns;
use super::report::{Verdict, print_verdicts, ratio};
use super::stats::percentile;

const LAB_NAME: &str = "bench-cni";
const REF_NODE: &str = "lbc-node";
const REF_PLUGIN_DIR: &str = "/usr/lib/cni";
/// Lumen's p99 must stay under this in every phase.
const P99_LIMIT: Duration = Duration::from_millis(50);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub pods: usize,
    pub concurrency: usize,
}

/// One pod a plugin attaches: its (empty) namespace, as a runtime creates it.
#[derive(Debug)]
struct Pod {
    name: String,
    container_id: String,
    netns: Netns,
}

/// How to call one plugin for its pods: from which node namespace, which binary,
/// which network config.
#[derive(Debug)]
struct Runtime {
    /// For error messages.
    name: &'static str,
    node_netns: String,
    plugin: PathBuf,
    cni_path: PathBuf,
    config: String,
    pods: Vec<Pod>,
}

/// p50 and p99 of one phase for one plugin.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: Duration,
    p99: Duration,
}

/// One phase's latencies for both plugins.
#[derive(Debug)]
struct Row {
    phase: String,
    lumen: Latency,
    reference: Latency,
}

/// A directory removed on drop: the reference IPAM's state.
#[derive(Debug)]
struct TempDir(PathBuf);

pub fn run(options: Options) -> Result<()> {
    ensure!(
        (1..=MAX_PODS_PER_NODE as usize).contains(&options.pods),
        "--pods must be between 1 and {MAX_PODS_PER_NODE} (one node's /24)"
    );
    ensure!(options.concurrency >= 1, "--concurrency must be at least 1");
    let bin_dir = config::default_bin_dir();
    println!(
        "cni: {} pods, ADD then DEL, sequential and {} at a time; wall-clock per call, \
         process start included; lumen binaries from {}",
        options.pods,
        options.concurrency,
        bin_dir.display()
    );
    let lab = lumen_lab(bin_dir)?;
    let lumen = lumen_runtime(&lab, options.pods)?;
    println!("lumen plugin: {}", lumen.plugin.display());
    let ref_data = TempDir::new()?;
    let ref_node = Netns::add(REF_NODE)?;
    let reference = reference_runtime(&ref_node, &ref_data, options.pods)?;

    let mut rows = Vec::new();
    for (mode, concurrency) in [("sequential", 1), ("concurrent", options.concurrency)] {
        for command in [CniCommand::Add, CniCommand::Del] {
            rows.push(Row {
                phase: format!("{command} {mode} ({concurrency})"),
                lumen: phase_latency(&lumen, command, concurrency)?,
                reference: phase_latency(&reference, command, concurrency)?,
            });
        }
    }
    print_report(&rows);
    Ok(())
}

/// A one-node lab without pods; one left by a killed run goes first.
fn lumen_lab(bin_dir: PathBuf) -> Result<LabGuard> {
    let config = LabConfig {
        name: LAB_NAME.to_owned(),
        nodes: 1,
        pods_per_node: 0,
        bin_dir,
        ..LabConfig::default()
    };
    lumen_lab::down(&config.name, &config.state_root)?;
    Ok(LabGuard::up(&config, &mut |_| {})?)
}

/// Lumen's plugin on the lab's node. The pods' namespaces follow the lab's naming,
/// so `lumen lab down` removes them too if this run is killed.
fn lumen_runtime(lab: &LabGuard, pods: usize) -> Result<Runtime> {
    let node = lab.nodes().first().context("the lab has no node")?.clone();
    let pods = (1..=pods)
        .map(|i| {
            let index = u32::try_from(i)?;
            let name = format!("bench-{i}");
            Ok(Pod {
                container_id: cni_exec::container_id(LAB_NAME, &name),
                netns: Netns::add(&config::pod_netns(LAB_NAME, node.index, index))?,
                name,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Runtime {
        name: "lumen",
        node_netns: node.netns.clone(),
        plugin: config::cni_plugin(&lab.state().bin_dir),
        cni_path: lab.state().bin_dir.clone(),
        config: cni_exec::network_config(&node).to_string(),
        pods,
    })
}

/// The reference plugins in a node namespace of their own, `cni0` as gateway, no
/// masquerade (the benchmark is about attachment, not NAT).
fn reference_runtime(node: &Netns, data: &TempDir, pods: usize) -> Result<Runtime> {
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "ref",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": "10.99.0.0/16" }]],
            "dataDir": data.0,
        },
    });
    let pods = (1..=pods)
        .map(|i| {
            let name = format!("bench-{i}");
            Ok(Pod {
                container_id: cni_exec::container_id("lbc", &name),
                netns: Netns::add(&format!("lbc-p{i}"))?,
                name,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Runtime {
        name: "reference",
        node_netns: node.name().to_owned(),
        plugin: PathBuf::from(REF_PLUGIN_DIR).join("bridge"),
        cni_path: PathBuf::from(REF_PLUGIN_DIR),
        config: config.to_string(),
        pods,
    })
}

/// Run `command` for every pod of `runtime`, `concurrency` calls at a time.
fn phase_latency(runtime: &Runtime, command: CniCommand, concurrency: usize) -> Result<Latency> {
    let next = AtomicUsize::new(0);
    let worker = || -> Result<Vec<Duration>> {
        let mut times = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(pod) = runtime.pods.get(i) else {
                return Ok(times);
            };
            times.push(runtime.call(pod, command)?);
        }
    };
    let times = thread::scope(|s| {
        let workers: Vec<_> = (0..concurrency).map(|_| s.spawn(worker)).collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.join().map_err(|_| anyhow!("a CNI worker panicked"))??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    Ok(Latency {
        p50: percentile(&times, 50.0),
        p99: percentile(&times, 99.0),
    })
}

fn print_report(rows: &[Row]) {
    println!();
    println!(
        "{:<24} {:>10} {:>10} {:>7}   {:>10} {:>10} {:>7}",
        "phase", "lumen p50", "ref p50", "ratio", "lumen p99", "ref p99", "ratio"
    );
    for row in rows {
        println!(
            "{:<24} {:>10} {:>10} {:>6.2}x   {:>10} {:>10} {:>6.2}x",
            row.phase,
            ms(row.lumen.p50),
            ms(row.reference.p50),
            row.p50_ratio(),
            ms(row.lumen.p99),
            ms(row.reference.p99),
            row.p99_ratio()
        );
    }
    let worst = |key: fn(&Row) -> f64| rows.iter().max_by(|a, b| key(a).total_cmp(&key(b)));
    let mut verdicts = Vec::new();
    for (label, key) in [
        ("p50", Row::p50_ratio as fn(&Row) -> f64),
        ("p99", Row::p99_ratio),
    ] {
        if let Some(row) = worst(key) {
            verdicts.push(Verdict::new(
                format!("lumen {label} <= reference in every phase"),
                key(row) <= 1.0,
                format!("worst {:.2}x, {}", key(row), row.phase),
            ));
        }
    }
    if let Some(row) = rows.iter().max_by_key(|row| row.lumen.p99) {
        verdicts.push(Verdict::new(
            format!("lumen p99 < {} in every phase", ms(P99_LIMIT)),
            row.lumen.p99 < P99_LIMIT,
            format!("worst {}, {}", ms(row.lumen.p99), row.phase),
        ));
    }
    print_verdicts(&verdicts);
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

// === impl Row ===

impl Row {
    fn p50_ratio(&self) -> f64 {
        ratio(
            self.lumen.p50.as_secs_f64(),
            self.reference.p50.as_secs_f64(),
        )
    }

    fn p99_ratio(&self) -> f64 {
        ratio(
            self.lumen.p99.as_secs_f64(),
            self.reference.p99.as_secs_f64(),
        )
    }
}

// === impl Runtime ===

impl Runtime {
    /// One plugin call for `pod`, timed from spawn to exit.
    fn call(&self, pod: &Pod, command: CniCommand) -> Result<Duration> {
        let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        let mut cmd = netns::command_in(&config::netns_path(&self.node_netns), &self.plugin)?;
        cmd.env_clear()
            .env("PATH", path)
            .env("CNI_COMMAND", command.to_string())
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", pod.netns.path())
            .env("CNI_IFNAME", POD_IFNAME)
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={}",
                    pod.name
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", describe(&cmd)))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that exits without reading its config fails below with its
            // own message; a broken pipe here adds nothing.
            let _ = stdin.write_all(self.config.as_bytes());
        }
        let out = child.wait_with_output()?;
        let elapsed = start.elapsed();
        if !out.status.success() {
            bail!(
                "{} {command} of {} failed ({}): {} {}",
                self.name,
                pod.name,
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(elapsed)
    }
}

// === impl TempDir ===

impl TempDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("lumen-bench-cni-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.0) {
            eprintln!("lumen-bench: removing {} failed: {err}", self.0.display());
        }
    }
}
