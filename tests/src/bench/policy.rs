//! The policy benchmark. Compile: a synthetic cluster (pods spread over
//! namespaces and apps, policies with a realistic mix of pod, namespace and
//! expression selectors, ipBlocks and ports) compiled by the engine, in time
//! and allocated memory, next to compiling the same cluster without policies.
//! Enforce: with a node's datapath loaded, the time from "one policy added" to
//! its rules being in the kernel maps (compile + map writes), with `--present`
//! policies already there, next to re-applying an unchanged state; the time of
//! the compilation alone and the map entries each change wrote say where it
//! goes. The default sizes are the targets'.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use lumen_agent::cluster::{ClusterState, NodeInfo, PodInfo};
use lumen_agent::datapath::{Datapath, FlowSettings};
use lumen_agent::flows::enrich::PolicyRules;
use lumen_agent::policy::PolicyEngine;
use lumen_agent::policy::enforce::Enforcer;
use lumen_api::Ipv4Cidr;
use serde_json::json;

use super::alloc;
use super::report::{Verdict, print_verdicts, ratio};
use super::stats::{median, percentile};

const COMPILE_TARGET_S: f64 = 3.0;
const ENFORCE_TARGET_MS: f64 = 50.0;
const NAMESPACES: usize = 200;
const APPS: usize = 500;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub policies: usize,
    pub pods: usize,
    pub present: usize,
    pub additions: usize,
}

fn pod_ip(i: usize) -> Ipv4Addr {
    // 10.64.0.0/10 holds 4M addresses: room for every synthetic pod.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + 1 + i as u32)
}

/// A cluster of `pods` pods on one node and no policies.
fn cluster(pods: usize) -> ClusterState {
    let mut state = ClusterState::default();
    state.nodes.insert(
        "node-1".into(),
        NodeInfo {
            name: "node-1".into(),
            pod_cidr: Ipv4Cidr::new(Ipv4Addr::new(10, 64, 0, 0), 10).ok(),
            internal_ip: Some(Ipv4Addr::new(192, 0, 2, 11)),
        },
    );
    for n in 0..NAMESPACES {
        state.namespaces.insert(
            format!("ns-{n}"),
            BTreeMap::from([
                ("team".to_owned(), format!("team-{}", n % 20)),
                (
                    "env".to_owned(),
                    ["prod", "staging", "dev"][n % 3].to_owned(),
                ),
            ]),
        );
    }
    for i in 0..pods {
        let ns = format!("ns-{}", i % NAMESPACES);
        let name = format!("pod-{i}");
        let labels = BTreeMap::from([
            ("app".to_owned(), format!("app-{}", i % APPS)),
            (
                "tier".to_owned(),
                ["web", "api", "db", "cache"][i % 4].to_owned(),
            ),
        ]);
        state.pods.insert(
            (ns.clone(), name.clone()),
            PodInfo {
                namespace: ns,
                name,
                node: Some("node-1".into()),
                labels,
                ip: Some(pod_ip(i)),
                ports: Vec::new(),
            },
        );
    }
    state
}

/// Policy `i`: selectors and peers in a mix seen in real clusters.
fn policy(i: usize) -> Result<NetworkPolicy> {
    let ns = format!("ns-{}", i % NAMESPACES);
    let app = format!("app-{}", i % APPS);
    let peer = match i % 4 {
        0 => json!({"podSelector": {"matchLabels": {"app": format!("app-{}", (i + 1) % APPS)}}}),
        1 => json!({"namespaceSelector": {"matchLabels": {"team": format!("team-{}", i % 20)}}}),
        2 => json!({
            "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}]},
            "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}
        }),
        _ => json!({"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}),
    };
    let value = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": format!("policy-{i}"), "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [peer], "ports": [{"protocol": "TCP", "port": 8000 + (i % 100) as i32}]}]
        }
    });
    serde_json::from_value(value).context("synthetic policy")
}

fn with_policies(mut state: ClusterState, n: usize) -> Result<ClusterState> {
    for i in 0..n {
        let p = policy(i)?;
        let key = (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        );
        state.policies.insert(key, p);
    }
    Ok(state)
}

