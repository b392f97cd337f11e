//! The BPF benchmark: per-packet cost of each datapath program through
//! `BPF_PROG_TEST_RUN`, minus the cost of the empty `noop` program measured the
//! same way in the same run, so the figure is the program's own work rather than
//! the test harness's. Each path is measured with flow tracking on (the figure
//! judged) and off, and the resizing helper the overlay paths call is measured
//! alone, so the output shows what is Lumen's and what is the kernel's. The paths
//! that resize the packet can only be timed one run per call; one path that does
//! not is timed both ways, so the output also shows what that timing adds. The
//! datapath is loaded and its endpoints attached inside a namespace of the
//! benchmark's own.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use aya::programs::{TestRun, TestRunOptions};
use lumen_agent::datapath::abi::{EndpointValue, names};
use lumen_agent::datapath::{Datapath, FlowSettings, Iface};
use lumen_api::{Identity, Ipv4Cidr};
use lumen_lab::config::{EXTERNAL_IP, cluster_cidr, node_ip, pod_cidr, underlay_cidr};
use lumen_lab::netio::netns as enter_netns;

use super::netns::Netns;
use super::packet::{padded, tcp_syn, vxlan_frame};
use super::report::{Verdict, print_verdicts, ratio};
use super::stats::median;

const NETNS: &str = "lbb-ns";
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
const TC_ACT_OK: u32 = 0;
/// Each measured path must cost at most this much above `noop`.
const TARGET_NS: f64 = 100.0;
/// The VXLAN device's index only has to be non-zero: test runs never transmit.
const VXLAN_IFINDEX: u32 = 1;
const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// The node's uplink, and the VXLAN port the datapath encapsulates to.
const UPLINK: &str = "lbb-up";
const VXLAN_PORT: u16 = 4789;

#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub repeat: u32,
    /// Only the cases whose name contains this.
    pub only: Option<String>,
}

/// One path through one program.
#[derive(Debug)]
struct Case {
    name: &'static str,
    program: &'static str,
    packet: Vec<u8>,
    /// The counter that proves the packet took the path named: it must advance once
    /// per iteration. None for the early exit, which counts nothing and, not being a
    /// real path, is not judged against the target.
    counter: Option<&'static str>,
    /// How the case is timed.
    timing: Timing,
    /// What the case's figure is for.
    role: Role,
}

/// How a case is timed with BPF_PROG_TEST_RUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// `repeat` iterations in one call: the kernel runs the program again and
    /// again on the same packet, warm.
    Repeated,
    /// One run per call, and `noop` alike, so the timer's own cost cancels out:
    /// the program changes the packet's length (encapsulation, decapsulation),
    /// and a repeated run would see its own output. Each run starts after a
    /// system call and a fresh packet, so it runs colder.
    OnePerCall,
}

/// What a case's figure is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A datapath path, judged against the target when it has a counter.
    Path,
    /// A path measured again the way the resizing paths are timed
    /// (`Timing::OnePerCall`), for comparison with its judged figure: how much of
    /// a resizing path's cost is the timing's. Not judged.
    TimingReference,
    /// A kernel helper alone: must return TC_ACT_OK, is measured once (flow
    /// tracking does not apply) and not judged.
    Helper,
}

/// One measurement of a program: mean ns per iteration, iterations, and the
/// highest verdict returned (TC_ACT_OK, 0, only if every call returned it).
struct Measured {
    ns: f64,
    iterations: u32,
    verdict: u32,
}

/// What one case measured in each run.
#[derive(Debug, Clone, Default)]
struct Samples {
    noop: Vec<f64>,
    program: Vec<f64>,
    /// The program's ns with flow tracking off.
    no_flows: Vec<f64>,
}

/// Keeps `kernel.bpf_stats_enabled` at 0 while measuring (stats add ~80 ns per run)
/// and puts back what was there.
#[derive(Debug)]
struct StatsOff {
    previous: Option<String>,
}

