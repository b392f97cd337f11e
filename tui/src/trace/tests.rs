//! Arguments to request: every flag's effect and every refusal, one table
//! row each, and the lab lookups, over a planned lab (no agents, no root).

use std::error::Error as _;

use clap::Parser;

use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: TraceArgs,
}

fn parse(args: &[&str]) -> Result<TraceArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("trace").chain(args.iter().copied())).map(|c| c.args)
}

fn request(args: &[&str]) -> Result<TraceRequest, TraceError> {
    parse(args)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .request()
}

/// The error with its causes, as `main` prints it.
fn chain(err: &TraceError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn pod(s: &str) -> PodRef {
    PodRef::parse(s).expect("pod")
}

/// What `lumen trace SRC DST` asks for with no flags.
fn base(source: &str, destination: TraceDestination) -> TraceRequest {
    TraceRequest::tcp(pod(source), destination, DEFAULT_PORT)
}

#[test]
fn arguments_become_the_request() {
    let to_pod = |s: &str| TraceDestination::Pod(pod(s));
    let ip = |s: &str| TraceDestination::Ip(s.parse().expect("ip"));
    for (args, expected) in [
        (
            &["pod-1-1", "pod-2-1"][..],
            base("pod-1-1", to_pod("default/pod-2-1")),
        ),
        (
            &["x/a", "y/b", "--dport", "81"],
            TraceRequest {
                destination_port: Some(81),
                ..base("x/a", to_pod("y/b"))
            },
        ),
        (
            &["x/a", "node/node-2"],
            base("x/a", TraceDestination::Node("node-2".into())),
        ),
        (&["x/a", "203.0.113.10"], base("x/a", ip("203.0.113.10"))),
        (
            &["x/a", "203.0.113.10:8080"],
            TraceRequest {
                destination_port: Some(8080),
                ..base("x/a", ip("203.0.113.10"))
            },
        ),
        (
            &["x/a", "203.0.113.10:8080", "--dport", "8080"],
            TraceRequest {
                destination_port: Some(8080),
                ..base("x/a", ip("203.0.113.10"))
            },
        ),
        (
            &[
                "x/a",
                "y/b",
                "--proto",
                "udp",
                "--sport",
                "5353",
                "--timeout",
                "500ms",
            ],
            TraceRequest {
                protocol: Protocol::UDP,
                source_port: Some(5353),
                timeout_ms: 500,
                ..base("x/a", to_pod("y/b"))
            },
        ),
        (
            &["x/a", "y/b", "--proto", "sctp", "--timeout", "1m"],
            TraceRequest {
                protocol: Protocol::SCTP,
                timeout_ms: 60_000,
                ..base("x/a", to_pod("y/b"))
            },
        ),
        (
            &["x/a", "y/b", "--proto", "icmp", "--timeout", "2"],
            TraceRequest {
                protocol: Protocol::ICMP,
                destination_port: None,
                timeout_ms: 2_000,
                ..base("x/a", to_pod("y/b"))
            },
        ),
        (
            &["x/a", "y/b", "--flags", "syn,ACK", "--dport", "443"],
            TraceRequest {
                tcp_flags: Some(TcpFlags(TcpFlags::SYN | TcpFlags::ACK)),
                destination_port: Some(443),
                ..base("x/a", to_pod("y/b"))
            },
        ),
        (
            &["x/a", "y/b", "--live"],
            TraceRequest {
                mode: TraceMode::Live,
                destination_port: None,
                ..base("x/a", to_pod("y/b"))
            },
        ),
        (
            &[
                "x/a",
                "y/b",
                "--live",
                "--dropped-only",
                "--dport",
                "80",
                "--timeout",
                "30s",
            ],
            TraceRequest {
                mode: TraceMode::Live,
                dropped_only: true,
                timeout_ms: 30_000,
                ..base("x/a", to_pod("y/b"))
            },
        ),
    ] {
        let got = request(args).unwrap_or_else(|e| panic!("{args:?}: {}", chain(&e)));
        assert_eq!(got, expected, "{args:?}");
    }
}

#[test]
fn bad_arguments_fail_before_any_request() {
    for (args, message) in [
        (&["/x", "y/b"][..], "source \"/x\" is not a pod"),
        (&["x/a/b", "y/b"], "source \"x/a/b\" is not a pod"),
        (&["x/a", "y/b/c"], "destination \"y/b/c\" is neither a pod"),
        (&["x/a", "node/"], "destination \"node/\" is neither"),
        (&["x/a", "web:80"], "destination \"web:80\" is neither"),
        (
            &["x/a", "10.0.0.1:http"],
            "destination \"10.0.0.1:http\" is neither",
        ),
        (
            &["x/a", "10.0.0.1:70000"],
            "destination \"10.0.0.1:70000\" is neither",
        ),
        (
            &["x/a", "10.0.0.1:80", "--dport", "81"],
            "destination \"10.0.0.1:80\" says port 80 but --dport says 81",
        ),
        (
            &["x/a", "10.0.0.1:0"],
            "invalid trace: the destination port must be 1-65535",
        ),
        (
            &["x/a", "y/b", "--dport", "0"],
            "invalid trace: the destination port must be 1-65535",
        ),
        (
            &["x/a", "y/b", "--live", "--dport", "0"],
            "invalid trace: the destination port must be 1-65535",
        ),
        (
            &["x/a", "y/b", "--sport", "0"],
            "invalid trace: the source port must be 1-65535",
        ),
        (
            &["x/a", "y/b", "--dropped-only"],
            "invalid trace: dropped-only applies to live traces",
        ),
        (
            &["x/a", "y/b", "--proto", "udp", "--flags", "SYN"],
            "invalid trace: TCP flags given for a UDP trace",
        ),
        (
            &["x/a", "y/b", "--proto", "icmp", "--dport", "80"],
            "invalid trace: ICMP has no ports",
        ),
        (
            &["x/a", "10.0.0.1:80", "--proto", "icmp"],
            "invalid trace: ICMP has no ports",
        ),
        (
            &["x/a", "y/b", "--flags", "SYN,PUSH"],
            "--flags \"SYN,PUSH\": \"PUSH\" is not a TCP flag",
        ),
        (
            &["x/a", "y/b", "--flags", ""],
            "--flags \"\": \"\" is not a TCP flag",
        ),
        (
            &["x/a", "y/b", "--live", "--flags", "SYN"],
            "invalid trace: TCP flags only shape an injected packet",
        ),
        (
            &["x/a", "y/b", "--timeout", "soon"],
            "--timeout \"soon\" is not a duration",
        ),
        (
            &["x/a", "y/b", "--timeout", "5h"],
            "--timeout \"5h\" is not a duration",
        ),
        (
            &["x/a", "y/b", "--timeout=-1s"],
            "--timeout \"-1s\" is not a duration",
        ),
        (
            &["x/a", "y/b", "--timeout", "99999999999999999999m"],
            "--timeout \"99999999999999999999m\" is not a duration",
        ),
        (
            &["x/a", "y/b", "--timeout", "0s"],
            "invalid trace: timeout 0 ms is out of range",
        ),
        (
            &["x/a", "y/b", "--timeout", "11m"],
            "invalid trace: timeout 660000 ms is out of range",
        ),
    ] {
        let err = request(args).expect_err(message);
        let text = chain(&err);
        assert!(text.contains(message), "{args:?}: {text}");
    }
}

#[test]
fn what_clap_refuses() {
    for args in [
        &["x/a"][..],
        &["x/a", "y/b", "--proto", "gre"],
        &["x/a", "y/b", "--dport", "70000"],
        &["x/a", "y/b", "-o", "table"],
        &["x/a", "y/b", "--color", "sometimes"],
    ] {
        assert!(parse(args).is_err(), "{args:?}");
    }
    let args = parse(&["x/a", "y/b"]).expect("defaults");
    assert_eq!(
        (args.output, args.color, args.lab.as_str()),
        (Output::Tree, ColorChoice::Auto, DEFAULT_NAME)
    );
    let args = parse(&[
        "x/a", "y/b", "-o", "yaml", "--color", "always", "--lab", "t",
    ])
    .expect("flags");
    assert_eq!(
        (args.output, args.color, args.lab.as_str()),
        (Output::Yaml, ColorChoice::Always, "t")
    );
}

fn lab() -> LabState {
    LabState::plan(&lumen_lab::LabConfig {
        name: "t1".into(),
        nodes: 2,
        pods_per_node: 2,
        bin_dir: PathBuf::from("/bin"),
        state_root: PathBuf::from("/nonexistent"),
        ..lumen_lab::LabConfig::default()
    })
}

#[test]
fn the_source_pod_names_the_node_and_every_node_is_asked() {
    let lab = lab();
    let target =
        resolve(&lab, &request(&["pod-2-1", "pod-1-2"]).expect("valid")).expect("known pods");
    assert_eq!(target.source_node, "node-2");
    let agents: Vec<(&str, PathBuf)> = target
        .agents
        .iter()
        .map(|a| (a.node.as_str(), a.socket.clone()))
        .collect();
    assert_eq!(
        agents,
        [
            ("node-1", lab.nodes[0].socket.clone()),
            ("node-2", lab.nodes[1].socket.clone())
        ]
    );
    for dst in ["node/node-1", "203.0.113.10", "10.244.2.9:81"] {
        let target = resolve(&lab, &request(&["pod-1-1", dst]).expect("valid"))
            .unwrap_or_else(|e| panic!("{dst}: {e}"));
        assert_eq!(target.source_node, "node-1");
    }
}

#[test]
fn unknown_pods_and_nodes_name_the_lab() {
    let lab = lab();
    for (args, message) in [
        (
            ["nope", "pod-1-1"],
            "lab t1 has no pod default/nope (its pods: default/pod-1-1, default/pod-1-2, \
             default/pod-2-1, default/pod-2-2)",
        ),
        (
            ["pod-1-1", "x/pod-2-1"],
            "lab t1 has no pod x/pod-2-1 (its pods: default/pod-1-1,",
        ),
        (
            ["pod-1-1", "node/node-9"],
            "lab t1 has no node node-9 (its nodes: node-1, node-2)",
        ),
    ] {
        let err = resolve(&lab, &request(&args).expect("valid")).expect_err(message);
        assert!(err.to_string().starts_with(message), "{args:?}: {err}");
    }
}

#[test]
fn long_name_lists_are_cut_short() {
    let names = (1..=15).map(|i| format!("p{i}"));
    assert_eq!(
        known(names),
        "p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12 and 3 more"
    );
    assert_eq!(known(std::iter::empty()), "none");
}