pub fn run(options: Options) -> Result<()> {
    println!(
        "policy: compile {} policies over {} pods ({NAMESPACES} namespaces, {APPS} apps); \
         enforce one added policy with {} present, {} times (needs root: loads the datapath)",
        options.policies, options.pods, options.present, options.additions
    );
    let base = cluster(options.pods);
    let start = Instant::now();
    let _ = PolicyEngine::compile(&base, None);
    let empty_s = start.elapsed().as_secs_f64();
    let state = with_policies(base, options.policies)?;
    let (before, in_use) = (alloc::allocated(), alloc::in_use());
    let start = Instant::now();
    let compiled = PolicyEngine::compile(&state, None);
    let compile_s = start.elapsed().as_secs_f64();
    let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    let compile_mib = mib(alloc::allocated() - before);
    let kept_mib = mib(alloc::in_use().saturating_sub(in_use));
    let isolated = compiled.endpoints().filter(|e| e.ingress.is_some()).count();
    let refused = compiled.rejected.clone();
    let rule_ids = compiled.rules().count();
    // The enforcement below is a node agent's steady state: not beside this.
    drop((compiled, state));

    let enforce = enforce(options)?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p99 = ms(percentile(&enforce.added, 99.0));
    let p99_unchanged = ms(percentile(&enforce.unchanged, 99.0));
    let to_ms = |v: &[Duration]| -> Vec<f64> { v.iter().copied().map(ms).collect() };

    println!();
    println!(
        "{:<52} {:>12} {:>12} {:>8}",
        "", "figure", "baseline", "ratio"
    );
    println!(
        "{:<52} {:>10.2} s {:>10.2} s {:>7.1}x",
        format!(
            "compile {} policies ({isolated} pods isolated)",
            options.policies
        ),
        compile_s,
        empty_s,
        ratio(compile_s, empty_s)
    );
    println!(
        "{:<52} {:>8.1} MiB",
        "allocated while compiling", compile_mib
    );
    println!("{:<52} {:>8.1} MiB", "  held by the result", kept_mib);
    println!(
        "{:<52} {:>12}",
        "  rule ids (rules and default denies)", rule_ids
    );
    if let Some(first) = refused.first() {
        println!(
            "{:<52} {:>12}  (first: {}/{}: {})",
            "  policies refused",
            refused.len(),
            first.namespace,
            first.name,
            first.reason
        );
    }
    println!(
        "{:<52} {:>9.2} ms {:>9.2} ms {:>7.1}x",
        format!(
            "one policy added -> in the maps, p99 ({} present)",
            options.present
        ),
        p99,
        p99_unchanged,
        ratio(p99, p99_unchanged)
    );
    println!(
        "{:<52} {:>9.2} ms",
        "  median",
        median(&to_ms(&enforce.added))
    );
    println!(
        "{:<52} {:>9.2} ms",
        "  of which compiling the cluster (median)",
        median(&to_ms(&enforce.compile))
    );
    println!(
        "{:<52} {:>9.0}",
        "  map entries written per addition (median)",
        median(&enforce.writes)
    );
    print_verdicts(&[
        Verdict::new(
            format!(
                "compile {} policies over {} pods <= {COMPILE_TARGET_S} s",
                options.policies, options.pods
            ),
            compile_s <= COMPILE_TARGET_S,
            format!("{compile_s:.2} s, {compile_mib:.0} MiB allocated, {kept_mib:.0} MiB held"),
        ),
        Verdict::new(
            format!(
                "one policy enforced p99 <= {ENFORCE_TARGET_MS} ms with {} present",
                options.present
            ),
            p99 <= ENFORCE_TARGET_MS,
            format!("{p99:.2} ms"),
        ),
    ]);
    Ok(())
}

/// What the enforcement phase measured, one sample per addition.
struct Enforcement {
    /// `Enforcer::apply` after one policy was added.
    added: Vec<Duration>,
    /// `Enforcer::apply` of the state already in force.
    unchanged: Vec<Duration>,
    /// Compiling the state with the added policy after the state before it,
    /// as `Enforcer::apply` does (measured apart, outside `added`).
    compile: Vec<Duration>,
    /// Entries the added policy's change wrote or removed in the maps.
    writes: Vec<f64>,
}

/// With a node's datapath loaded and `present` policies enforced, add one
/// policy at a time.
fn enforce(options: Options) -> Result<Enforcement> {
    // A small node (the datapath holds 64 rule slots an endpoint).
    let mut dp = Datapath::load()?;
    dp.configure(
        1,
        Ipv4Addr::new(192, 0, 2, 11),
        "10.64.0.0/10".parse()?,
        // The endpoint map spans at most a /16; this bench adds no endpoints to it.
        "10.64.0.0/16".parse()?,
        FlowSettings::default(),
    )?;
    let dp = Mutex::new(dp);
    let enforcer = Enforcer::new(PolicyRules::default());
    let node_pods = 2_000.min(options.pods);
    let mut state = with_policies(cluster(node_pods), options.present)?;
    let local = |_| true;
    enforcer.apply(&state, &dp, local)?;
    let mut previous = PolicyEngine::compile(&state, None);
    let mut out = Enforcement {
        added: Vec::with_capacity(options.additions),
        unchanged: Vec::with_capacity(options.additions),
        compile: Vec::with_capacity(options.additions),
        writes: Vec::with_capacity(options.additions),
    };
    for k in 0..options.additions {
        let start = Instant::now();
        enforcer.apply(&state, &dp, local)?;
        out.unchanged.push(start.elapsed());
        let p = policy(options.present + k)?;
        state.policies.insert(
            (
                p.metadata.namespace.clone().unwrap_or_default(),
                format!("added-{k}"),
            ),
            p,
        );
        let written = policy_writes(&dp);
        let start = Instant::now();
        enforcer.apply(&state, &dp, local)?;
        out.added.push(start.elapsed());
        out.writes.push((policy_writes(&dp) - written) as f64);
        let start = Instant::now();
        let compiled = PolicyEngine::compile(&state, Some(&previous));
        out.compile.push(start.elapsed());
        previous = compiled;
    }
    Ok(out)
}

fn policy_writes(dp: &Mutex<Datapath>) -> u64 {
    dp.lock().map_or(0, |dp| dp.policy_writes())
}
