//! The datapath benchmark: pod → pod across two nodes, Lumen (a two-node lab)
//! against a flannel-style overlay and a direct veth pair built in the same run.
//! With `--observability both` there are two Lumen labs, one tracking every flow
//! and exporting IPFIX to the lab's collector and one with flow tracking off, so
//! the observability tax is measured in the same run. Every run measures each
//! setup in turn (iperf3 single stream, then RR), so drift on the machine hits all
//! alike; the report gives medians over runs.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Result;
use lumen_lab::config::{self, LabConfig};
use lumen_lab::netio::rr::RrStats;
use lumen_lab::{Lab, LabGuard};

use super::baseline::{DirectVeth, Flannel};
use super::report::{Verdict, print_verdicts, ratio};
use super::stats::median;
use super::{iperf, rr};

/// The lab's name: distinct from the demo's and the tests', so it never collides.
const LAB_NAME: &str = "bench";
const LAB_OFF_NAME: &str = "bench-off";
const RR_PORT: u16 = 7000;
/// Lumen's throughput must beat flannel's by this factor.
const STREAM_TARGET: f64 = 1.05;
/// Lumen's transactions per second must beat flannel's by this factor.
const RR_TARGET: f64 = 1.10;
/// Observability on must keep this share of throughput and transactions.
const TAX_TARGET: f64 = 0.97;

/// Which Lumen datapaths to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Observability {
    /// Flow table, pipeline and IPFIX export on.
    On,
    /// Flow tracking off in the datapath, no export.
    Off,
    /// Both, and the ratio between them (the observability tax).
    Both,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub runs: u32,
    pub seconds: u64,
    pub observability: Observability,
}

/// One pod-to-pod path: client namespace, server namespace, server address.
#[derive(Debug)]
struct Target {
    name: &'static str,
    src: String,
    dst: String,
    dst_ip: Ipv4Addr,
}

/// Per-run figures of one target.
#[derive(Debug, Default, Clone)]
struct Samples {
    gbps: Vec<f64>,
    rr_per_second: Vec<f64>,
    rr_p50_us: Vec<f64>,
    rr_p99_us: Vec<f64>,
}

/// Medians of one target's samples.
#[derive(Debug, Clone, Copy)]
struct Figures {
    gbps: f64,
    rr_per_second: f64,
    rr_p50_us: f64,
    rr_p99_us: f64,
}

pub fn run(options: Options) -> Result<()> {
    let bin_dir = config::default_bin_dir();
    println!(
        "datapath: pod -> pod across two nodes, {} runs x {} s per test; iperf3 one TCP \
         stream; RR one-byte transactions, client and server pinned to one CPU; \
         binaries from {}",
        options.runs,
        options.seconds,
        bin_dir.display()
    );
    let mut labs = Vec::new();
    if options.observability != Observability::Off {
        labs.push(("lumen", lumen_lab(LAB_NAME, bin_dir.clone(), true)?));
    }
    if options.observability != Observability::On {
        labs.push(("lumen (no obs)", lumen_lab(LAB_OFF_NAME, bin_dir, false)?));
    }
    let flannel = Flannel::up()?;
    let direct = DirectVeth::up()?;
    let targets = targets(&labs, &flannel, &direct)?;
    // Declared after the setups, so the servers stop before their namespaces go.
    let _servers = targets
        .iter()
        .map(|t| rr::start_server(&config::netns_path(&t.dst), RR_PORT))
        .collect::<Result<Vec<_>>>()?;
    // Fills ARP and neighbour caches and proves every path works before timing.
    for t in &targets {
        rr::run_client(&config::netns_path(&t.src), t.dst_ip, RR_PORT, 1)?;
    }

    let mut samples = vec![Samples::default(); targets.len()];
    for run in 1..=options.runs {
        for (t, s) in targets.iter().zip(&mut samples) {
            let gbps = iperf::stream_gbps(&t.src, &t.dst, t.dst_ip, options.seconds)?;
            let rr = rr::run_client(
                &config::netns_path(&t.src),
                t.dst_ip,
                RR_PORT,
                options.seconds,
            )?;
            println!(
                "  run {run}/{} {:<12} stream {gbps:6.2} Gbit/s   RR {:8.0}/s  p50 {:7.1} us  p99 {:7.1} us",
                options.runs, t.name, rr.per_second, rr.p50_us, rr.p99_us
            );
            s.push(gbps, &rr);
        }
    }
    let figures: Vec<Figures> = samples.iter().map(Samples::medians).collect();
    print_report(&targets, &figures);
    if options.observability == Observability::Both {
        print_tax(&figures[0], &figures[1]);
    }
    Ok(())
}

/// A fresh two-node lab with one pod per node; one left by a killed run goes first.
/// With `observe`, every flow is tracked and exported to the lab's collector.
fn lumen_lab(name: &str, bin_dir: PathBuf, observe: bool) -> Result<LabGuard> {
    let config = LabConfig {
        name: name.to_owned(),
        nodes: 2,
        pods_per_node: 1,
        bin_dir,
        collector: observe,
        agent_args: if observe {
            Vec::new()
        } else {
            vec!["--observability=off".to_owned()]
        },
        ..LabConfig::default()
    };
    lumen_lab::down(&config.name, &config.state_root)?;
    Ok(LabGuard::up(&config, &mut |_| {})?)
}

