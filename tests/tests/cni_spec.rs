//! The CNI plugin against a real agent, invoked exactly as a runtime does, for
//! every spec version it speaks: VERSION, the ADD → CHECK → DEL → DEL life cycle
//! with the result's shape and the pod's real interface, STATUS and GC (1.1.0),
//! and a table of failures that must each report the right error code and leave
//! nothing behind.

mod support;

use std::net::Ipv4Addr;

use lumen_tests::harness;
use serde_json::{Value, json};
use support::{Env, IFNAME, NodeView, Outcome, PodNetns, Runtime, VERSIONS};

const GATEWAY: &str = "169.254.1.1";

#[test]
fn lifecycle_every_version() {
    if !harness::require_root("lifecycle_every_version") {
        return;
    }
    let lab = harness::lab("cnispec", 1, 0);
    let runtime = Runtime::new(&lab);
    let pods: Vec<PodNetns> = (1..=2).map(|i| PodNetns::create(&lab, i)).collect();

    for version in VERSIONS {
        version_lists_supported(&runtime, version);
        add_check_del(&lab, &runtime, version, &pods[0]);
        if version == "1.1.0" {
            status_and_gc(&lab, &runtime, version, &pods);
        } else {
            // STATUS and GC arrived in 1.1.0: older configurations are refused.
            assert_eq!(
                runtime.status(version).expect_error("STATUS"),
                1,
                "{version}"
            );
            assert_eq!(runtime.gc(version, []).expect_error("GC"), 1, "{version}");
        }
    }
    assert!(support::ipam(&lab).allocations.is_empty());
    assert!(support::host_veths(&lab).is_empty());
}

fn version_lists_supported(runtime: &Runtime, version: &str) {
    let env = Env::from([("CNI_COMMAND", "VERSION".to_owned())]);
    let out = runtime.run(&env, &json!({"cniVersion": version}));
    let json = out.expect_ok("VERSION");
    assert_eq!(
        json["cniVersion"], version,
        "VERSION answers in the asked version"
    );
    assert_eq!(json["supportedVersions"], json!(VERSIONS), "{version}");
}

/// ADD, then the result, the pod and the agent agree; CHECK passes; DEL twice
/// succeeds and removes the address, the veth and the endpoint.
fn add_check_del(lab: &lumen_lab::Lab, runtime: &Runtime, version: &str, pod: &PodNetns) {
    let container = format!("cnispec-{version}");
    let before = NodeView::take(lab);

    let result = runtime
        .add(version, &container, pod)
        .expect_ok("ADD")
        .clone();
    let ip = check_result_shape(version, &result, &pod.path());
    let host = support::result_host_ifname(&result);
    let shown = pod.addr_show(IFNAME);
    assert!(
        shown.contains(&format!("inet {ip}/32 ")),
        "{version}: pod eth0 shows {shown:?}, result {result}"
    );
    if let Some(mtu) = result.pointer("/interfaces/1/mtu") {
        let link = pod.link_show(IFNAME);
        assert!(
            link.contains(&format!(" mtu {mtu} ")),
            "{version}: result mtu {mtu}, pod has {link:?}"
        );
    }

    let ipam = support::ipam(lab);
    let alloc = ipam
        .allocations
        .iter()
        .find(|a| a.ip == ip)
        .unwrap_or_else(|| panic!("{version}: {ip} not in IPAM {ipam:?}"));
    assert_eq!(alloc.key.container_id, container);
    assert_eq!(alloc.key.ifname, IFNAME);
    assert_eq!(alloc.netns, pod.path());
    assert!(
        ipam.cidr.contains(ip),
        "{ip} outside the node's pod CIDR {}",
        ipam.cidr
    );
    assert!(
        support::node_links(lab).contains(&host),
        "{version}: host veth {host} missing"
    );
    let endpoint = support::endpoints(lab)
        .into_iter()
        .find(|e| e.container_id == container)
        .unwrap_or_else(|| panic!("{version}: no endpoint for {container}"));
    assert_eq!(
        (endpoint.ip, endpoint.host_ifname.as_str()),
        (ip, host.as_str())
    );

    let check = runtime.check(version, &container, pod, &result);
    check.expect_ok("CHECK");
    assert_eq!(check.json, Value::Null, "CHECK prints nothing on success");

    for round in ["DEL", "second DEL"] {
        let del = runtime.del(version, &container, pod, Some(&result));
        del.expect_ok(round);
        assert_eq!(del.json, Value::Null, "{round} prints nothing on success");
    }
    let after = NodeView::take(lab);
    assert_eq!(after, before, "{version}: DEL left something behind");
    assert!(!support::ipam(lab).allocations.iter().any(|a| a.ip == ip));
    assert!(!support::node_links(lab).contains(&host));
    assert_eq!(
        pod.addr_show(IFNAME),
        "",
        "{version}: pod eth0 survived DEL"
    );

    // The attachment is gone, so CHECK of it fails (unknown container).
    let stale = runtime.check(version, &container, pod, &result);
    assert_eq!(stale.expect_error("CHECK after DEL"), 3, "{version}");
}

