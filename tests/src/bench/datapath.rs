//! The datapath benchmark: pod → pod across two nodes, Lumen (a two-node lab)
//! against a flannel-style overlay and a direct veth pair built in the same run.
//! Every run measures each setup in turn (iperf3 single stream, then RR), so drift
//! on the machine hits all three alike; the report gives medians over runs.

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
const RR_PORT: u16 = 7000;
/// Lumen's throughput must beat flannel's by this factor.
const STREAM_TARGET: f64 = 1.05;
/// Lumen's transactions per second must beat flannel's by this factor.
const RR_TARGET: f64 = 1.10;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub runs: u32,
    pub seconds: u64,
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
    let lab = lumen_lab(bin_dir)?;
    let flannel = Flannel::up()?;
    let direct = DirectVeth::up()?;
    let targets = targets(&lab, &flannel, &direct)?;
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
    Ok(())
}

/// A fresh two-node lab with one pod per node; one left by a killed run goes first.
fn lumen_lab(bin_dir: PathBuf) -> Result<LabGuard> {
    let config = LabConfig {
        name: LAB_NAME.to_owned(),
        nodes: 2,
        pods_per_node: 1,
        bin_dir,
        ..LabConfig::default()
    };
    lumen_lab::down(&config.name, &config.state_root)?;
    Ok(LabGuard::up(&config, &mut |_| {})?)
}

/// Lumen first: the ratios are Lumen over each baseline.
fn targets(lab: &Lab, flannel: &Flannel, direct: &DirectVeth) -> Result<Vec<Target>> {
    let (pod1, pod2) = ("pod-1-1", "pod-2-1");
    let [(flannel_src, _), (flannel_dst, flannel_ip)] = flannel.pods();
    Ok(vec![
        Target {
            name: "lumen",
            src: lab.require_netns(pod1)?,
            dst: lab.require_netns(pod2)?,
            dst_ip: lab.require_address(pod2)?,
        },
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
    ])
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
    let Some(flannel) = baselines.first() else {
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
