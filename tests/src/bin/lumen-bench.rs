//! `lumen-bench`: Lumen's benchmarks (`cargo xtask bench <name>`). Thin: parses the
//! command line and hands over to `lumen_tests::bench`. Needs root: benchmarks build
//! namespaces and load BPF.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lumen_tests::bench::{
    bpf, cni, datapath, export, memory, metrics, policy, policy_tax, policy_update, rr, trace,
};

#[global_allocator]
static ALLOC: lumen_tests::bench::alloc::Counting = lumen_tests::bench::alloc::Counting;

#[derive(Debug, Parser)]
#[command(about = "Lumen benchmarks: each figure next to its baseline, then a verdict per target")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Pod-to-pod throughput and request/response latency across two nodes: Lumen
    /// vs a flannel-style overlay vs a direct veth pair.
    Datapath {
        /// Rounds over the three setups; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Length of each throughput and RR test.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Lumen with flow tracking and export on, off, or both (the tax, same run).
        #[arg(long, value_enum, default_value = "both")]
        observability: datapath::Observability,
    },
    /// CNI ADD/DEL latency: Lumen vs the reference bridge + host-local plugins.
    Cni {
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Calls in flight in the concurrent phases.
        #[arg(long, default_value_t = 20)]
        concurrency: usize,
    },
    /// Cost of rendering /metrics with many policy rules and flows.
    Metrics {
        #[arg(long, default_value_t = 10_000)]
        rules: usize,
        #[arg(long, default_value_t = 100_000)]
        flows: u64,
        #[arg(long, default_value_t = 21)]
        scrapes: usize,
    },
    /// NetworkPolicy: compile time and memory, and time to enforce one new policy.
    Policy {
        #[arg(long, default_value_t = 40_000)]
        policies: usize,
        #[arg(long, default_value_t = 150_000)]
        pods: usize,
        /// Policies on the node when one more is added.
        #[arg(long, default_value_t = 1_000)]
        present: usize,
        #[arg(long, default_value_t = 100)]
        additions: usize,
    },
    /// Agent RSS and kernel flow-table memory with many active flows.
    Memory {
        #[arg(long, default_value_t = 100_000)]
        flows: u32,
    },
    /// Per-packet cost of each BPF program (BPF_PROG_TEST_RUN).
    Bpf {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Iterations per measurement.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Only the paths whose name contains this text (e.g. "decap").
        #[arg(long)]
        only: Option<String>,
    },
    /// IPFIX records encoded and sent per CPU-second to a UDP sink on loopback:
    /// Lumen's encoder and exporter vs ipfixrw's writer.
    Export {
        /// Records per run for Lumen's senders (ipfixrw gets a tenth).
        #[arg(long, default_value_t = 2_000_000)]
        records: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Traceflow time to result: injected inter-node traces one at a time and many
    /// at once, vs a TCP connect + echo round trip between the same two pods.
    Trace {
        /// Traces (and baseline probes) one at a time.
        #[arg(long, default_value_t = 200)]
        traces: usize,
        /// Traces (and probes) in flight at once in the concurrent phase.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Rounds of the concurrent phase.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// NetworkPolicy's cost per packet: TCP RR between two pods with 10,000
    /// rules in the datapath vs none, in the same run.
    PolicyTax {
        #[arg(long, default_value_t = 10_000)]
        rules: usize,
        #[arg(long, default_value_t = 3)]
        runs: u32,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// A policy change end to end: manifest file -> the kernel's maps decide
    /// by it, in a live lab.
    PolicyUpdate {
        #[arg(long, default_value_t = 1_000)]
        present: usize,
        #[arg(long, default_value_t = 200)]
        changes: usize,
    },
    /// RR echo server inside a namespace (used by `datapath`).
    #[command(hide = true)]
    RrServer {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        port: u16,
    },
    /// RR client inside a namespace, stats as JSON on stdout (used by `datapath`).
    #[command(hide = true)]
    RrClient {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        target: Ipv4Addr,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lumen-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    match args.bench {
        Bench::Datapath {
            runs,
            seconds,
            observability,
        } => datapath::run(datapath::Options {
            runs,
            seconds,
            observability,
        }),
        Bench::Cni { pods, concurrency } => cni::run(cni::Options { pods, concurrency }),
        Bench::Memory { flows } => memory::run(memory::Options { flows }),
        Bench::Policy {
            policies,
            pods,
            present,
            additions,
        } => policy::run(policy::Options {
            policies,
            pods,
            present,
            additions,
        }),
        Bench::Metrics {
            rules,
            flows,
            scrapes,
        } => metrics::run(metrics::Options {
            rules,
            flows,
            scrapes,
        }),
        Bench::Bpf { runs, repeat, only } => bpf::run(bpf::Options { runs, repeat, only }),
        Bench::Export { records, runs } => export::run(export::Options { records, runs }),
        Bench::Trace {
            traces,
            concurrency,
            rounds,
        } => trace::run(trace::Options {
            traces,
            concurrency,
            rounds,
        }),
        Bench::PolicyTax {
            rules,
            runs,
            seconds,
        } => policy_tax::run(policy_tax::Options {
            rules,
            runs,
            seconds,
        }),
        Bench::PolicyUpdate { present, changes } => {
            policy_update::run(policy_update::Options { present, changes })
        }
        Bench::RrServer { netns, port } => rr::serve(&netns, port),
        Bench::RrClient {
            netns,
            target,
            port,
            seconds,
        } => {
            let stats = rr::client(&netns, target, port, seconds)?;
            println!("{}", serde_json::to_string(&stats)?);
            Ok(())
        }
    }
}
