//! The NetworkPolicy conformance cases (`tests/policy/cases.yaml`) through the
//! policy engine: every cell of every matrix, and every address probe. The
//! cases are read by `lumen_tests::policy_cases`, which the lab test shares.

use std::net::Ipv4Addr;

use lumen_agent::policy::{Compiled, DirectionVerdict, PolicyEngine};
use lumen_tests::policy_cases::{self, Case, load, render};

/// Every verdict names a policy of the case.
fn check_attribution(case: &Case, compiled: &Compiled, verdict: &DirectionVerdict) {
    let (rule, policy) = match verdict {
        DirectionVerdict::Allowed { rule, policy }
        | DirectionVerdict::DefaultDeny { rule, policy } => (rule, policy),
        DirectionVerdict::NotIsolated | DirectionVerdict::Loopback => return,
    };
    assert_eq!(compiled.rule(*rule), Some(policy), "{}: rule id", case.name);
    assert!(
        case.policies.iter().any(|p| {
            p.metadata.name.as_deref() == Some(policy.name.as_str())
                && p.metadata.namespace.as_deref() == Some(policy.namespace.as_str())
        }),
        "{}: {policy:?} is not a policy of the case",
        case.name
    );
}

#[test]
fn conformance_cases_match_the_engine() {
    let file = load();
    let pods = file.model.pod_names();
    let ips = file.model.ips();
    // Addresses other than pods' must be the model's, so the lab provides them.
    let address = |name: &str| -> Ipv4Addr {
        ips.get(name).copied().unwrap_or_else(|| {
            let ip = name.parse().expect("a pod or an address");
            assert!(
                file.model.outside.contains(&ip),
                "{ip} is not in model.outside"
            );
            ip
        })
    };
    let mut failures = Vec::new();
    let mut names = Vec::new();
    let mut cells = 0;
    for case in &file.cases {
        assert!(!case.about.is_empty(), "{}: about", case.name);
        assert!(!names.contains(&case.name), "{}: duplicate", case.name);
        names.push(case.name.clone());
        let compiled = PolicyEngine::compile(&file.model.state(case), None);
        assert!(
            compiled.rejected.is_empty(),
            "{}: policies rejected: {:?}",
            case.name,
            compiled.rejected
        );
        for (text, want) in case.probes(&pods) {
            let (proto, port) = policy_cases::probe(text);
            let got = |from: &str, to: &str| {
                let verdict = compiled.evaluate(ips[from], ips[to], proto, port);
                check_attribution(case, &compiled, &verdict.egress);
                check_attribution(case, &compiled, &verdict.ingress);
                verdict.allowed()
            };
            let wrong: Vec<String> = want
                .iter()
                .filter(|((from, to), allowed)| got(from, to) != **allowed)
                .map(|((from, to), allowed)| {
                    let verdict = compiled.evaluate(ips[from], ips[to], proto, port);
                    format!(
                        "  {from} -> {to}: expected {}, engine {verdict:?}",
                        if *allowed { "allowed" } else { "denied" }
                    )
                })
                .collect();
            cells += want.len();
            if !wrong.is_empty() {
                failures.push(format!(
                    "{} {text}:\n{}\nthe engine says:\n{}",
                    case.name,
                    wrong.join("\n"),
                    render(&pods, |f, t| got(f, t))
                ));
            }
        }
        for probe in case.address_probes() {
            assert!(
                ips.contains_key(&probe.from) || ips.contains_key(&probe.to),
                "{}: {probe:?}: one end must be a pod",
                case.name
            );
            let verdict = compiled.evaluate(
                address(&probe.from),
                address(&probe.to),
                probe.protocol,
                probe.port,
            );
            check_attribution(case, &compiled, &verdict.egress);
            check_attribution(case, &compiled, &verdict.ingress);
            if verdict.allowed() != probe.allowed {
                failures.push(format!("{} {probe:?}: engine {verdict:?}", case.name));
            }
        }
    }
    assert!(file.cases.len() >= 40, "only {} cases", file.cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} case probes disagree ({cells} cells checked):\n{}",
        failures.len(),
        file.cases.len(),
        failures.join("\n\n")
    );
}