/// The result has the shape of `version`; returns the pod's address.
fn check_result_shape(version: &str, result: &Value, netns: &str) -> Ipv4Addr {
    assert_eq!(result["cniVersion"], version, "{result}");
    let interfaces = result["interfaces"].as_array().expect("interfaces");
    let host = &interfaces[0];
    assert!(
        host["name"].as_str().is_some_and(|n| n.starts_with("lmn")),
        "{result}"
    );
    assert!(
        host.get("sandbox").is_none(),
        "the host veth is not in a sandbox: {result}"
    );
    let (pod_index, pod) = interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i["name"] == IFNAME)
        .unwrap_or_else(|| panic!("no {IFNAME} in {result}"));
    assert_eq!(pod["sandbox"], netns, "{result}");
    assert!(
        pod["mac"].as_str().is_some_and(|m| m.len() == 17),
        "{result}"
    );
    // The interface mtu field arrived in 1.1.0.
    assert_eq!(pod.get("mtu").is_some(), version == "1.1.0", "{result}");

    let ips = result["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1, "{result}");
    let ip = &ips[0];
    assert_eq!(ip["gateway"], GATEWAY, "{result}");
    assert_eq!(ip["interface"], pod_index, "{result}");
    if version == "0.4.0" {
        assert_eq!(ip["version"], "4", "0.4.0 tags addresses: {result}");
    } else {
        assert!(
            ip.get("version").is_none(),
            "{version} has no address version: {result}"
        );
    }
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}]),
        "{result}"
    );
    support::result_ip(result)
}

/// STATUS succeeds; GC keeping one of two attachments releases the other.
fn status_and_gc(lab: &lumen_lab::Lab, runtime: &Runtime, version: &str, pods: &[PodNetns]) {
    let status = runtime.status(version);
    status.expect_ok("STATUS");
    assert_eq!(status.json, Value::Null, "STATUS prints nothing on success");

    let before = NodeView::take(lab);
    let [keep, gone] = ["cnispec-gc-keep", "cnispec-gc-gone"];
    let kept = runtime
        .add(version, keep, &pods[0])
        .expect_ok("ADD keep")
        .clone();
    let dropped = runtime
        .add(version, gone, &pods[1])
        .expect_ok("ADD gone")
        .clone();
    let (kept_ip, dropped_ip) = (support::result_ip(&kept), support::result_ip(&dropped));
    let (kept_host, dropped_host) = (
        support::result_host_ifname(&kept),
        support::result_host_ifname(&dropped),
    );
    assert!(
        pods[0].pings(dropped_ip),
        "{version}: {kept_ip} cannot ping {dropped_ip}"
    );

    let gc = runtime.gc(version, [keep]);
    gc.expect_ok("GC");
    assert_eq!(gc.json, Value::Null, "GC prints nothing on success");

    let ipam = support::ipam(lab);
    let held: Vec<(Ipv4Addr, &str)> = ipam
        .allocations
        .iter()
        .map(|a| (a.ip, a.key.container_id.as_str()))
        .collect();
    assert_eq!(
        held,
        vec![(kept_ip, keep)],
        "GC kept exactly the valid attachment"
    );
    assert_ne!(kept_ip, dropped_ip);
    let links = support::node_links(lab);
    assert!(
        links.contains(&kept_host) && !links.contains(&dropped_host),
        "{links:?}"
    );
    let endpoints: Vec<String> = support::endpoints(lab)
        .into_iter()
        .map(|e| e.container_id)
        .collect();
    assert_eq!(endpoints, vec![keep.to_owned()]);
    assert_eq!(
        pods[1].addr_show(IFNAME),
        "",
        "the released pod's eth0 is gone"
    );
    runtime
        .check(version, keep, &pods[0], &kept)
        .expect_ok("CHECK of the kept attachment");

    runtime
        .del(version, keep, &pods[0], Some(&kept))
        .expect_ok("DEL keep");
    // The runtime still DELs what GC released: that must be a no-op success.
    runtime
        .del(version, gone, &pods[1], Some(&dropped))
        .expect_ok("DEL after GC");
    assert_eq!(NodeView::take(lab), before);
}

/// What a failure case starts from.
struct Ctx<'a> {
    version: &'a str,
    /// A pod namespace that already holds an `eth0`.
    taken: &'a PodNetns,
    /// Where the lab keeps node state; no agent listens there.
    dead_socket: String,
}

/// How to break a valid ADD, and the code the plugin must answer.
struct Case {
    name: &'static str,
    breaks: fn(&mut Env, &mut Vec<u8>, &Ctx),
    code: Code,
    /// The error is answered in the requested cniVersion (false: the version
    /// could not be read or is not supported, so the latest).
    echoes_version: bool,
}

enum Code {
    Is(u64),
    /// The agent's own codes (plugin-specific range).
    Agent,
}

