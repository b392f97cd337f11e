//! What the CNI and IPAM tests share: running the real `lumen-cni` exactly as a
//! container runtime does (from the node's namespace, a cleared environment with
//! the `CNI_*` variables, the network configuration on stdin), pod namespaces that
//! remove themselves, and what node 1's agent and namespace hold.
//!
//! Each test crate uses part of it, hence the `dead_code` allowance.
#![allow(
    dead_code,
    reason = "each test crate includes this module and uses part of it"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use lumen_api::Endpoint;
use lumen_api::cni::{Allocation, IpamState};
use lumen_api::paths;
use lumen_lab::Lab;
use lumen_tests::harness;
use serde_json::{Value, json};

/// Every spec version the plugin speaks, oldest first.
pub const VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// The pod interface name runtimes ask for.
pub const IFNAME: &str = "eth0";
/// The only node of the labs these tests use.
pub const NODE: &str = "node-1";
/// What a runtime hands the plugin as PATH.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `CNI_*` variables of one invocation (the whole environment but PATH).
pub type Env = BTreeMap<&'static str, String>;

/// What one plugin invocation printed and how it exited.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit status (`None` if killed by a signal).
    pub status: Option<i32>,
    /// stdout as JSON; `Null` when the plugin printed nothing.
    pub json: Value,
    pub stderr: String,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The error object's `code`, if this is an error.
    pub fn code(&self) -> Option<u64> {
        self.json.get("code").and_then(Value::as_u64)
    }

    /// Panic unless the invocation succeeded; returns its JSON.
    #[track_caller]
    pub fn expect_ok(&self, what: &str) -> &Value {
        assert!(self.success(), "{what} failed: {self}");
        &self.json
    }

    /// Panic unless the invocation failed as the spec says errors look: exit
    /// status 1 and an error object with a code, a message and `cniVersion`.
    #[track_caller]
    pub fn expect_error(&self, what: &str) -> u64 {
        assert_eq!(self.status, Some(1), "{what}: exit status, {self}");
        let code = self
            .code()
            .unwrap_or_else(|| panic!("{what}: no error code in {self}"));
        let msg = self.json.get("msg").and_then(Value::as_str).unwrap_or("");
        assert!(!msg.is_empty(), "{what}: error without msg: {self}");
        assert!(
            self.json.get("cniVersion").is_some(),
            "{what}: error without cniVersion: {self}"
        );
        code
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}, stdout {}, stderr {:?}",
            self.status,
            self.json,
            self.stderr.trim()
        )
    }
}

/// Run `<bin_dir>/lumen-cni` inside `node_netns` with exactly `env` (plus PATH)
/// and `stdin`, as a runtime on that node does.
pub fn run_plugin(node_netns: &str, env: &Env, stdin: &[u8]) -> Outcome {
    let mut child = Command::new("ip")
        .args(["netns", "exec", node_netns])
        .arg(lumen_lab::config::cni_plugin(&harness::bin_dir()))
        .env_clear()
        .env("PATH", PATH)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip netns exec lumen-cni runs");
    {
        let mut pipe = child.stdin.take().expect("piped stdin");
        // A plugin that exits before reading its configuration (VERSION) may
        // close the pipe first; its answer says what happened.
        let _ = pipe.write_all(stdin);
    }
    let out = child.wait_with_output().expect("lumen-cni finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "lumen-cni printed non-JSON ({e}): {text:?}, stderr {:?}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    Outcome {
        status: out.status.code(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A container runtime on node 1 of a lab: its network configuration and the
/// environment it builds for each command.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub node_netns: String,
    pub socket: PathBuf,
    pub cni_log: PathBuf,
}

impl Runtime {
    pub fn new(lab: &Lab) -> Self {
        let node = lab.node(NODE).expect("the lab has node-1");
        Self {
            node_netns: node.netns.clone(),
            socket: node.socket.clone(),
            cni_log: node.cni_log.clone(),
        }
    }

    /// The network configuration a runtime would read from its conflist.
    pub fn config(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "lumen",
            "type": "lumen",
            "agentSocket": self.socket,
            "logFile": self.cni_log,
        })
    }

    /// The environment of ADD, CHECK or DEL of `container` in `netns`.
    pub fn env(command: &str, container: &str, netns: &str) -> Env {
        Env::from([
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", container.to_owned()),
            ("CNI_NETNS", netns.to_owned()),
            ("CNI_IFNAME", IFNAME.to_owned()),
            ("CNI_PATH", harness::bin_dir().display().to_string()),
            (
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"),
            ),
        ])
    }

    pub fn run(&self, env: &Env, config: &Value) -> Outcome {
        run_plugin(&self.node_netns, env, config.to_string().as_bytes())
    }

    pub fn add(&self, version: &str, container: &str, pod: &PodNetns) -> Outcome {
        self.run(
            &Self::env("ADD", container, &pod.path()),
            &self.config(version),
        )
    }

    /// CHECK and DEL get the ADD result back as `prevResult`, as runtimes pass it.
    pub fn check(&self, version: &str, container: &str, pod: &PodNetns, prev: &Value) -> Outcome {
        let mut config = self.config(version);
        config["prevResult"] = prev.clone();
        self.run(&Self::env("CHECK", container, &pod.path()), &config)
    }

    pub fn del(
        &self,
        version: &str,
        container: &str,
        pod: &PodNetns,
        prev: Option<&Value>,
    ) -> Outcome {
        let mut config = self.config(version);
        if let Some(prev) = prev {
            config["prevResult"] = prev.clone();
        }
        self.run(&Self::env("DEL", container, &pod.path()), &config)
    }

    pub fn status(&self, version: &str) -> Outcome {
        self.run(
            &Env::from([("CNI_COMMAND", "STATUS".to_owned())]),
            &self.config(version),
        )
    }

    /// GC keeping exactly the `eth0` attachments of `valid`.
    pub fn gc<'a>(&self, version: &str, valid: impl IntoIterator<Item = &'a str>) -> Outcome {
        let mut config = self.config(version);
        config["cni.dev/valid-attachments"] = valid
            .into_iter()
            .map(|c| json!({"containerID": c, "ifname": IFNAME}))
            .collect();
        self.run(&Env::from([("CNI_COMMAND", "GC".to_owned())]), &config)
    }
}

