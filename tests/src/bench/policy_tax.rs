//! The policy tax: TCP request/response between two pods on different nodes
//! in a lab with 10,000 NetworkPolicy rules in the datapath against the same
//! lab with none, in the same run (alternating). The rules sit on filler pods
//! of the server's node (manifest objects with addresses of its pod CIDR, 64
//! ingress rules each, the most an endpoint holds), and the measured server
//! itself is isolated by one more policy that admits the client, so its flow
//! is decided against the policy maps.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lumen_lab::config::{self, LabConfig};
use lumen_lab::{Lab, LabGuard};

use super::report::{Verdict, print_verdicts, ratio};
use super::rr;
use super::stats::median;

const WITH: &str = "bench-pol";
const WITHOUT: &str = "bench-nopol";
const RR_PORT: u16 = 7000;
/// Rules an endpoint holds per direction (`MAX_RULES_PER_DIRECTION`).
const RULES_PER_POD: usize = 64;
/// Transactions with the rules must keep this share of those without.
const TARGET: f64 = 0.98;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub rules: usize,
    pub runs: u32,
    pub seconds: u64,
}

pub fn run(options: Options) -> Result<()> {
    let fillers = options.rules.div_ceil(RULES_PER_POD);
    if fillers > 200 {
        bail!("at most 200 filler pods fit the node's /24: ask for at most 12800 rules");
    }
    println!(
        "policy tax: TCP RR pod-1-1 -> pod-2-1 across nodes, {} runs x {} s, with {} rules \
         ({fillers} isolated pods x {RULES_PER_POD}) + the server's own policy vs no policy",
        options.runs,
        options.seconds,
        fillers * RULES_PER_POD
    );
    let with = lab(WITH)?;
    let without = lab(WITHOUT)?;
    install_rules(with.lab(), fillers)?;
    let targets = [("with rules", with.lab()), ("no policy", without.lab())];
    let _servers = targets
        .iter()
        .map(|(_, l)| rr::start_server(&config::netns_path(&l.require_netns("pod-2-1")?), RR_PORT))
        .collect::<Result<Vec<_>>>()?;
    for (_, l) in &targets {
        rr::run_client(
            &config::netns_path(&l.require_netns("pod-1-1")?),
            l.require_address("pod-2-1")?,
            RR_PORT,
            1,
        )?;
    }
    let mut tps = [Vec::new(), Vec::new()];
    let mut p50 = [Vec::new(), Vec::new()];
    for run in 1..=options.runs {
        for (i, (name, l)) in targets.iter().enumerate() {
            let stats = rr::run_client(
                &config::netns_path(&l.require_netns("pod-1-1")?),
                l.require_address("pod-2-1")?,
                RR_PORT,
                options.seconds,
            )?;
            println!(
                "  run {run}/{} {name:<11} RR {:8.0}/s  p50 {:6.1} us  p99 {:6.1} us",
                options.runs, stats.per_second, stats.p50_us, stats.p99_us
            );
            tps[i].push(stats.per_second);
            p50[i].push(stats.p50_us);
        }
    }
    let (with_tps, without_tps) = (median(&tps[0]), median(&tps[1]));
    let (with_p50, without_p50) = (median(&p50[0]), median(&p50[1]));
    println!();
    println!("{:<12} {:>12} {:>10}", "setup", "RR trans/s", "p50 us");
    println!("{:<12} {with_tps:>12.0} {with_p50:>10.1}", "with rules");
    println!(
        "{:<12} {without_tps:>12.0} {without_p50:>10.1}",
        "no policy"
    );
    let r = ratio(with_tps, without_tps);
    println!(
        "{:<12} {r:>11.2}x {:>9.2}x",
        "ratio",
        ratio(with_p50, without_p50)
    );
    print_verdicts(&[Verdict::new(
        format!(
            "policy tax: RR with {} rules / none >= {TARGET:.2}",
            fillers * RULES_PER_POD
        ),
        r >= TARGET,
        format!("{r:.3}"),
    )]);
    Ok(())
}

/// A two-node lab of one pod per node; one left by a killed run goes first.
pub(super) fn lab(name: &str) -> Result<LabGuard> {
    let config = LabConfig {
        name: name.to_owned(),
        nodes: 2,
        pods_per_node: 1,
        bin_dir: config::default_bin_dir(),
        ..LabConfig::default()
    };
    lumen_lab::down(&config.name, &config.state_root)?;
    Ok(LabGuard::up(&config, &mut |_| {})?)
}

/// Filler pods on node-2, each isolated by a policy of 64 ingress rules, and a
/// policy admitting pod-1-1 to pod-2-1; returns once node-2 enforces them all.
fn install_rules(lab: &Lab, fillers: usize) -> Result<()> {
    let dir = lab.state().manifests_dir();
    let server = lab.require_address("pod-2-1")?;
    let [a, b, c, _] = server.octets();
    let mut yaml = String::new();
    for i in 0..fillers {
        filler_pod(&mut yaml, i, Ipv4Addr::new(a, b, c, 50 + i as u8));
        let _ = write!(
            yaml,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: \
             filler-{i}, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{filler: \
             \"{i}\"}}}}\n  ingress:\n"
        );
        for r in 0..RULES_PER_POD {
            let _ = writeln!(
                yaml,
                "  - from: [{{podSelector: {{matchLabels: {{app: pod-1-1}}}}}}]\n    ports: \
                 [{{protocol: TCP, port: {}}}]",
                10_000 + r
            );
        }
    }
    yaml.push_str(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, \
         namespace: default}\nspec:\n  podSelector: {matchLabels: {app: pod-2-1}}\n  ingress:\n  \
         - from: [{podSelector: {matchLabels: {app: pod-1-1}}}]\n",
    );
    std::fs::write(dir.join("bench-policy-tax.yaml"), yaml).context("writing the policies")?;
    let log = &lab.node("node-2").context("node-2")?.agent_log;
    wait_enforced(log, fillers + 1)
}

/// Filler pod `i` on node-2 at `ip`, labelled `filler: "i"`, as a manifest
/// document appended to `yaml`.
pub(super) fn filler_pod(yaml: &mut String, i: usize, ip: Ipv4Addr) {
    let _ = write!(
        yaml,
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: filler-{i}, namespace: default, \
         labels: {{filler: \"{i}\"}}}}\nspec: {{nodeName: node-2, containers: [{{name: c, \
         image: none}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n"
    );
}

/// Until the agent logs a policy enforced on `endpoints` isolated endpoints.
fn wait_enforced(log: &Path, endpoints: usize) -> Result<()> {
    let want = format!("isolated_endpoints={endpoints}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let text = plain(&std::fs::read_to_string(log).unwrap_or_default());
        if text
            .lines()
            .any(|l| l.contains("policy enforced") && l.contains(&want))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "node-2 did not enforce {endpoints} isolated endpoints within 60 s (see {})",
        log.display()
    )
}

/// `text` without ANSI colour sequences (the agent's log colours its fields).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
