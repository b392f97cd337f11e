//! The policy in force as the node API reports it (`lumen_api::policy`): the
//! list of policies, what applies to one pod, and the explanation of one
//! packet's verdict, with the datapath's decision beside the engine's for the
//! directions this node enforces.

use std::net::Ipv4Addr;

use lumen_api::policy::{
    AllowingRule, DatapathVerdict, DirectionExplanation, DirectionPolicies, EngineVerdict,
    ExplainRequest, ExplainedEnd, Explanation, Peer, PodPolicies, PodRef, PolicyList,
    PolicySummary, PolicyType, PortRange, RejectedPolicy, RuleId, RuleRef,
};

use super::engine::{Compiled, DirectionRules, DirectionVerdict, EndpointPolicy, Ports};
use crate::datapath::{DatapathDecision, DatapathError};

/// Why a policy question has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no pod {pod} with an address")]
    UnknownPod { pod: PodRef },
    #[error("the datapath's policy maps could not be read")]
    Datapath(#[source] DatapathError),
}

/// Every policy in force and every refused one.
pub fn list(compiled: &Compiled) -> PolicyList {
    let policies = compiled
        .policies()
        .iter()
        .map(|p| {
            let types = [
                (PolicyType::Ingress, p.policy.ingress.is_some()),
                (PolicyType::Egress, p.policy.egress.is_some()),
            ];
            PolicySummary {
                namespace: p.policy.namespace.clone(),
                name: p.policy.name.clone(),
                policy_types: types.iter().filter(|t| t.1).map(|t| t.0).collect(),
                selected_pods: p.selected_pods,
                previous_version: p.previous,
            }
        })
        .collect();
    let rejected = compiled
        .rejected
        .iter()
        .map(|r| RejectedPolicy {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            reason: r.reason.to_string(),
            previous_in_force: r.previous_in_force,
        })
        .collect();
    PolicyList { policies, rejected }
}

fn pod_ref(ep: &EndpointPolicy) -> PodRef {
    PodRef {
        namespace: ep.namespace.clone(),
        name: ep.name.clone(),
    }
}

/// What applies to `pod`; `local` says which addresses are this node's (`node`).
pub fn for_pod(
    compiled: &Compiled,
    node: &str,
    local: impl Fn(Ipv4Addr) -> bool,
    pod: &PodRef,
) -> Result<PodPolicies, ReportError> {
    let ep = compiled
        .endpoint(&pod.namespace, &pod.name)
        .ok_or_else(|| ReportError::UnknownPod { pod: pod.clone() })?;
    Ok(PodPolicies {
        node: node.to_owned(),
        pod: pod_ref(ep),
        ip: ep.ip,
        local: local(ep.ip),
        ingress: direction(ep.ingress.as_deref()),
        egress: direction(ep.egress.as_deref()),
    })
}

fn direction(rules: Option<&DirectionRules>) -> DirectionPolicies {
    let Some(rules) = rules else {
        return DirectionPolicies {
            isolated: false,
            default_deny: None,
            rules: Vec::new(),
        };
    };
    DirectionPolicies {
        isolated: true,
        default_deny: Some(RuleRef {
            id: rules.deny_id,
            policy: (*rules.deny).clone(),
        }),
        rules: rules
            .rules
            .iter()
            .map(|r| AllowingRule {
                id: r.id,
                policy: (*r.policy).clone(),
                peers: r.peers.cidrs().to_vec(),
                ports: match &r.ports {
                    Ports::Any => Vec::new(),
                    Ports::Ranges(ranges) => ranges
                        .iter()
                        .map(|p| PortRange {
                            protocol: p.protocol,
                            from: p.from,
                            to: p.to,
                        })
                        .collect(),
                },
            })
            .collect(),
    }
}

fn engine_verdict(v: DirectionVerdict) -> EngineVerdict {
    match v {
        DirectionVerdict::NotIsolated => EngineVerdict::NotIsolated,
        DirectionVerdict::Loopback => EngineVerdict::Loopback,
        DirectionVerdict::Allowed { rule, policy } => EngineVerdict::Allowed { rule, policy },
        DirectionVerdict::DefaultDeny { rule, policy } => {
            EngineVerdict::DefaultDeny { rule, policy }
        }
    }
}

