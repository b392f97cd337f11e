//! A real Prometheus server (Debian's) scrapes a lab with traffic through the
//! metrics relay, and every PromQL expression of every Grafana panel and every
//! alert rule returns data through its HTTP API: a panel that would show
//! nothing fails here. The alert rules load and evaluate without errors, and
//! the teardown stops the server and the relay.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lumen_api::client::{Client, ClientError};
use lumen_api::cni::CniRequest;
use lumen_lab::LabConfig;
use lumen_lab::prometheus::{self, QueryData, query};
use lumen_tests::harness::{self, Snapshot};
use lumen_tests::promql::{self, Query};
use serde_json::Value;

const LAB: &str = "prom";
/// How long the lab's traffic generator runs.
const TRAFFIC_FOR: Duration = Duration::from_secs(15);
/// Each API call's limit.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first scrape of every node may take (a fresh server has data
/// after about 5.7 s with the lab's 5 s interval).
const FIRST_SCRAPE_WITHIN: Duration = Duration::from_secs(30);

/// Metric families that cannot have data in this lab yet. An expression over
/// one of them must still be a valid query, but may come back empty.
const NO_DATA_YET: &[(&str, &str)] = &[(
    "lumen_policy_rule_hits_total",
    "the lab has no NetworkPolicy, so no rule is ever hit",
)];