pub fn run(options: Options) -> Result<()> {
    let ns = Netns::add(NETNS)?;
    let pod_a = pod_ip(1, 2);
    let pod_b = pod_ip(1, 3);
    let mut endpoints = Vec::new();
    for (host, peer, ip) in [("lbb-a", "lbb-pa", pod_a), ("lbb-b", "lbb-pb", pod_b)] {
        ns.veth(host, peer, None, None)?;
        ns.ip(&["link", "set", host, "up"])?;
        endpoints.push((host, ip, ns.ifindex(host)?));
    }
    // The uplink from_pod encapsulates for; its MTU is what sends a packet too
    // big for it to the VXLAN device.
    let uplink_addr = format!("{}/{}", node_ip(1), underlay_cidr().prefix());
    let uplink = ns.uplink(UPLINK, "lbb-upp", &uplink_addr)?;
    // Before any thread exists: threads started later inherit the namespace.
    enter_netns::enter(&ns.path())?;
    let stats = StatsOff::ensure()?;

    let mut dp = Datapath::load()?;
    dp.configure(
        VXLAN_IFINDEX,
        node_ip(1),
        cluster_cidr(),
        pod_cidr(1),
        FlowSettings::default(),
    )?;
    // As the agent routes a remote node: its pod CIDR (an array slot) and its
    // own address (the trie), so every path pays the lookups it would.
    dp.set_remote(pod_cidr(2), node_ip(2))?;
    dp.set_remote(Ipv4Cidr::host(node_ip(2)), node_ip(2))?;
    dp.attach_underlay(uplink, VXLAN_PORT)?;
    for (host, ip, ifindex) in endpoints {
        let identity = Identity::for_pod(cluster_cidr(), ip).context("pod outside the cluster")?;
        let value = EndpointValue {
            ifindex,
            identity: identity.0,
            mac: POD_MAC,
            host_mac: HOST_MAC,
            flags: 0,
        };
        dp.add_endpoint(host, Iface::Existing, ip, value)?;
    }

    let mut cases = cases(pod_a, pod_b);
    if let Some(only) = &options.only {
        cases.retain(|case| case.name.contains(only.as_str()));
        if cases.is_empty() {
            bail!("no path's name contains {only:?}");
        }
    }
    println!(
        "bpf: per-packet cost with BPF_PROG_TEST_RUN, median of {} runs, {} iterations each, \
         kernel.bpf_stats_enabled=0{}",
        options.runs,
        options.repeat,
        stats.note()
    );
    let mut samples = vec![Samples::default(); cases.len()];
    for _ in 0..options.runs {
        for (case, samples) in cases.iter().zip(&mut samples) {
            samples
                .noop
                .push(measure(&mut dp, names::NOOP, case, options.repeat)?.ns);
            samples
                .program
                .push(measure_path(&mut dp, case, options.repeat)?);
            if case.role != Role::Helper {
                dp.set_flow_tracking(false)?;
                let no_flows = measure_path(&mut dp, case, options.repeat);
                dp.set_flow_tracking(true)?;
                samples.no_flows.push(no_flows?);
            }
        }
    }
    print_report(&cases, &samples);
    Ok(())
}

/// [`measure`], checked: the packet took the path named (its counter moved
/// once per iteration), or the reference helper succeeded.
fn measure_path(dp: &mut Datapath, case: &Case, repeat: u32) -> Result<f64> {
    let before = counter(dp, case.counter);
    let measured = measure(dp, case.program, case, repeat)?;
    let advanced = counter(dp, case.counter) - before;
    if case.counter.is_some() && advanced != u64::from(measured.iterations) {
        bail!(
            "{}: counter {:?} advanced by {advanced} in {} iterations: \
             the packet did not take the path measured",
            case.name,
            case.counter,
            measured.iterations,
        );
    }
    if case.role == Role::Helper && measured.verdict != TC_ACT_OK {
        bail!(
            "{}: returned {} (the helper failed)",
            case.name,
            measured.verdict
        );
    }
    Ok(measured.ns)
}

fn pod_ip(node: u32, host: u8) -> Ipv4Addr {
    let [a, b, c, _] = pod_cidr(node).addr().octets();
    Ipv4Addr::new(a, b, c, host)
}

