//! The Traceflow benchmark: time to result of injected inter-node traces (the
//! wall clock of `orchestrate::run`, as `lumen trace` waits for it: start on the
//! source node, inject, long-poll every node, assemble, finish), one at a time
//! and many at once, in a two-node lab. The baseline, measured in the same run
//! and interleaved with the traces so drift hits both alike, is a TCP connect +
//! echo round trip between the same two pods (the lab's probe: connect, one
//! line, the server's answer), sequential and equally concurrent.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use lumen_api::policy::PodRef;
use lumen_api::trace::orchestrate::{self, NodeAgent};
use lumen_api::trace::{TraceDestination, TracePhase, TraceRequest, TraceVerdict};
use lumen_lab::config::{self, LabConfig};
use lumen_lab::netio::{netns, probe};
use lumen_lab::{Lab, LabGuard};

use super::report::{Verdict, print_verdicts, ratio};
use super::stats::percentile;

/// Distinct from the tests' and the demo's labs.
const LAB_NAME: &str = "bench-trace";
const SOURCE: &str = "pod-1-1";
const DESTINATION: &str = "pod-2-1";
/// A port the destination's echo server answers on.
const PORT: u16 = 80;
/// Time to result must stay under this at p99, one at a time and many at once.
const P99_TARGET: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the agents may take to learn the lab's pods after `up`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Untimed traces and probes first: sockets, neighbour entries, caches.
const WARM_UP: usize = 10;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Traces one at a time.
    pub traces: usize,
    /// Traces in flight at once in the concurrent phase.
    pub concurrency: usize,
    /// Rounds of the concurrent phase.
    pub rounds: usize,
}

/// One trace's time to result, and what was wrong with the result if anything
/// (it should be a delivered packet with its six hops).
#[derive(Debug)]
struct Timed {
    elapsed: Duration,
    wrong: Option<String>,
}

/// One phase's samples, traced and baseline, and the wrong results.
#[derive(Debug)]
struct Row {
    phase: String,
    trace: Vec<Duration>,
    probe: Vec<Duration>,
    wrong: Vec<String>,
}

/// What the two measurements need.
#[derive(Debug)]
struct Setup {
    agents: Vec<NodeAgent>,
    source_node: String,
    request: TraceRequest,
    source_netns: PathBuf,
    destination: Ipv4Addr,
}