#[test]
fn prometheus_scrapes_the_lab_and_every_panel_and_alert_has_data() {
    if !harness::require_root("prometheus_scrapes_the_lab_and_every_panel_and_alert_has_data") {
        return;
    }
    assert!(
        Path::new(prometheus::BINARY).is_file(),
        "{} is missing: install with: cargo xtask deps",
        prometheus::BINARY
    );
    let queries = promql::expressions();
    assert!(queries.iter().any(Query::is_panel), "no dashboard panel");
    assert!(!queries.iter().all(Query::is_panel), "no alert rule");

    let before = Snapshot::take();
    let lab = harness::lab_with_config(LabConfig {
        name: LAB.to_owned(),
        nodes: 2,
        pods_per_node: 2,
        // The IPFIX export families need a collector to export to.
        collector: true,
        prometheus: true,
        ..LabConfig::default()
    });
    let prom = lab.prometheus().expect("the lab runs Prometheus").clone();
    let state_dir = lab.state().state_dir.clone();

    // --- What the user is told: the URL in `lumen lab status`.
    let status = harness::status(LAB);
    assert_eq!(status["prometheus"]["url"], prom.url.as_str(), "{status}");
    assert_eq!(status["prometheus"]["alive"], true, "{status}");
    assert_eq!(status["prometheus"]["relay_alive"], true, "{status}");
    assert!(
        !prom.rule_files.is_empty(),
        "dashboards/prometheus/alerts.yml is missing, so the lab loads no alert rules"
    );

    // --- The first scrape of every node, polled for.
    let start = Instant::now();
    let up_query = format!("up{{job=\"{}\"}}", prometheus::JOB);
    let nodes: BTreeSet<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let up = poll(FIRST_SCRAPE_WITHIN, || {
        let data = query(prom.listen, &format!("{up_query} == 1"), API_TIMEOUT).ok()?;
        (label_values(&data, "node") == nodes).then_some(data)
    })
    .unwrap_or_else(|| {
        panic!(
            "not every node scraped after {FIRST_SCRAPE_WITHIN:?}: {:?}; {}",
            query(prom.listen, &up_query, API_TIMEOUT),
            lumen_lab::process::log_tail(&prom.log, 20)
        )
    });
    eprintln!("every node scraped {:?} after up", start.elapsed());
    // Each node is scraped through its own relay port, named by its node label.
    for series in up.result.as_array().into_iter().flatten() {
        let node = series["metric"]["node"].as_str().unwrap_or_default();
        let target = prom
            .relay
            .targets
            .iter()
            .find(|t| t.node == node)
            .unwrap_or_else(|| panic!("no relay target for {node}"));
        assert_eq!(
            series["metric"]["instance"],
            target.listen.to_string().as_str()
        );
    }

    // --- A failed CNI request, so the CNI error family has a series: ADD for
    // a pod whose network namespace is gone.
    let node = &lab.nodes()[0];
    let refused = Client::new(&node.socket, API_TIMEOUT).post::<_, Value>(
        lumen_api::paths::CNI_ADD,
        &CniRequest {
            container_id: "prom-e2e-gone".to_owned(),
            netns: format!("/run/netns/{LAB}-gone"),
            ifname: "eth0".to_owned(),
            pod_namespace: Some("default".to_owned()),
            pod_name: Some("gone".to_owned()),
            mtu: None,
        },
    );
    assert!(
        matches!(refused, Err(ClientError::Agent(_))),
        "ADD into a missing namespace: {refused:?}"
    );

    // --- Traffic between every pod pair, from the lab's own generator.
    let mut traffic = Command::new(harness::bin_dir().join("lumen"))
        .args(["lab", "traffic", "--name", LAB, "--interval-ms", "50"])
        .stdout(Stdio::null())
        .spawn()
        .expect("lumen lab traffic starts");
    std::thread::sleep(TRAFFIC_FOR);
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(traffic.id() as libc::pid_t, libc::SIGTERM) };
    let stopped = traffic.wait().expect("traffic generator exits");
    assert!(stopped.success(), "lumen lab traffic: {stopped}");

    // --- Every node scraped again after the traffic, so its counters are in.
    let traffic_end = unix_seconds();
    poll(FIRST_SCRAPE_WITHIN, || {
        let data = query(
            prom.listen,
            &format!("min(timestamp({up_query}))"),
            API_TIMEOUT,
        )
        .ok()?;
        (scalar_of(&data)? > traffic_end).then_some(())
    })
    .expect("a scrape of every node after the traffic");
    let packets = query(
        prom.listen,
        r#"sum(increase(lumen_datapath_packets_total{verdict="forwarded"}[1m]))"#,
        API_TIMEOUT,
    )
    .expect("packets query");
    let forwarded = scalar_of(&packets).unwrap_or_default();
    assert!(
        forwarded > 100.0,
        "Prometheus saw {forwarded} forwarded packets"
    );

    // --- Every panel query as Grafana runs it, and every alert rule's
    // expression with its comparisons made `bool`: a rule that does not fire
    // must still find the series it watches.
    let mut failures = Vec::new();
    let mut waived = Vec::new();
    for q in &queries {
        let checked = if q.is_panel() {
            q.expr.clone()
        } else {
            non_filtering(&q.expr)
        };
        match query(prom.listen, &checked, API_TIMEOUT) {
            Err(err) => failures.push(format!("{q}: {err}\n    {checked}")),
            Ok(data) if data.has_data() => {}
            Ok(_) => match no_data_yet(&q.expr) {
                Some(reason) => waived.push(format!("{q} ({reason})")),
                None => failures.push(format!("{q}: no data\n    {checked}")),
            },
        }
    }
    eprintln!(
        "{} queries run; empty and allowed to be: {waived:#?}",
        queries.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} queries fail in a lab with traffic:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );

    // --- The alert rules loaded and evaluate without errors.
    let rules = poll(FIRST_SCRAPE_WITHIN, || {
        let rules = loaded_rules(prom.listen);
        let evaluated = !rules.is_empty()
            && rules
                .iter()
                .all(|r| r["lastEvaluation"].as_str() != Some("0001-01-01T00:00:00Z"));
        evaluated.then_some(rules)
    })
    .expect("the alert rules loaded and evaluated");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "alert rule {rule}");
    }

    // --- Teardown stops the server and the relay with the rest of the lab.
    drop(lab);
    assert!(
        lumen_lab::process::marked(&state_dir).is_empty(),
        "Prometheus or the relay outlived the lab"
    );
    assert!(
        prometheus::http_get(prom.listen, "/-/ready", Duration::from_secs(1)).is_err(),
        "Prometheus still answers on {}",
        prom.listen
    );
    assert_eq!(Snapshot::take(), before);
}