fn cases(pod_a: Ipv4Addr, pod_b: Ipv4Addr) -> Vec<Case> {
    let remote = pod_ip(2, 2);
    let case = |name, program, (src, dst), counter| Case {
        name,
        program,
        packet: tcp_syn(POD_MAC, HOST_MAC, src, dst, 40000, 80),
        counter,
        timing: Timing::Repeated,
        role: Role::Path,
    };
    let decap_frame = vxlan_frame(
        node_ip(2),
        node_ip(1),
        VXLAN_PORT,
        Identity::for_pod(cluster_cidr(), remote).map_or(0, |i| i.0),
        &tcp_syn(POD_MAC, HOST_MAC, remote, pod_a, 40000, 80),
    );
    vec![
        case(
            "from_pod -> local pod (redirect to peer)",
            names::FROM_POD,
            (pod_a, pod_b),
            Some("local_redirect"),
        ),
        Case {
            timing: Timing::OnePerCall,
            role: Role::TimingReference,
            ..case(
                "from_pod -> local pod, timed one run per call",
                names::FROM_POD,
                (pod_a, pod_b),
                Some("local_redirect"),
            )
        },
        Case {
            timing: Timing::OnePerCall,
            ..case(
                "from_pod -> remote pod (VXLAN in BPF, to uplink)",
                names::FROM_POD,
                (pod_a, remote),
                Some("tunnelled"),
            )
        },
        Case {
            packet: padded(tcp_syn(POD_MAC, HOST_MAC, pod_a, remote, 40000, 80), 1500),
            ..case(
                "from_pod -> remote pod, too big (via device)",
                names::FROM_POD,
                (pod_a, remote),
                Some("tunnelled_via_device"),
            )
        },
        case(
            "from_pod -> external (host stack)",
            names::FROM_POD,
            (pod_a, EXTERNAL_IP),
            Some("to_stack"),
        ),
        case(
            "to_pod (host stack -> pod)",
            names::TO_POD,
            (EXTERNAL_IP, pod_a),
            Some("to_pod"),
        ),
        // Each iteration starts without a tunnel key (the counter proves it), so this
        // is the path of host-stack packets routed to a remote pod.
        case(
            "to_overlay, host stack -> remote pod",
            names::TO_OVERLAY,
            (node_ip(1), remote),
            Some("host_tunnelled"),
        ),
        case(
            "from_overlay, no tunnel metadata (early exit)",
            names::FROM_OVERLAY,
            (remote, pod_a),
            None,
        ),
        Case {
            name: "from_underlay, VXLAN for a local pod (decap)",
            program: names::FROM_UNDERLAY,
            packet: decap_frame.clone(),
            counter: Some("overlay_delivered"),
            timing: Timing::OnePerCall,
            role: Role::Path,
        },
        Case {
            name: "kernel alone: grow by VXLAN (encap's helper)",
            program: names::GROW_ONLY,
            packet: tcp_syn(POD_MAC, HOST_MAC, pod_a, remote, 40000, 80),
            counter: None,
            timing: Timing::OnePerCall,
            role: Role::Helper,
        },
        Case {
            name: "kernel alone: shrink by VXLAN (decap's helper)",
            program: names::SHRINK_ONLY,
            packet: decap_frame,
            counter: None,
            timing: Timing::OnePerCall,
            role: Role::Helper,
        },
    ]
}

/// Calls made for a case timed one run per call, per `repeat` iterations of the others.
const CALLS_PER_REPEAT: u32 = 50;