pub fn run(options: Options) -> Result<()> {
    ensure!(options.traces >= 1, "--traces must be at least 1");
    ensure!(options.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(options.rounds >= 1, "--rounds must be at least 1");
    let bin_dir = config::default_bin_dir();
    println!(
        "trace: injected TCP SYN {SOURCE} -> {DESTINATION}:{PORT} across two nodes, time to \
         result (wall clock of orchestrate::run); {} one at a time, {} at once x {} rounds; \
         baseline: TCP connect + echo round trip between the same pods (the lab's probe); \
         binaries from {}",
        options.traces,
        options.concurrency,
        options.rounds,
        bin_dir.display()
    );
    let lab = lab(bin_dir)?;
    let setup = Setup::new(&lab)?;
    setup.wait_ready()?;
    for _ in 0..WARM_UP {
        setup.trace()?;
        setup.probe_alone()?;
    }

    let mut sequential = Row::new(format!("one at a time ({})", options.traces));
    for _ in 0..options.traces {
        sequential.add(setup.trace()?);
        sequential.probe.push(setup.probe_alone()?);
    }
    let mut concurrent = Row::new(format!(
        "{} at once (x {})",
        options.concurrency, options.rounds
    ));
    for round in 1..=options.rounds {
        let traces = setup.traces_at_once(options.concurrency)?;
        let probes = setup.probes_at_once(options.concurrency)?;
        let times: Vec<Duration> = traces.iter().map(|t| t.elapsed).collect();
        println!(
            "  round {round}/{}: traces p50 {} p99 {}, probes p50 {} p99 {}",
            options.rounds,
            ms(percentile(&times, 50.0)),
            ms(percentile(&times, 99.0)),
            ms(percentile(&probes, 50.0)),
            ms(percentile(&probes, 99.0)),
        );
        for t in traces {
            concurrent.add(t);
        }
        concurrent.probe.extend(probes);
    }
    print_report(&[sequential, concurrent]);
    Ok(())
}

/// A two-node lab with one pod a node; one left by a killed run goes first.
fn lab(bin_dir: PathBuf) -> Result<LabGuard> {
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

fn print_report(rows: &[Row]) {
    println!();
    println!(
        "{:<24} {:>10} {:>10} {:>7}   {:>10} {:>10} {:>7}",
        "phase", "trace p50", "probe p50", "ratio", "trace p99", "probe p99", "ratio"
    );
    for row in rows {
        let (t50, p50) = (row.trace_pct(50.0), row.probe_pct(50.0));
        let (t99, p99) = (row.trace_pct(99.0), row.probe_pct(99.0));
        println!(
            "{:<24} {:>10} {:>10} {:>6.1}x   {:>10} {:>10} {:>6.1}x",
            row.phase,
            ms(t50),
            ms(p50),
            ratio(t50.as_secs_f64(), p50.as_secs_f64()),
            ms(t99),
            ms(p99),
            ratio(t99.as_secs_f64(), p99.as_secs_f64()),
        );
    }
    for row in rows {
        for wrong in row.wrong.iter().take(5) {
            println!("  wrong result, {}: {wrong}", row.phase);
        }
    }
    let mut verdicts: Vec<Verdict> = rows
        .iter()
        .map(|row| {
            let p99 = row.trace_pct(99.0);
            Verdict::new(
                format!("trace p99 <= {}, {}", ms(P99_TARGET), row.phase),
                p99 <= P99_TARGET,
                format!(
                    "{}, {:.1}x the probe's",
                    ms(p99),
                    ratio(p99.as_secs_f64(), row.probe_pct(99.0).as_secs_f64())
                ),
            )
        })
        .collect();
    let total: usize = rows.iter().map(|r| r.trace.len()).sum();
    let wrong: usize = rows.iter().map(|r| r.wrong.len()).sum();
    verdicts.push(Verdict::new(
        "every trace delivered with its 6 hops",
        wrong == 0,
        format!("{wrong} of {total} wrong"),
    ));
    print_verdicts(&verdicts);
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

// === impl Row ===

impl Row {
    fn new(phase: String) -> Self {
        Self {
            phase,
            trace: Vec::new(),
            probe: Vec::new(),
            wrong: Vec::new(),
        }
    }

    fn add(&mut self, timed: Timed) {
        self.trace.push(timed.elapsed);
        self.wrong.extend(timed.wrong);
    }

    fn trace_pct(&self, pct: f64) -> Duration {
        percentile(&self.trace, pct)
    }

    fn probe_pct(&self, pct: f64) -> Duration {
        percentile(&self.probe, pct)
    }
}

// === impl Setup ===

impl Setup {
    fn new(lab: &Lab) -> Result<Self> {
        let source = lab.pod(SOURCE).context("the lab has no pod-1-1")?;
        let pod = |name: &str| PodRef {
            namespace: config::POD_NAMESPACE.to_owned(),
            name: name.to_owned(),
        };
        Ok(Self {
            agents: crate::harness::trace_agents(lab),
            source_node: source.node.clone(),
            request: TraceRequest::tcp(pod(SOURCE), TraceDestination::Pod(pod(DESTINATION)), PORT),
            source_netns: netns::path_for(&source.netns),
            destination: lab.require_address(DESTINATION)?,
        })
    }

    /// Wait until the source node's agent knows the destination pod: the lab
    /// is up once its pods are attached, and each agent reads the cluster
    /// state (the pods' addresses) from the manifests a little later.
    fn wait_ready(&self) -> Result<()> {
        let start = Instant::now();
        loop {
            match orchestrate::run(&self.agents, &self.source_node, &self.request) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() < READY_TIMEOUT => {
                    eprintln!("  not ready after {:?}: {e}", start.elapsed());
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e).context("the lab's agents never became ready"),
            }
        }
    }

    /// One trace, timed, and whether its result is the delivered packet's
    /// whole path (a trace that could not run at all is an error).
    fn trace(&self) -> Result<Timed> {
        let start = Instant::now();
        let result = orchestrate::run(&self.agents, &self.source_node, &self.request)?;
        let elapsed = start.elapsed();
        let complete = result.phase == TracePhase::Succeeded
            && result.verdict == Some(TraceVerdict::Delivered)
            && result.hops.len() == 6;
        let wrong = (!complete).then(|| {
            let hops: Vec<String> = result
                .hops
                .iter()
                .map(|h| format!("{} {} {}", h.node, h.point.name(), h.action))
                .collect();
            format!(
                "trace {} {:?} {:?} after {}, {} hops [{}]{}",
                result.id,
                result.phase,
                result.verdict,
                ms(elapsed),
                hops.len(),
                hops.join(", "),
                result
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        });
        Ok(Timed { elapsed, wrong })
    }

    /// `n` traces started together, each timed.
    fn traces_at_once(&self, n: usize) -> Result<Vec<Timed>> {
        let barrier = Barrier::new(n);
        thread::scope(|s| {
            let workers: Vec<_> = (0..n)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        self.trace()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().map_err(|_| anyhow!("a trace thread panicked"))?)
                .collect()
        })
    }

    /// One probe from a thread of its own in the source pod's namespace.
    fn probe_alone(&self) -> Result<Duration> {
        let mut times = self.probes_at_once(1)?;
        times.pop().context("no probe time")
    }

    /// `n` probes started together, each from a thread in the source pod's
    /// namespace (entered before the start, so only the round trip is timed).
    fn probes_at_once(&self, n: usize) -> Result<Vec<Duration>> {
        let barrier = Barrier::new(n);
        thread::scope(|s| {
            let workers: Vec<_> = (0..n)
                .map(|_| s.spawn(|| probe_from(&self.source_netns, self.destination, &barrier)))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().map_err(|_| anyhow!("a probe thread panicked"))?)
                .collect()
        })
    }
}

/// Enter `netns`, wait for the others, then time one TCP probe of `target`.
fn probe_from(netns: &Path, target: Ipv4Addr, barrier: &Barrier) -> Result<Duration> {
    let entered = netns::enter(netns).with_context(|| format!("entering {}", netns.display()));
    barrier.wait();
    entered?;
    let start = Instant::now();
    probe::probe(target, probe::Proto::Tcp, PORT, PROBE_TIMEOUT)
        .with_context(|| format!("probing {target}:{PORT}"))?;
    Ok(start.elapsed())
}