/// The family an expression may be empty for, and why.
fn no_data_yet(expr: &str) -> Option<&'static str> {
    NO_DATA_YET
        .iter()
        .find(|(family, _)| expr.contains(family))
        .map(|(_, reason)| *reason)
}

/// `expr` with every comparison made a `bool` one, so it keeps its series
/// whether or not they pass: an alert that does not fire still shows that its
/// operands have data. Label matchers (inside braces) and strings are left as
/// they are.
fn non_filtering(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len() + 16);
    let (mut braces, mut quote) = (0usize, None::<char>);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' {
                out.extend(next);
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        let op_len = match (c, next) {
            _ if braces > 0 => 0,
            ('=' | '!' | '>' | '<', Some('=')) => 2,
            ('>' | '<', _) => 1,
            _ => 0,
        };
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            _ => {}
        }
        if op_len == 0 {
            out.push(c);
            i += 1;
            continue;
        }
        out.extend(&chars[i..i + op_len]);
        i += op_len;
        let rest: String = chars[i..].iter().collect();
        if !rest.trim_start().starts_with("bool") {
            out.push_str(" bool");
        }
    }
    out
}

/// The values of `label` over the series of an instant vector.
fn label_values(data: &QueryData, label: &str) -> BTreeSet<String> {
    data.result
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["metric"][label].as_str().map(str::to_owned))
        .collect()
}

/// The one value of a single-series vector or a scalar.
fn scalar_of(data: &QueryData) -> Option<f64> {
    let value = match data.result_type.as_str() {
        "scalar" => &data.result[1],
        _ => &data.result.as_array()?.first()?["value"][1],
    };
    value.as_str()?.parse().ok()
}

/// Every rule of every group, from `GET /api/v1/rules`.
fn loaded_rules(listen: SocketAddr) -> Vec<Value> {
    let Ok((200, body)) = prometheus::http_get(listen, "/api/v1/rules", API_TIMEOUT) else {
        return Vec::new();
    };
    let answer: Value = serde_json::from_slice(&body).unwrap_or_default();
    answer["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Call `f` every 250 ms until it returns something, for at most `limit`.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = f() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn comparisons_become_bool_outside_matchers_and_strings() {
    for (expr, want) in [
        (
            "lumen_ipfix_collector_up == 0",
            "lumen_ipfix_collector_up == bool 0",
        ),
        (
            r#"sum(rate(a{verdict!="x",n=~"y"}[5m])) > 0.05 * sum(b{l="a>b"}) and c >= 10"#,
            r#"sum(rate(a{verdict!="x",n=~"y"}[5m])) > bool 0.05 * sum(b{l="a>b"}) and c >= bool 10"#,
        ),
        ("a < bool 3", "a < bool 3"),
        ("x unless y offset 10m", "x unless y offset 10m"),
        (r#"a{s="\"<"} <= 1"#, r#"a{s="\"<"} <= bool 1"#),
    ] {
        assert_eq!(non_filtering(expr), want, "{expr}");
    }
}

#[test]
fn the_waivers_name_families_of_docs_metrics() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"))
            .expect("docs/metrics.md");
    for (family, reason) in NO_DATA_YET {
        assert!(
            docs.contains(family),
            "{family} ({reason}) is not documented"
        );
    }
    assert_eq!(
        no_data_yet("sum(rate(lumen_policy_rule_hits_total[1m]))"),
        Some(NO_DATA_YET[0].1)
    );
    assert_eq!(
        no_data_yet("sum(rate(lumen_flows_created_total[1m]))"),
        None
    );
}
