//! Policy changes end to end in a live lab: the time from a NetworkPolicy
//! file landing in the manifest directory (written aside and renamed in, as
//! any tool that updates it should) to the destination node's *kernel maps*
//! deciding by it, with `--present` policies already enforced there. Each
//! change alternately adds a policy that isolates the server (so its datapath
//! denies the client) and deletes it (so it allows it again); the decision is
//! read back from the maps through `GET /v1/policies/explain`, polled as fast
//! as the agent answers. The baseline is that poll's own round trip, in the
//! same run: the measurement's resolution.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lumen_api::client::Client;
use lumen_api::paths;
use lumen_api::policy::{ExplainQuery, Explanation, PolicyList};
use lumen_lab::Lab;

use super::policy_tax;
use super::report::{Verdict, print_verdicts, ratio};
use super::stats::{median, percentile};

const LAB: &str = "bench-polupd";
/// The enforcement target, from the file to the kernel's maps.
const TARGET_MS: f64 = 50.0;
/// Filler pods on the server's node that the present policies isolate.
const FILLERS: usize = 100;
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub present: usize,
    pub changes: usize,
}

pub fn run(options: Options) -> Result<()> {
    println!(
        "policy update: manifest file -> node-2's kernel maps decide by it, {} changes \
         (add / delete a policy isolating pod-2-1), {} policies present",
        options.changes, options.present
    );
    let guard = policy_tax::lab(LAB)?;
    let lab = guard.lab();
    let dir = lab.state().manifests_dir();
    let agent = Client::new(&lab.node("node-2").context("node-2")?.socket, DEADLINE);
    write_present(lab, &dir, options.present)?;
    let query = ExplainQuery {
        from_pod: Some("pod-1-1".into()),
        to_pod: Some("pod-2-1".into()),
        protocol: Some("TCP".into()),
        port: Some("80".into()),
        ..ExplainQuery::default()
    }
    .path();
    let denied = || -> Result<bool> {
        let e: Explanation = agent.get(&query).context("explain")?;
        let kernel = e
            .ingress
            .datapath
            .context("node-2 reports no datapath verdict")?;
        Ok(kernel.denied)
    };
    wait_present(&agent, options.present)?;
    if denied()? {
        bail!("pod-2-1 is isolated before the first change");
    }

    let file = dir.join("bench-policy-update.yaml");
    let staged = dir.join(".bench-policy-update.tmp");
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: \
                  isolate-server, namespace: default}\nspec:\n  podSelector: {matchLabels: \
                  {app: pod-2-1}}\n  policyTypes: [Ingress]\n";
    let mut took = Vec::with_capacity(options.changes);
    let mut polls = Vec::new();
    for change in 0..options.changes {
        let deny = change % 2 == 0;
        let start = Instant::now();
        if deny {
            std::fs::write(&staged, policy).context("staging the policy")?;
            std::fs::rename(&staged, &file).context("renaming the policy in")?;
        } else {
            std::fs::remove_file(&file).context("deleting the policy")?;
        }
        loop {
            let poll = Instant::now();
            let now = denied()?;
            polls.push(poll.elapsed());
            if now == deny {
                break;
            }
            if start.elapsed() > DEADLINE {
                bail!("change {change} not in node-2's maps after {DEADLINE:?}");
            }
        }
        took.push(start.elapsed());
        // Changes a few milliseconds apart, as a controller's would be.
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&file);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let to_ms = |v: &[Duration]| -> Vec<f64> { v.iter().copied().map(ms).collect() };
    let (p50, p99) = (ms(percentile(&took, 50.0)), ms(percentile(&took, 99.0)));
    let poll_p50 = median(&to_ms(&polls));
    let poll_p99 = ms(percentile(&polls, 99.0));
    println!();
    println!("{:<48} {:>10} {:>10} {:>12}", "", "p50", "p99", "p50 ratio");
    println!(
        "{:<48} {:>7.2} ms {:>7.2} ms {:>11.1}x",
        "file written -> node-2's maps decide by it",
        p50,
        p99,
        ratio(p50, poll_p50)
    );
    println!(
        "{:<48} {:>7.2} ms {:>7.2} ms {:>11.1}x",
        "  baseline: one explain round trip (resolution)", poll_p50, poll_p99, 1.0
    );
    print_verdicts(&[Verdict::new(
        format!(
            "policy file -> enforced in the kernel, p99 <= {TARGET_MS:.0} ms with {} present",
            options.present
        ),
        p99 <= TARGET_MS,
        format!("{p99:.2} ms"),
    )]);
    Ok(())
}

/// `present` policies over filler pods of node-2 (one allowing rule each), in
/// one file.
fn write_present(lab: &Lab, dir: &Path, present: usize) -> Result<()> {
    let server = lab.require_address("pod-2-1")?;
    let [a, b, c, _] = server.octets();
    let mut yaml = String::new();
    for i in 0..FILLERS.min(present) {
        policy_tax::filler_pod(&mut yaml, i, Ipv4Addr::new(a, b, c, 100 + i as u8));
    }
    for p in 0..present {
        let _ = write!(
            yaml,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: \
             present-{p}, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{filler: \
             \"{}\"}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: \
             pod-1-1}}}}}}]\n    ports: [{{protocol: TCP, port: {}}}]\n",
            p % FILLERS,
            10_000 + p
        );
    }
    std::fs::write(dir.join("bench-policy-present.yaml"), yaml).context("writing the policies")
}

/// Until node-2 has every present policy in force (listed once enforced).
fn wait_present(agent: &Client, present: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let list: PolicyList = agent.get(paths::POLICIES).context("policy list")?;
        if list.policies.len() >= present {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("node-2 did not enforce {present} policies within 120 s")
}