/// A pod's network namespace as a runtime creates it before ADD, deleted on drop.
/// Named like the lab's own pods (`<lab>-pod-1-<index>`), so `lab down` removes
/// it too if the test dies before the guard runs.
#[derive(Debug)]
pub struct PodNetns {
    pub name: String,
}

impl PodNetns {
    pub fn create(lab: &Lab, index: u32) -> Self {
        let name = format!("{}-pod-1-{index}", lab.name());
        ip(&["netns", "add", &name]);
        let pod = Self { name };
        ip(&["-n", &pod.name, "link", "set", "lo", "up"]);
        pod
    }

    /// The path a runtime passes in `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -o addr show <ifname>` inside the pod, empty if there is no such link.
    pub fn addr_show(&self, ifname: &str) -> String {
        output(Command::new("ip").args(["-n", &self.name, "-o", "addr", "show", ifname]))
    }

    /// `ip -o link show <ifname>` inside the pod, empty if there is no such link.
    pub fn link_show(&self, ifname: &str) -> String {
        output(Command::new("ip").args(["-n", &self.name, "-o", "link", "show", ifname]))
    }

    /// Whether `ip netns exec <pod> ping -c1 <ip>` gets an answer (three tries).
    pub fn pings(&self, ip: Ipv4Addr) -> bool {
        (0..3).any(|_| {
            Command::new("ip")
                .args([
                    "netns", "exec", &self.name, "ping", "-n", "-q", "-c1", "-W1",
                ])
                .arg(ip.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        // Already gone if `lab down` ran first; nothing else to do then.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Run `ip ARGS`, panicking with its stderr on failure.
#[track_caller]
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ADD result's pod address (`ips[0].address` without the prefix).
#[track_caller]
pub fn result_ip(result: &Value) -> Ipv4Addr {
    result
        .pointer("/ips/0/address")
        .and_then(Value::as_str)
        .and_then(|a| a.strip_suffix("/32"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no ips[0].address a.b.c.d/32 in {result}"))
}

/// The ADD result's host veth (`interfaces[0].name`).
#[track_caller]
pub fn result_host_ifname(result: &Value) -> String {
    result
        .pointer("/interfaces/0/name")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no interfaces[0].name in {result}"))
        .to_owned()
}

/// Node 1's IPAM as its agent serves it.
pub fn ipam(lab: &Lab) -> IpamState {
    client(lab).get(paths::IPAM).expect("GET /v1/ipam")
}

/// Node 1's endpoints as its agent serves them, sorted by container.
pub fn endpoints(lab: &Lab) -> Vec<Endpoint> {
    let mut eps: Vec<Endpoint> = client(lab)
        .get(paths::ENDPOINTS)
        .expect("GET /v1/endpoints");
    eps.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
    eps
}

fn client(lab: &Lab) -> lumen_api::client::Client {
    lab.client(NODE).expect("node-1 has a client")
}

/// The link names in node 1's namespace (`ip -n <node> -o link`).
pub fn node_links(lab: &Lab) -> BTreeSet<String> {
    let netns = &lab.node(NODE).expect("node-1").netns;
    output(Command::new("ip").args(["-n", netns, "-o", "link"]))
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or_default().to_owned())
        .collect()
}

/// The host veths of pods in node 1's namespace: `lmn` + 11 hex digits.
pub fn host_veths(lab: &Lab) -> BTreeSet<String> {
    node_links(lab)
        .into_iter()
        .filter(|l| lumen_agent::pods::is_host_ifname(l))
        .collect()
}

/// Everything on node 1 a failed or finished CNI call could leave behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub allocations: Vec<Allocation>,
    pub links: BTreeSet<String>,
    pub endpoints: Vec<Endpoint>,
}

impl NodeView {
    pub fn take(lab: &Lab) -> Self {
        Self {
            allocations: ipam(lab).allocations,
            links: node_links(lab),
            endpoints: endpoints(lab),
        }
    }
}