/// Lumen first: the ratios are Lumen over each baseline.
fn targets(
    labs: &[(&'static str, LabGuard)],
    flannel: &Flannel,
    direct: &DirectVeth,
) -> Result<Vec<Target>> {
    let (pod1, pod2) = ("pod-1-1", "pod-2-1");
    let [(flannel_src, _), (flannel_dst, flannel_ip)] = flannel.pods();
    let mut targets = labs
        .iter()
        .map(|(name, guard)| {
            let lab: &Lab = guard.lab();
            Ok(Target {
                name,
                src: lab.require_netns(pod1)?,
                dst: lab.require_netns(pod2)?,
                dst_ip: lab.require_address(pod2)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    targets.extend([
        Target {
            name: "flannel",
            src: flannel_src.to_owned(),
            dst: flannel_dst.to_owned(),
            dst_ip: flannel_ip,
        },
        Target {
            name: "direct veth",
            src: direct.a().to_owned(),
            dst: direct.b().to_owned(),
            dst_ip: DirectVeth::B_IP,
        },
    ]);
    Ok(targets)
}

/// Observability on over off: what tracking, the pipeline and export cost.
fn print_tax(on: &Figures, off: &Figures) {
    let r = on.ratios(off);
    println!(
        "{:<20} {:>13.2}x {:>11.2}x {:>11.2}x {:>11.2}x",
        "obs on / off", r.gbps, r.rr_per_second, r.rr_p50_us, r.rr_p99_us
    );
    print_verdicts(&[
        Verdict::new(
            format!("observability tax: stream on/off >= {TAX_TARGET:.2}"),
            r.gbps >= TAX_TARGET,
            format!("{:.2}x: {:.2} vs {:.2} Gbit/s", r.gbps, on.gbps, off.gbps),
        ),
        Verdict::new(
            format!("observability tax: RR on/off >= {TAX_TARGET:.2}"),
            r.rr_per_second >= TAX_TARGET,
            format!(
                "{:.2}x: {:.0} vs {:.0} transactions/s",
                r.rr_per_second, on.rr_per_second, off.rr_per_second
            ),
        ),
    ]);
}

fn print_report(targets: &[Target], figures: &[Figures]) {
    println!();
    println!(
        "{:<20} {:>14} {:>12} {:>12} {:>12}",
        "median", "stream Gbit/s", "RR trans/s", "RR p50 us", "RR p99 us"
    );
    for (t, f) in targets.iter().zip(figures) {
        println!(
            "{:<20} {:>14.2} {:>12.0} {:>12.1} {:>12.1}",
            t.name, f.gbps, f.rr_per_second, f.rr_p50_us, f.rr_p99_us
        );
    }
    let [lumen, baselines @ ..] = figures else {
        return;
    };
    for (t, base) in targets.iter().skip(1).zip(baselines) {
        let r = lumen.ratios(base);
        println!(
            "{:<20} {:>13.2}x {:>11.2}x {:>11.2}x {:>11.2}x",
            format!("lumen / {}", t.name),
            r.gbps,
            r.rr_per_second,
            r.rr_p50_us,
            r.rr_p99_us
        );
    }
    let Some(flannel) = targets
        .iter()
        .skip(1)
        .zip(baselines)
        .find(|(t, _)| t.name == "flannel")
        .map(|(_, f)| f)
    else {
        return;
    };
    let r = lumen.ratios(flannel);
    print_verdicts(&[
        Verdict::new(
            format!("stream lumen/flannel >= {STREAM_TARGET:.2}"),
            r.gbps >= STREAM_TARGET,
            format!(
                "{:.2}x: {:.2} vs {:.2} Gbit/s",
                r.gbps, lumen.gbps, flannel.gbps
            ),
        ),
        Verdict::new(
            format!("RR lumen/flannel >= {RR_TARGET:.2}"),
            r.rr_per_second >= RR_TARGET,
            format!(
                "{:.2}x: {:.0} vs {:.0} transactions/s",
                r.rr_per_second, lumen.rr_per_second, flannel.rr_per_second
            ),
        ),
    ]);
}

// === impl Samples ===

impl Samples {
    fn push(&mut self, gbps: f64, rr: &RrStats) {
        self.gbps.push(gbps);
        self.rr_per_second.push(rr.per_second);
        self.rr_p50_us.push(rr.p50_us);
        self.rr_p99_us.push(rr.p99_us);
    }

    fn medians(&self) -> Figures {
        Figures {
            gbps: median(&self.gbps),
            rr_per_second: median(&self.rr_per_second),
            rr_p50_us: median(&self.rr_p50_us),
            rr_p99_us: median(&self.rr_p99_us),
        }
    }
}

// === impl Figures ===

impl Figures {
    /// Each figure of `self` over the same figure of `base`.
    fn ratios(&self, base: &Self) -> Self {
        Self {
            gbps: ratio(self.gbps, base.gbps),
            rr_per_second: ratio(self.rr_per_second, base.rr_per_second),
            rr_p50_us: ratio(self.rr_p50_us, base.rr_p50_us),
            rr_p99_us: ratio(self.rr_p99_us, base.rr_p99_us),
        }
    }
}