/// Mean nanoseconds per iteration of `program` on `case`'s packet, as the kernel
/// reports it.
fn measure(dp: &mut Datapath, program: &'static str, case: &Case, repeat: u32) -> Result<Measured> {
    let program = dp.program(program)?;
    if case.timing == Timing::Repeated {
        let result = program.test_run(TestRunOptions {
            data_in: Some(&case.packet),
            repeat,
            ..TestRunOptions::new()
        })?;
        return Ok(Measured {
            ns: result.duration.as_nanos() as f64,
            iterations: repeat,
            verdict: result.return_value,
        });
    }
    let calls = (repeat / CALLS_PER_REPEAT).max(1);
    let mut total = 0.0;
    let mut verdict = TC_ACT_OK;
    for _ in 0..calls {
        let result = program.test_run(TestRunOptions {
            data_in: Some(&case.packet),
            ..TestRunOptions::new()
        })?;
        total += result.duration.as_nanos() as f64;
        verdict = verdict.max(result.return_value);
    }
    Ok(Measured {
        ns: total / f64::from(calls),
        iterations: calls,
        verdict,
    })
}

/// The total of datapath counter `name` (0 for None).
fn counter(dp: &Datapath, name: Option<&str>) -> u64 {
    dp.counters()
        .into_iter()
        .find(|(n, _)| Some(*n) == name)
        .map_or(0, |(_, total)| total)
}

fn print_report(cases: &[Case], samples: &[Samples]) {
    println!();
    println!(
        "{:<48} {:>10} {:>8} {:>8} {:>8} {:>9}",
        "median", "program ns", "noop ns", "x noop", "net ns", "no flows"
    );
    let net = |program: &[f64], noop: &[f64]| {
        let net: Vec<f64> = program.iter().zip(noop).map(|(p, n)| p - n).collect();
        median(&net)
    };
    let mut verdicts = Vec::new();
    for (case, samples) in cases.iter().zip(samples) {
        let (program, noop) = (median(&samples.program), median(&samples.noop));
        let cost = net(&samples.program, &samples.noop);
        let no_flows = if case.role == Role::Helper {
            "-".to_owned()
        } else {
            format!("{:.1}", net(&samples.no_flows, &samples.noop))
        };
        println!(
            "{:<48} {program:>10.1} {noop:>8.1} {:>7.2}x {cost:>8.1} {no_flows:>9}",
            case.name,
            ratio(program, noop)
        );
        if case.role == Role::Path && case.counter.is_some() {
            verdicts.push(Verdict::new(
                format!("{} <= {TARGET_NS:.0} ns", case.name),
                cost <= TARGET_NS,
                format!("{cost:.1} ns above noop"),
            ));
        }
    }
    println!(
        "net ns: above noop, flow tracking on (judged); no flows: the same path with flow \
         tracking off. \"kernel alone\" is bpf_skb_adjust_room by itself, as the overlay paths \
         call it: the part of their cost that is the kernel's. \"timed one run per call\" is a \
         repeated path timed as the resizing paths and the helper must be (each run after a \
         system call, on a fresh packet): the difference from its repeated figure is what that \
         timing adds, not judged."
    );
    println!(
        "note: from_overlay's delivery path needs tunnel metadata on the skb, which \
         BPF_PROG_TEST_RUN cannot supply; only its early exit is measured, and not judged"
    );
    print_verdicts(&verdicts);
}

// === impl StatsOff ===

impl StatsOff {
    fn ensure() -> Result<Self> {
        let read = || {
            std::fs::read_to_string(STATS_SYSCTL).with_context(|| format!("reading {STATS_SYSCTL}"))
        };
        let value = read()?.trim().to_owned();
        if value == "0" {
            return Ok(Self { previous: None });
        }
        std::fs::write(STATS_SYSCTL, "0")
            .with_context(|| format!("writing 0 to {STATS_SYSCTL}"))?;
        if read()?.trim() != "0" {
            bail!("{STATS_SYSCTL} stays at {value}: another process holds BPF stats enabled");
        }
        Ok(Self {
            previous: Some(value),
        })
    }

    fn note(&self) -> String {
        match &self.previous {
            Some(value) => format!(" (was {value}; restored afterwards)"),
            None => String::new(),
        }
    }
}

impl Drop for StatsOff {
    fn drop(&mut self) {
        if let Some(value) = &self.previous
            && let Err(err) = std::fs::write(STATS_SYSCTL, value)
        {
            eprintln!("lumen-bench: restoring {STATS_SYSCTL} to {value} failed: {err}");
        }
    }
}