/// The verdict for `request`, from the engine for both directions and from
/// `datapath` (how this node's kernel decides a flow) for the directions this
/// node enforces: egress if the source is one of its pods, ingress if the
/// destination is.
pub fn explain(
    compiled: &Compiled,
    node: &str,
    local: impl Fn(Ipv4Addr) -> bool,
    request: &ExplainRequest,
    datapath: impl FnOnce(Ipv4Addr, Ipv4Addr, u8, u16) -> Result<DatapathDecision, DatapathError>,
) -> Result<Explanation, ReportError> {
    let end = |peer: &Peer| match peer {
        Peer::Address(ip) => Ok(ExplainedEnd {
            ip: *ip,
            pod: compiled.endpoint_by_ip(*ip).map(pod_ref),
        }),
        Peer::Pod(pod) => compiled
            .endpoint(&pod.namespace, &pod.name)
            .map(|ep| ExplainedEnd {
                ip: ep.ip,
                pod: Some(pod_ref(ep)),
            })
            .ok_or_else(|| ReportError::UnknownPod { pod: pod.clone() }),
    };
    let (source, destination) = (end(&request.from)?, end(&request.to)?);
    let (protocol, port) = (request.protocol, request.port);
    let evaluation = compiled.evaluate(source.ip, destination.ip, protocol, port);
    let allowed = evaluation.allowed();
    let enforced = |e: &ExplainedEnd| e.pod.is_some() && local(e.ip);
    let (egress_here, ingress_here) = (enforced(&source), enforced(&destination));
    // A pod's packets to itself never reach the datapath.
    let loopback = evaluation.egress == DirectionVerdict::Loopback;
    let decision = if (egress_here || ingress_here) && !loopback {
        let d = datapath(source.ip, destination.ip, protocol.0, port);
        Some(d.map_err(ReportError::Datapath)?)
    } else {
        None
    };
    let explained = |verdict: DirectionVerdict, here: bool, rule: Option<RuleId>| {
        let engine = engine_verdict(verdict);
        let datapath = decision.zip(rule).map(|(d, rule)| DatapathVerdict {
            rule,
            policy: compiled.rule(rule).cloned(),
            denied: d.denied,
            agrees: rule == engine.rule() && (engine.allowed() || d.denied),
        });
        DirectionExplanation {
            engine,
            node: here.then(|| node.to_owned()),
            datapath,
        }
    };
    let egress_rule = egress_here.then(|| decision.map(|d| d.egress_rule));
    let ingress_rule = ingress_here.then(|| decision.map(|d| d.ingress_rule));
    Ok(Explanation {
        egress: explained(evaluation.egress, egress_here, egress_rule.flatten()),
        ingress: explained(evaluation.ingress, ingress_here, ingress_rule.flatten()),
        source,
        destination,
        protocol,
        port,
        allowed,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use lumen_api::flow::{Protocol, RuleAction};

    use super::*;
    use crate::cluster::ClusterState;
    use crate::cluster::manifest::parse_into;
    use crate::policy::PolicyEngine;

    /// Pods x/a (10.0.1.1, this node's) and x/b (10.0.2.1, another node's);
    /// a accepts TCP/80 from b only, b may send only to a; `bad` is refused.
    const CLUSTER: &str = "kind: Pod\nmetadata: {name: a, namespace: x, labels: {pod: a}}\nstatus: {podIP: 10.0.1.1}\n---\n\
        kind: Pod\nmetadata: {name: b, namespace: x, labels: {pod: b}}\nstatus: {podIP: 10.0.2.1}\n---\n\
        kind: NetworkPolicy\nmetadata: {name: a-in, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]}\n---\n\
        kind: NetworkPolicy\nmetadata: {name: b-out, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.0.1.0/24}}]}]}\n---\n\
        kind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}\n";

    fn compiled() -> Compiled {
        let mut s = ClusterState::default();
        parse_into(&mut s, Path::new("test.yaml"), CLUSTER);
        PolicyEngine::compile(&s, None)
    }

    fn local(ip: Ipv4Addr) -> bool {
        ip.octets()[2] == 1
    }

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "x".into(),
            name: name.into(),
        }
    }

    fn request(from: Peer, to: Peer, port: u16) -> ExplainRequest {
        ExplainRequest {
            from,
            to,
            protocol: Protocol::TCP,
            port,
        }
    }

    /// The datapath as the engine would have it: what a healthy node says.
    fn faithful(
        c: &Compiled,
    ) -> impl Fn(Ipv4Addr, Ipv4Addr, u8, u16) -> Result<DatapathDecision, DatapathError> + '_ {
        move |from, to, proto, port| {
            let e = c.evaluate(from, to, Protocol(proto), port);
            let id = |v: &DirectionVerdict, here: bool| match v {
                DirectionVerdict::Allowed { rule, .. }
                | DirectionVerdict::DefaultDeny { rule, .. }
                    if here =>
                {
                    *rule
                }
                _ => 0,
            };
            Ok(DatapathDecision {
                egress_rule: id(&e.egress, local(from)),
                ingress_rule: id(&e.ingress, local(to)),
                denied: local(to) && !e.ingress.allowed() || local(from) && !e.egress.allowed(),
            })
        }
    }

    #[test]
    fn lists_policies_with_their_types_and_refusals() {
        let list = list(&compiled());
        let shown: Vec<_> = list
            .policies
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.policy_types.clone(),
                    p.selected_pods,
                    p.previous_version,
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("a-in", vec![PolicyType::Ingress], 1, false),
                ("b-out", vec![PolicyType::Egress], 1, false),
            ]
        );
        assert_eq!(list.rejected.len(), 1);
        let r = &list.rejected[0];
        assert_eq!((r.name.as_str(), r.previous_in_force), ("bad", false));
        assert!(r.reason.contains("70000"), "{}", r.reason);
    }

    #[test]
    fn for_a_pod_shows_each_direction() {
        let c = compiled();
        let a = for_pod(&c, "node-1", local, &pod("a")).expect("x/a");
        assert!(a.local);
        assert_eq!(a.ip, Ipv4Addr::new(10, 0, 1, 1));
        assert!(a.ingress.isolated && !a.egress.isolated);
        let deny = a.ingress.default_deny.as_ref().expect("default deny");
        assert_eq!(
            (deny.policy.name.as_str(), deny.policy.action),
            ("a-in", RuleAction::Drop)
        );
        assert_eq!(c.rule(deny.id), Some(&deny.policy));
        let rule = &a.ingress.rules[0];
        assert_eq!(rule.policy.rule, "ingress[0]");
        assert_eq!(rule.peers, ["10.0.2.1/32".parse().expect("cidr")]);
        assert_eq!(
            rule.ports,
            [PortRange {
                protocol: Protocol::TCP,
                from: 80,
                to: 80
            }]
        );
        let b = for_pod(&c, "node-1", local, &pod("b")).expect("x/b");
        assert!(!b.local && b.egress.isolated && !b.ingress.isolated);
        assert!(b.egress.rules[0].ports.is_empty(), "every port");
        assert!(matches!(
            for_pod(&c, "node-1", local, &pod("zz")),
            Err(ReportError::UnknownPod { .. })
        ));
    }

    #[test]
    fn explains_with_the_datapath_of_the_enforcing_node() {
        let c = compiled();
        let dp = faithful(&c);
        // b -> a:81: b's egress allows (decided elsewhere), a's ingress denies here.
        let e = explain(
            &c,
            "node-1",
            local,
            &request(Peer::Pod(pod("b")), Peer::Pod(pod("a")), 81),
            &dp,
        )
        .expect("explained");
        assert!(!e.allowed);
        assert_eq!(e.source.ip, Ipv4Addr::new(10, 0, 2, 1));
        assert!(matches!(
            &e.egress.engine,
            EngineVerdict::Allowed { policy, .. } if policy.name == "b-out"
        ));
        assert_eq!(e.egress.node, None, "b's node enforces egress");
        assert_eq!(e.egress.datapath, None);
        let EngineVerdict::DefaultDeny { rule, policy } = &e.ingress.engine else {
            panic!("{:?}", e.ingress.engine)
        };
        assert_eq!(policy.name, "a-in");
        assert_eq!(e.ingress.node.as_deref(), Some("node-1"));
        assert_eq!(
            e.ingress.datapath,
            Some(DatapathVerdict {
                rule: *rule,
                policy: Some(policy.clone()),
                denied: true,
                agrees: true,
            })
        );

        // By address, to a non-pod: a's egress is not isolated, and enforced here.
        let e = explain(
            &c,
            "node-1",
            local,
            &request(
                Peer::Address(Ipv4Addr::new(10, 0, 1, 1)),
                Peer::Address(Ipv4Addr::new(203, 0, 113, 1)),
                443,
            ),
            &dp,
        )
        .expect("explained");
        assert_eq!(e.source.pod, Some(pod("a")));
        assert_eq!(e.destination.pod, None);
        assert!(e.allowed);
        assert_eq!(e.egress.engine, EngineVerdict::NotIsolated);
        assert!(
            e.egress
                .datapath
                .as_ref()
                .is_some_and(|d| d.agrees && d.rule == 0)
        );
        assert_eq!(e.ingress.node, None);
    }

    #[test]
    fn a_datapath_that_differs_is_shown_to_disagree() {
        let c = compiled();
        let req = request(Peer::Pod(pod("b")), Peer::Pod(pod("a")), 80);
        let allowed = explain(&c, "node-1", local, &req, faithful(&c)).expect("explained");
        let engine_rule = allowed.ingress.engine.rule();
        assert!(allowed.allowed && engine_rule != 0);
        assert_eq!(
            allowed.ingress.datapath.as_ref().map(|d| d.agrees),
            Some(true)
        );
        for wrong in [
            // Another rule, or none at all.
            DatapathDecision {
                ingress_rule: engine_rule + 1,
                ..DatapathDecision::default()
            },
            DatapathDecision::default(),
        ] {
            let e = explain(&c, "node-1", local, &req, |_, _, _, _| Ok(wrong)).expect("explained");
            let dp = e.ingress.datapath.expect("enforced here");
            assert!(!dp.agrees, "{wrong:?}");
        }
        // The default deny's rule, but the kernel lets it through.
        let denied = request(Peer::Pod(pod("b")), Peer::Pod(pod("a")), 81);
        let deny_rule = explain(&c, "node-1", local, &denied, faithful(&c))
            .expect("explained")
            .ingress
            .engine
            .rule();
        let passes = DatapathDecision {
            ingress_rule: deny_rule,
            ..DatapathDecision::default()
        };
        let e = explain(&c, "node-1", local, &denied, |_, _, _, _| Ok(passes)).expect("explained");
        assert_eq!(e.ingress.datapath.map(|d| d.agrees), Some(false));
    }

    #[test]
    fn a_pod_talking_to_itself_never_asks_the_datapath() {
        let c = compiled();
        let e = explain(
            &c,
            "node-1",
            local,
            &request(Peer::Pod(pod("a")), Peer::Pod(pod("a")), 9),
            |_, _, _, _| panic!("the datapath is not consulted"),
        )
        .expect("explained");
        assert!(e.allowed);
        assert_eq!(e.ingress.engine, EngineVerdict::Loopback);
        assert_eq!(e.ingress.node.as_deref(), Some("node-1"));
        assert_eq!(e.ingress.datapath, None);
        let unknown = explain(
            &c,
            "node-1",
            local,
            &request(Peer::Pod(pod("zz")), Peer::Pod(pod("a")), 9),
            |_, _, _, _| panic!("not reached"),
        );
        assert_eq!(
            unknown.map_err(|e| e.to_string()).err().as_deref(),
            Some("no pod x/zz with an address")
        );
    }
}
