//! IPAM against a real agent that is killed with SIGKILL: allocations, endpoints
//! and pod connectivity survive a restart, and 500 random ADDs and DELs around a
//! kill never hand one address to two attached containers nor leak one.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use lumen_api::cni::IpamState;
use lumen_lab::Lab;
use lumen_tests::harness;
use lumen_tests::peers::poll_until;
use serde_json::Value;
use support::{NODE, NodeView, PodNetns, Runtime};

const VERSION: &str = "1.1.0";
/// How long a restarted agent gets to answer `/healthz` (it loads BPF first).
const AGENT_READY: Duration = Duration::from_secs(15);

/// SIGKILL `pid` and wait until it is gone (reaped, if it is our child: the lab
/// was started from this process).
fn kill_9(pid: u32) {
    let raw = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) and waitpid(2) take plain integers and a valid out pointer.
    unsafe { libc::kill(raw, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while lumen_lab::process::is_alive(pid) {
        assert!(Instant::now() < deadline, "agent {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut status = 0;
    // SAFETY: as above; WNOHANG never blocks, ECHILD if not our child.
    unsafe { libc::waitpid(raw, &mut status, libc::WNOHANG) };
}

/// An agent this test started in place of the lab's, with the lab's command line;
/// killed on drop (`lab down` would find it in the node namespace too).
struct RestartedAgent {
    child: Child,
}

impl RestartedAgent {
    fn start(lab: &Lab) -> Self {
        let node = lab.node(NODE).expect("node-1");
        let mut child = lab
            .spawn_agent(NODE)
            .unwrap_or_else(|e| panic!("restarting the agent: {e}"));
        if let Err(e) = lumen_lab::process::wait_agent_ready(&mut child, node, AGENT_READY) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("restarted agent not ready: {e}");
        }
        Self { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RestartedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's pid, as the lab recorded it.
fn lab_agent_pid(lab: &Lab) -> u32 {
    lab.node(NODE)
        .and_then(|n| n.agent_pid)
        .expect("the lab recorded node-1's agent pid")
}

/// IPAM as `ip → container id`, asserting every allocation is an `eth0`.
fn held(ipam: &IpamState) -> BTreeMap<Ipv4Addr, String> {
    ipam.allocations
        .iter()
        .map(|a| {
            assert_eq!(a.key.ifname, support::IFNAME, "{a:?}");
            (a.ip, a.key.container_id.clone())
        })
        .collect()
}

#[test]
fn allocations_survive_agent_restart() {
    if !harness::require_root("allocations_survive_agent_restart") {
        return;
    }
    let started = Instant::now();
    let lab = harness::lab("ipamrs", 1, 0);
    let runtime = Runtime::new(&lab);
    let pods: Vec<PodNetns> = (1..=6).map(|i| PodNetns::create(&lab, i)).collect();

    let mut results = Vec::new();
    for (i, pod) in pods[..5].iter().enumerate() {
        let container = format!("ipamrs-{i}");
        let result = runtime
            .add(VERSION, &container, pod)
            .expect_ok("ADD")
            .clone();
        results.push((container, result));
    }
    let ips: Vec<Ipv4Addr> = results.iter().map(|(_, r)| support::result_ip(r)).collect();
    assert_eq!(
        ips.iter().collect::<BTreeSet<_>>().len(),
        5,
        "distinct addresses: {ips:?}"
    );
    for &ip in &ips[1..] {
        assert!(
            pods[0].pings(ip),
            "before the restart: {} cannot ping {ip}",
            pods[0].name
        );
    }

    let ipam = support::ipam(&lab);
    let endpoints = support::endpoints(&lab);
    let expected: BTreeMap<Ipv4Addr, String> = ips
        .iter()
        .copied()
        .zip(results.iter().map(|(c, _)| c.clone()))
        .collect();
    assert_eq!(held(&ipam), expected);
    assert_eq!(endpoints.len(), 5, "{endpoints:?}");
    // What the agent serves is what it persisted.
    let node = lab.node(NODE).expect("node-1");
    let file = node.agent_state_dir.join("ipam.json");
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let on_disk: IpamState = serde_json::from_slice(&bytes).expect("ipam.json is an IpamState");
    assert_eq!(
        on_disk,
        ipam,
        "{} differs from GET /v1/ipam",
        file.display()
    );

    kill_9(lab_agent_pid(&lab));
    // The datapath outlives its agent: pods keep talking while it is down.
    assert!(pods[0].pings(ips[1]), "forwarding stopped with the agent");
    // While the agent is down the runtime is told to try again later.
    let outage = runtime.add(VERSION, "ipamrs-outage", &pods[5]);
    assert_eq!(outage.expect_error("ADD without agent"), 11);
    assert_eq!(
        runtime.status(VERSION).expect_error("STATUS without agent"),
        50
    );

    let restarted_at = Instant::now();
    let agent = RestartedAgent::start(&lab);
    eprintln!(
        "agent {} ready {:?} after restart",
        agent.pid(),
        restarted_at.elapsed()
    );

    assert_eq!(support::ipam(&lab), ipam, "IPAM after the restart");
    // The new agent replaced the old agent's filters instead of stacking its own.
    for ep in &endpoints {
        for dir in ["ingress", "egress"] {
            let out = std::process::Command::new("tc")
                .args([
                    "-n",
                    &node.netns,
                    "filter",
                    "show",
                    "dev",
                    &ep.host_ifname,
                    dir,
                ])
                .output()
                .expect("tc runs");
            let text = String::from_utf8_lossy(&out.stdout);
            let filters = text
                .lines()
                .filter(|l| l.contains(" bpf ") && l.contains("name "))
                .count();
            assert_eq!(
                filters, 1,
                "{} {dir} after the restart:\n{text}",
                ep.host_ifname
            );
        }
    }
    assert_eq!(support::endpoints(&lab), endpoints, "re-adopted endpoints");
    for (((container, result), pod), ip) in results.iter().zip(&pods).zip(&ips) {
        let shown = pod.addr_show(support::IFNAME);
        assert!(
            shown.contains(&format!("inet {ip}/32 ")),
            "{} after restart: {shown:?}",
            pod.name
        );
        runtime
            .check(VERSION, container, pod, result)
            .expect_ok("CHECK after restart");
    }

    let fresh = runtime
        .add(VERSION, "ipamrs-new", &pods[5])
        .expect_ok("ADD after restart")
        .clone();
    let fresh_ip = support::result_ip(&fresh);
    assert!(
        !ips.contains(&fresh_ip),
        "{fresh_ip} was already held: {ips:?}"
    );
    assert_eq!(support::ipam(&lab).allocations.len(), 6);

    let mut unreachable = Vec::new();
    let all: Vec<Ipv4Addr> = ips.iter().copied().chain([fresh_ip]).collect();
    for (from, pod) in pods.iter().enumerate() {
        for (to, &ip) in all.iter().enumerate() {
            // Pod 1 to everyone and everyone to pod 1 covers every veth both ways.
            if from != to && (from == 0 || to == 0) && !pod.pings(ip) {
                unreachable.push(format!("{} -> {ip}", pod.name));
            }
        }
    }
    assert!(unreachable.is_empty(), "after the restart: {unreachable:?}");
    eprintln!(
        "allocations_survive_agent_restart took {:?}",
        started.elapsed()
    );
    drop(agent);
}

#[test]
fn add_cut_off_by_agent_death_is_try_again_later() {
    if !harness::require_root("add_cut_off_by_agent_death_is_try_again_later") {
        return;
    }
    let lab = harness::lab("ipamcut", 1, 0);
    let runtime = Runtime::new(&lab);
    let pod = PodNetns::create(&lab, 1);
    let before = NodeView::take(&lab);
    let container = "ipamcut-0";

    // Opening a FIFO blocks until a writer comes, and the agent opens CNI_NETNS
    // after persisting the address: so this ADD is held inside the agent,
    // accepted and half done, when the agent dies.
    let fifo = lab
        .node(NODE)
        .expect("node-1")
        .socket
        .with_file_name("held-netns");
    let status = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", fifo.display());
    let env = Runtime::env("ADD", container, &fifo.display().to_string());
    let config = runtime.config(VERSION);
    std::thread::scope(|s| {
        let call = s.spawn(|| runtime.run(&env, &config));
        let deadline = Instant::now() + Duration::from_secs(3);
        while !held(&support::ipam(&lab)).values().any(|c| c == container) {
            assert!(
                !call.is_finished() && Instant::now() < deadline,
                "the agent never started the ADD (does it now refuse a FIFO as CNI_NETNS? \
                 then hold the request some other way)"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !call.is_finished(),
            "the ADD must still be in the agent when it dies"
        );
        kill_9(lab_agent_pid(&lab));
        let out = call.join().expect("the plugin call returns");
        // The agent went away mid-request: the runtime must hear "try again
        // later", as when the agent is not running at all.
        assert_eq!(
            out.expect_error("ADD cut off by the agent's death"),
            11,
            "{out}"
        );
    });

    let agent = RestartedAgent::start(&lab);
    assert_eq!(
        NodeView::take(&lab),
        before,
        "the cut-off ADD left something behind"
    );
    // The runtime tries again, with a real namespace this time.
    let result = runtime
        .add(VERSION, container, &pod)
        .expect_ok("ADD retried")
        .clone();
    runtime
        .check(VERSION, container, &pod, &result)
        .expect_ok("CHECK");
    drop(agent);
}

/// xorshift64: a tiny seeded generator, so a failing run can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A runtime-style 64-hex-digit container id.
    fn container_id(&mut self) -> String {
        (0..4).map(|_| format!("{:016x}", self.next())).collect()
    }
}

/// What the test believes is attached, by pod namespace index.
#[derive(Debug, Clone)]
struct Attached {
    container: String,
    ip: Ipv4Addr,
    host: String,
    result: Value,
}

#[derive(Debug, Clone)]
enum Op {
    Add { pod: usize, container: String },
    Del { pod: usize },
}

impl Op {
    fn pod(&self) -> usize {
        match self {
            Self::Add { pod, .. } | Self::Del { pod } => *pod,
        }
    }
}

/// The churn test's model of node 1 and the runtime that changes it.
struct Churn<'a> {
    lab: &'a Lab,
    runtime: Runtime,
    pods: Vec<PodNetns>,
    attached: BTreeMap<usize, Attached>,
    /// ip → container, from ADD results: two attached containers never share one.
    holders: BTreeMap<Ipv4Addr, String>,
}

impl Churn<'_> {
    /// Pick an operation on a pod not in `busy`: ADD of a free one or DEL of an
    /// attached one.
    fn pick(&self, rng: &mut XorShift, busy: &BTreeSet<usize>) -> Op {
        let free: Vec<usize> = (0..self.pods.len())
            .filter(|p| !self.attached.contains_key(p) && !busy.contains(p))
            .collect();
        let attached: Vec<usize> = self
            .attached
            .keys()
            .copied()
            .filter(|p| !busy.contains(p))
            .collect();
        let add = attached.is_empty() || (!free.is_empty() && rng.below(2) == 0);
        if add {
            Op::Add {
                pod: free[rng.below(free.len())],
                container: rng.container_id(),
            }
        } else {
            Op::Del {
                pod: attached[rng.below(attached.len())],
            }
        }
    }

    fn invoke(&self, op: &Op) -> support::Outcome {
        match op {
            Op::Add { pod, container } => self.runtime.add(VERSION, container, &self.pods[*pod]),
            Op::Del { pod } => {
                let a = &self.attached[pod];
                self.runtime
                    .del(VERSION, &a.container, &self.pods[*pod], Some(&a.result))
            }
        }
    }

    /// Run `op`, which must succeed, and update the model.
    fn apply(&mut self, n: usize, op: &Op) {
        let out = self.invoke(op);
        let json = out.expect_ok(&format!("op {n} {op:?}")).clone();
        match op {
            Op::Add { pod, container } => {
                let ip = support::result_ip(&json);
                if let Some(other) = self.holders.get(&ip) {
                    panic!("op {n}: ADD of {container} got {ip}, held by attached {other}");
                }
                self.holders.insert(ip, container.clone());
                let host = support::result_host_ifname(&json);
                let attached = Attached {
                    container: container.clone(),
                    ip,
                    host,
                    result: json,
                };
                self.attached.insert(*pod, attached);
            }
            Op::Del { pod } => {
                let gone = self.attached.remove(pod).expect("DEL of an attached pod");
                self.holders.remove(&gone.ip);
            }
        }
    }

    /// The agent's IPAM, endpoints and the node's veths are exactly the model.
    fn verify(&self, when: &str) {
        assert_eq!(held(&support::ipam(self.lab)), self.holders, "IPAM {when}");
        let hosts: BTreeSet<String> = self.attached.values().map(|a| a.host.clone()).collect();
        assert_eq!(
            hosts.len(),
            self.attached.len(),
            "host veth names collide {when}"
        );
        // A DEL's veth goes with the agent's next batch, just after it answers.
        poll_until(Duration::from_secs(5), || {
            support::host_veths(self.lab) == hosts
        });
        assert_eq!(support::host_veths(self.lab), hosts, "host veths {when}");
        let endpoints: BTreeMap<Ipv4Addr, String> = support::endpoints(self.lab)
            .into_iter()
            .map(|e| (e.ip, e.container_id))
            .collect();
        assert_eq!(endpoints, self.holders, "endpoints {when}");
    }
}

#[test]
fn random_add_del_with_agent_kill() {
    if !harness::require_root("random_add_del_with_agent_kill") {
        return;
    }
    const POOL: u32 = 40;
    const OPS: usize = 500;
    const KILL_AT: usize = 250;
    /// Operations attempted while the agent is down.
    const OUTAGE_OPS: usize = 4;
    const SEED: u64 = 0x4c75_6d65_6e21_0001;

    let started = Instant::now();
    let lab = harness::lab("ipamchurn", 1, 0);
    let mut churn = Churn {
        lab: &lab,
        runtime: Runtime::new(&lab),
        pods: (1..=POOL).map(|i| PodNetns::create(&lab, i)).collect(),
        attached: BTreeMap::new(),
        holders: BTreeMap::new(),
    };
    let mut rng = XorShift(SEED);
    let mut agent = None;
    let mut n = 0;
    let ops_started = Instant::now();
    while n < OPS {
        if n == KILL_AT {
            kill_9(lab_agent_pid(&lab));
            let mut pending = Vec::new();
            let mut busy = BTreeSet::new();
            for _ in 0..OUTAGE_OPS {
                let op = churn.pick(&mut rng, &busy);
                let out = churn.invoke(&op);
                assert_eq!(
                    out.expect_error(&format!("op {n} {op:?} without agent")),
                    11
                );
                busy.insert(op.pod());
                pending.push(op);
            }
            agent = Some(RestartedAgent::start(&lab));
            churn.verify("after the restart");
            for op in &pending {
                churn.apply(n, op);
                churn.verify(&format!("after retried op {n}"));
                n += 1;
            }
            continue;
        }
        let op = churn.pick(&mut rng, &BTreeSet::new());
        churn.apply(n, &op);
        churn.verify(&format!("after op {n} {op:?}"));
        n += 1;
    }
    let ops_took = ops_started.elapsed();

    let valid: Vec<&str> = churn
        .attached
        .values()
        .map(|a| a.container.as_str())
        .collect();
    churn.runtime.gc(VERSION, valid).expect_ok("GC");
    churn.verify("after GC");
    let attached_at_end = churn.attached.len();

    let pods: Vec<usize> = churn.attached.keys().copied().collect();
    for pod in pods {
        churn.apply(OPS, &Op::Del { pod });
    }
    churn.verify("after deleting everything");
    assert!(support::ipam(&lab).allocations.is_empty());
    eprintln!(
        "random_add_del_with_agent_kill: seed {SEED:#x}, {OPS} ops in {ops_took:?}, \
         {attached_at_end} attached at the end, {:?} in all",
        started.elapsed()
    );
    drop(agent);
}
