//! Traces as users meet them outside `lumen trace`: a `Traceflow` object written
//! into the manifest directory gets its result in `status` (and a bad one its
//! reason), traced flows show as TRACED in `lumen observe`, and the source
//! node counts traces by result in Prometheus.

use std::path::Path;
use std::time::{Duration, Instant};

use lumen_api::policy::PodRef;
use lumen_api::trace::orchestrate;
use lumen_api::trace::{TraceDestination, TraceRequest};
use lumen_tests::harness;

const LAB: &str = "ttfo";

fn wait_for_status(path: &Path, within: Duration) -> serde_yaml::Value {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).expect("the object file stays");
        let value: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
        let phase = value["status"]["phase"].as_str().map(str::to_owned);
        if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
            return value;
        }
        assert!(
            start.elapsed() < within,
            "no final status in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pod(name: &str) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

#[test]
fn traceflow_objects_observe_and_metrics() {
    if !harness::require_root("traceflow_objects_observe_and_metrics") {
        return;
    }
    let lab = harness::lab(LAB, 2, 2);
    let dir = lab.state().manifests_dir();

    // --- A Traceflow object: the source pod's agent runs it and writes status.
    let object = dir.join("traceflow-web.yaml");
    std::fs::write(
        &object,
        "apiVersion: lumen.dev/v1alpha1\nkind: Traceflow\nmetadata:\n  name: web\nspec:\n  \
         source: {namespace: default, name: pod-1-1}\n  destination: {pod: {namespace: default, name: pod-2-1}}\n  \
         protocol: 6\n  destinationPort: 80\n",
    )
    .expect("object written");
    let done = wait_for_status(&object, Duration::from_secs(10));
    let status = &done["status"];
    assert_eq!(status["phase"].as_str(), Some("Succeeded"), "{status:?}");
    assert_eq!(status["verdict"].as_str(), Some("DELIVERED"));
    assert_eq!(status["sourceNode"].as_str(), Some("node-1"));
    let hops: Vec<(String, String, String)> = status["hops"]
        .as_sequence()
        .expect("hops")
        .iter()
        .map(|h| {
            (
                h["node"].as_str().unwrap_or_default().to_owned(),
                h["point"].as_str().unwrap_or_default().to_owned(),
                h["action"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("node-1", "FROM_POD", "RECEIVED"),
        ("node-1", "POLICY_EGRESS", "FORWARDED"),
        ("node-1", "TO_OVERLAY", "TUNNELLED"),
        ("node-2", "FROM_OVERLAY", "RECEIVED"),
        ("node-2", "POLICY_INGRESS", "FORWARDED"),
        ("node-2", "TO_POD", "DELIVERED"),
    ]
    .iter()
    .map(|(n, p, a)| ((*n).to_owned(), (*p).to_owned(), (*a).to_owned()))
    .collect();
    assert_eq!(hops, want);
    assert_eq!(
        done["spec"]["destinationPort"].as_u64(),
        Some(80),
        "the spec is kept as written"
    );
    // A final phase is never run again: the status stays as it is.
    let before = std::fs::read_to_string(&object).expect("read");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(std::fs::read_to_string(&object).expect("read"), before);

    // --- A spec the API would refuse gets a Failed status with the reason.
    let bad = dir.join("traceflow-bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: lumen.dev/v1alpha1\nkind: Traceflow\nmetadata:\n  name: bad\nspec:\n  \
         source: {namespace: default, name: pod-1-1}\n  destination: {ip: 10.244.2.1}\n  protocol: 6\n",
    )
    .expect("object written");
    let failed = wait_for_status(&bad, Duration::from_secs(10));
    assert_eq!(failed["status"]["phase"].as_str(), Some("Failed"));
    let reason = failed["status"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("destination port"), "{reason}");

    // --- An injected trace from the CLI's library, then what observe shows.
    let agents = harness::trace_agents(&lab);
    let request = TraceRequest::tcp(pod("pod-1-2"), TraceDestination::Pod(pod("pod-2-2")), 81);
    let result = orchestrate::run(&agents, "node-1", &request).expect("trace runs");
    let packet = result.packet.expect("the traced packet");
    let node1 = lab.node("node-1").expect("node-1");
    let seen = harness::wait_flows(
        &node1.socket,
        "verdict=TRACED",
        Duration::from_secs(10),
        |f| {
            f.iter()
                .any(|f| f.source.port == packet.source_port && f.destination.port == 81)
        },
    );
    assert!(
        seen.iter()
            .any(|f| f.source.port == packet.source_port && f.destination.port == 81),
        "the traced packet's flow is a TRACED flow: {seen:?}"
    );
    assert!(
        seen.iter().all(|f| f.traced),
        "verdict=TRACED returns traced flows only"
    );
    let out = harness::lumen(&[
        "observe",
        "--socket",
        &node1.socket.to_string_lossy(),
        "--verdict",
        "TRACED",
        "--port",
        "81",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.contains("TRACED") && l.contains(&format!(":{}", packet.source_port))),
        "lumen observe shows the traced flow:\n{text}"
    );
    let untraced = harness::flows(&node1.socket, "verdict=TRACED&port=80");
    assert!(
        untraced.iter().all(|e| match e {
            lumen_api::FlowEvent::Flow(f) => f.traced,
            lumen_api::FlowEvent::LostEvents(_) => true,
        }),
        "only traced flows pass"
    );

    // --- The source node counts traces by result; hops are counted on both.
    let metrics = harness::get_text(&node1.socket, "/metrics");
    assert!(
        harness::metric(&metrics, "lumen_traces_started_total") >= 2.0,
        "{metrics}"
    );
    assert!(harness::metric(&metrics, r#"lumen_traces_total{result="delivered"}"#) >= 2.0);
    assert!(harness::metric(&metrics, "lumen_trace_hops_total") >= 6.0);
    let node2 = lab.node("node-2").expect("node-2");
    let metrics2 = harness::get_text(&node2.socket, "/metrics");
    assert!(harness::metric(&metrics2, "lumen_trace_hops_total") >= 6.0);
    assert_eq!(
        harness::metric(&metrics2, "lumen_traces_started_total"),
        0.0,
        "node-2 started none"
    );
}