/// Set (or with `None` remove) one field of the configuration on `stdin`.
fn set(stdin: &mut Vec<u8>, field: &str, value: Option<Value>) {
    let mut config: Value = serde_json::from_slice(stdin).expect("valid config");
    let fields = config.as_object_mut().expect("config object");
    match value {
        Some(value) => fields.insert(field.to_owned(), value),
        None => fields.remove(field),
    };
    *stdin = config.to_string().into_bytes();
}

const FAILURES: &[Case] = &[
    Case {
        name: "malformed JSON",
        breaks: |_, stdin, _| stdin.truncate(stdin.len() / 2),
        code: Code::Is(6),
        echoes_version: false,
    },
    Case {
        name: "missing name",
        breaks: |_, stdin, _| set(stdin, "name", None),
        code: Code::Is(7),
        echoes_version: true,
    },
    Case {
        name: "wrong type",
        breaks: |_, stdin, _| set(stdin, "type", Some(json!("bridge"))),
        code: Code::Is(7),
        echoes_version: true,
    },
    Case {
        name: "unsupported cniVersion 0.3.1",
        breaks: |_, stdin, _| set(stdin, "cniVersion", Some(json!("0.3.1"))),
        code: Code::Is(1),
        echoes_version: false,
    },
    Case {
        name: "missing CNI_CONTAINERID",
        breaks: |env, _, _| {
            env.remove("CNI_CONTAINERID");
        },
        code: Code::Is(4),
        echoes_version: true,
    },
    Case {
        name: "CNI_NETNS does not exist",
        breaks: |env, _, ctx| {
            env.insert("CNI_NETNS", format!("{}-gone", ctx.taken.path()));
        },
        code: Code::Is(3),
        echoes_version: true,
    },
    Case {
        name: "agent not running",
        breaks: |_, stdin, ctx| set(stdin, "agentSocket", Some(json!(ctx.dead_socket))),
        code: Code::Is(11),
        echoes_version: true,
    },
    Case {
        name: "pod already has eth0 (ADD fails midway)",
        breaks: |env, _, ctx| {
            env.insert("CNI_NETNS", ctx.taken.path());
        },
        code: Code::Agent,
        echoes_version: true,
    },
];

#[test]
fn failures_leave_nothing_behind() {
    if !harness::require_root("failures_leave_nothing_behind") {
        return;
    }
    let lab = harness::lab("cnifail", 1, 0);
    let runtime = Runtime::new(&lab);
    let free = PodNetns::create(&lab, 1);
    let taken = PodNetns::create(&lab, 2);
    // A veth pair kept inside the pod: this kernel has no dummy driver, and
    // loading one would change the machine beyond the lab.
    support::ip(&[
        "-n",
        &taken.name,
        "link",
        "add",
        IFNAME,
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ]);
    let dummy = taken.addr_show(IFNAME);
    let node = lab.node(support::NODE).expect("node-1");
    let dead_socket = node
        .socket
        .with_file_name("no-agent.sock")
        .display()
        .to_string();

    let mut failed = Vec::new();
    for version in VERSIONS {
        let ctx = Ctx {
            version,
            taken: &taken,
            dead_socket: dead_socket.clone(),
        };
        for case in FAILURES {
            let container = format!("cnifail-{version}");
            let mut env = Runtime::env("ADD", &container, &free.path());
            let mut stdin = runtime.config(ctx.version).to_string().into_bytes();
            (case.breaks)(&mut env, &mut stdin, &ctx);

            let before = NodeView::take(&lab);
            let out = support::run_plugin(&runtime.node_netns, &env, &stdin);
            let after = NodeView::take(&lab);
            if let Some(problem) = judge(case, version, &out, &before, &after) {
                failed.push(format!("{version} {}: {problem}", case.name));
            }
        }
    }
    // The agent must not have touched the pod's own interface.
    assert_eq!(
        taken.addr_show(IFNAME),
        dummy,
        "the pod's existing eth0 changed"
    );
    assert_eq!(free.addr_show(IFNAME), "");
    assert!(
        failed.is_empty(),
        "{} failure cases wrong:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// What is wrong with the outcome of `case`, if anything.
fn judge(
    case: &Case,
    version: &str,
    out: &Outcome,
    before: &NodeView,
    after: &NodeView,
) -> Option<String> {
    if out.status != Some(1) {
        return Some(format!("exit status {:?}, want 1: {out}", out.status));
    }
    let Some(code) = out.code() else {
        return Some(format!("no error code: {out}"));
    };
    let code_ok = match case.code {
        Code::Is(want) => code == want,
        Code::Agent => (100..200).contains(&code),
    };
    if !code_ok {
        return Some(format!("code {code}: {out}"));
    }
    if out.json["msg"].as_str().is_none_or(str::is_empty) {
        return Some(format!("no msg: {out}"));
    }
    let answered_in = if case.echoes_version {
        version
    } else {
        "1.1.0"
    };
    if out.json["cniVersion"] != answered_in {
        return Some(format!(
            "error in cniVersion {}, want {answered_in}",
            out.json["cniVersion"]
        ));
    }
    (after != before)
        .then(|| format!("left something behind:\nbefore {before:?}\nafter  {after:?}"))
}
