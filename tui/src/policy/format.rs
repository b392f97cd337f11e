//! How `lumen policy` prints its answers as text: the list as a table with the
//! refused policies and their reasons under it, a pod's policy direction by
//! direction, and an explanation as one line a direction with the deciding
//! rule and the datapath's agreement.

use lumen_api::flow::{PolicyRef, RuleAction};
use lumen_api::policy::{
    AllowingRule, DatapathVerdict, DirectionExplanation, DirectionPolicies, EngineVerdict,
    ExplainedEnd, Explanation, PodPolicies, PolicyList,
};
use lumen_lab::status::table;

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// `lumen policy list`.
pub fn list(list: &PolicyList) -> String {
    let mut lines = Vec::new();
    if list.policies.is_empty() {
        lines.push("No NetworkPolicy in force.".to_owned());
    } else {
        let mut rows = vec![vec![
            "NAMESPACE".to_owned(),
            "NAME".to_owned(),
            "TYPES".to_owned(),
            "SELECTS".to_owned(),
            String::new(),
        ]];
        for p in &list.policies {
            let types: Vec<String> = p.policy_types.iter().map(ToString::to_string).collect();
            rows.push(vec![
                p.namespace.clone(),
                p.name.clone(),
                types.join(","),
                plural(p.selected_pods, "pod"),
                if p.previous_version {
                    "previous version (the update was refused)".to_owned()
                } else {
                    String::new()
                },
            ]);
        }
        lines.extend(table(&rows));
    }
    if !list.rejected.is_empty() {
        lines.push(String::new());
        lines.push("Refused:".to_owned());
        for r in &list.rejected {
            let kept = if r.previous_in_force {
                "; the previous version stays in force"
            } else {
                ""
            };
            lines.push(format!("  {}/{}: {}{kept}", r.namespace, r.name, r.reason));
        }
    }
    lines.join("\n")
}

/// `ns/name rule`, or the default deny of `ns/name`.
fn policy(p: &PolicyRef) -> String {
    match (p.action, p.rule.is_empty()) {
        (RuleAction::Drop, true) => format!("default deny of {}/{}", p.namespace, p.name),
        (_, true) => format!("{}/{}", p.namespace, p.name),
        (_, false) => format!("{}/{} {}", p.namespace, p.name, p.rule),
    }
}

/// `lumen policy for POD`.
pub fn for_pod(answer: &PodPolicies) -> String {
    let whose = if answer.local {
        format!("on {}", answer.node)
    } else {
        format!("as {} sees it (another node enforces it)", answer.node)
    };
    let mut lines = vec![format!("Pod {} ({}) {whose}", answer.pod, answer.ip)];
    for (name, peer, d) in [
        ("Ingress", "from", &answer.ingress),
        ("Egress", "to", &answer.egress),
    ] {
        lines.extend(direction(name, peer, d));
    }
    lines.join("\n")
}

fn direction(name: &str, peer: &str, d: &DirectionPolicies) -> Vec<String> {
    let Some(deny) = d.default_deny.as_ref().filter(|_| d.isolated) else {
        return vec![format!("{name}: not isolated: everything is allowed")];
    };
    let mut lines = vec![format!(
        "{name}: isolated, {} (rule {})",
        policy(&deny.policy),
        deny.id
    )];
    if d.rules.is_empty() {
        lines.push("  no rule allows anything".to_owned());
    }
    let rows: Vec<Vec<String>> = d.rules.iter().map(|r| allowing(peer, r)).collect();
    lines.extend(table(&rows).into_iter().map(|l| format!("  {l}")));
    lines
}

fn allowing(peer: &str, r: &AllowingRule) -> Vec<String> {
    let peers = match r.peers.as_slice() {
        [only] if only.prefix() == 0 => "anywhere".to_owned(),
        peers => {
            let cidrs: Vec<String> = peers.iter().map(ToString::to_string).collect();
            format!("{peer} {}", cidrs.join(", "))
        }
    };
    let ports = if r.ports.is_empty() {
        "any port".to_owned()
    } else {
        let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
        format!("on {}", ports.join(", "))
    };
    vec![
        format!("allow {} (rule {})", policy(&r.policy), r.id),
        peers,
        ports,
    ]
}

fn end(e: &ExplainedEnd) -> String {
    match &e.pod {
        Some(pod) => format!("{pod} ({})", e.ip),
        None => e.ip.to_string(),
    }
}

fn engine(v: &EngineVerdict) -> (&'static str, String) {
    match v {
        EngineVerdict::NotIsolated => ("ALLOWED", "not isolated".to_owned()),
        EngineVerdict::Loopback => ("ALLOWED", "a pod to itself".to_owned()),
        EngineVerdict::Allowed { rule, policy: p } => {
            ("ALLOWED", format!("{} (rule {rule})", policy(p)))
        }
        EngineVerdict::DefaultDeny { rule, policy: p } => {
            ("DENIED", format!("{} (rule {rule})", policy(p)))
        }
    }
}

fn datapath(d: &DirectionExplanation, at: &ExplainedEnd) -> String {
    match (&d.datapath, &d.engine) {
        (Some(DatapathVerdict { agrees: true, .. }), _) => "datapath agrees: yes".to_owned(),
        (Some(dp), _) => {
            let rule = match (dp.rule, &dp.policy) {
                (0, _) => "no rule".to_owned(),
                (id, Some(p)) => format!("{} (rule {id})", policy(p)),
                (id, None) => format!("rule {id}, unknown to the engine"),
            };
            let dropped = if dp.denied { "drops" } else { "passes" };
            format!("datapath agrees: no (it decides with {rule} and {dropped} the flow)")
        }
        (None, EngineVerdict::Loopback) => {
            "datapath: not involved (the packet stays in the pod)".to_owned()
        }
        (None, _) if at.pod.is_none() => "datapath: nothing to enforce (not a pod)".to_owned(),
        (None, _) => "datapath: not checked (another node enforces it)".to_owned(),
    }
}

/// `lumen policy explain FROM TO PORT/PROTO`.
pub fn explain(e: &Explanation) -> String {
    let packet = if e.protocol.has_ports() {
        format!("{}/{}", e.protocol, e.port)
    } else {
        e.protocol.to_string()
    };
    let verdict = if e.allowed { "ALLOWED" } else { "DENIED" };
    let mut lines = vec![format!(
        "{} -> {} {packet}: {verdict}",
        end(&e.source),
        end(&e.destination)
    )];
    let rows: Vec<Vec<String>> = [
        ("egress", &e.egress, &e.source),
        ("ingress", &e.ingress, &e.destination),
    ]
    .into_iter()
    .map(|(name, d, at)| {
        let (word, why) = engine(&d.engine);
        vec![
            name.to_owned(),
            word.to_owned(),
            why,
            d.node.clone().unwrap_or_else(|| "-".to_owned()),
            datapath(d, at),
        ]
    })
    .collect();
    lines.extend(table(&rows).into_iter().map(|l| format!("  {l}")));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lumen_api::flow::Protocol;
    use lumen_api::policy::{
        PodRef, PolicySummary, PolicyType, PortRange, RejectedPolicy, RuleRef,
    };

    use super::*;

    fn pref(name: &str, rule: &str, action: RuleAction) -> PolicyRef {
        PolicyRef {
            namespace: "default".into(),
            name: name.into(),
            rule: rule.into(),
            action,
        }
    }

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn list_is_a_table_with_the_refusals_under_it() {
        let l = PolicyList {
            policies: vec![
                PolicySummary {
                    namespace: "default".into(),
                    name: "web-deny-all".into(),
                    policy_types: vec![PolicyType::Ingress, PolicyType::Egress],
                    selected_pods: 1,
                    previous_version: false,
                },
                PolicySummary {
                    namespace: "default".into(),
                    name: "web-from-11".into(),
                    policy_types: vec![PolicyType::Ingress],
                    selected_pods: 12,
                    previous_version: true,
                },
            ],
            rejected: vec![RejectedPolicy {
                namespace: "default".into(),
                name: "web-from-11".into(),
                reason: "spec.ingress[0].ports[0].port: 70000 is not a valid port number (1-65535)"
                    .into(),
                previous_in_force: true,
            }],
        };
        assert_eq!(
            list(&l),
            "NAMESPACE  NAME          TYPES           SELECTS\n\
             default    web-deny-all  Ingress,Egress  1 pod\n\
             default    web-from-11   Ingress         12 pods  previous version (the update was refused)\n\
             \n\
             Refused:\n  \
             default/web-from-11: spec.ingress[0].ports[0].port: 70000 is not a valid port number (1-65535); the previous version stays in force"
        );
        assert_eq!(list(&PolicyList::default()), "No NetworkPolicy in force.");
    }

    #[test]
    fn a_pods_policy_direction_by_direction() {
        let open = DirectionPolicies {
            isolated: false,
            default_deny: None,
            rules: vec![],
        };
        let answer = PodPolicies {
            node: "node-2".into(),
            pod: pod("pod-2-1"),
            ip: Ipv4Addr::new(10, 244, 2, 2),
            local: true,
            ingress: DirectionPolicies {
                isolated: true,
                default_deny: Some(RuleRef {
                    id: 3,
                    policy: pref("web-deny-all", "", RuleAction::Drop),
                }),
                rules: vec![
                    AllowingRule {
                        id: 5,
                        policy: pref("web-from-11", "ingress[0]", RuleAction::Allow),
                        peers: vec!["10.244.1.2/32".parse().expect("cidr")],
                        ports: vec![
                            PortRange {
                                protocol: Protocol::TCP,
                                from: 80,
                                to: 80,
                            },
                            PortRange {
                                protocol: Protocol::UDP,
                                from: 5000,
                                to: 5010,
                            },
                        ],
                    },
                    AllowingRule {
                        id: 7,
                        policy: pref("monitoring", "ingress[1]", RuleAction::Allow),
                        peers: vec!["0.0.0.0/0".parse().expect("cidr")],
                        ports: vec![],
                    },
                ],
            },
            egress: open,
        };
        assert_eq!(
            for_pod(&answer),
            "Pod default/pod-2-1 (10.244.2.2) on node-2\n\
             Ingress: isolated, default deny of default/web-deny-all (rule 3)\n  \
             allow default/web-from-11 ingress[0] (rule 5)  from 10.244.1.2/32  on TCP/80, UDP/5000-5010\n  \
             allow default/monitoring ingress[1] (rule 7)   anywhere            any port\n\
             Egress: not isolated: everything is allowed"
        );
        let elsewhere = PodPolicies {
            local: false,
            node: "node-1".into(),
            ..answer
        };
        assert!(for_pod(&elsewhere).starts_with(
            "Pod default/pod-2-1 (10.244.2.2) as node-1 sees it (another node enforces it)"
        ));
    }

    fn explanation() -> Explanation {
        Explanation {
            source: ExplainedEnd {
                ip: Ipv4Addr::new(10, 244, 1, 3),
                pod: Some(pod("pod-1-2")),
            },
            destination: ExplainedEnd {
                ip: Ipv4Addr::new(10, 244, 2, 2),
                pod: Some(pod("pod-2-1")),
            },
            protocol: Protocol::TCP,
            port: 80,
            allowed: false,
            egress: DirectionExplanation {
                engine: EngineVerdict::NotIsolated,
                node: Some("node-1".into()),
                datapath: Some(DatapathVerdict {
                    rule: 0,
                    policy: None,
                    denied: false,
                    agrees: true,
                }),
            },
            ingress: DirectionExplanation {
                engine: EngineVerdict::DefaultDeny {
                    rule: 3,
                    policy: pref("web-deny-all", "", RuleAction::Drop),
                },
                node: Some("node-2".into()),
                datapath: Some(DatapathVerdict {
                    rule: 3,
                    policy: Some(pref("web-deny-all", "", RuleAction::Drop)),
                    denied: true,
                    agrees: true,
                }),
            },
        }
    }

    #[test]
    fn an_explanation_is_a_line_a_direction() {
        assert_eq!(
            explain(&explanation()),
            "default/pod-1-2 (10.244.1.3) -> default/pod-2-1 (10.244.2.2) TCP/80: DENIED\n  \
             egress   ALLOWED  not isolated                                   node-1  datapath agrees: yes\n  \
             ingress  DENIED   default deny of default/web-deny-all (rule 3)  node-2  datapath agrees: yes"
        );
    }

    #[test]
    fn what_the_datapath_says_when_it_does_not_agree_or_was_not_asked() {
        let mut e = explanation();
        e.ingress.datapath = Some(DatapathVerdict {
            rule: 5,
            policy: Some(pref("web-from-11", "ingress[0]", RuleAction::Allow)),
            denied: false,
            agrees: false,
        });
        e.egress.node = None;
        e.egress.datapath = None;
        let text = explain(&e);
        assert!(
            text.contains(
                "datapath agrees: no (it decides with default/web-from-11 ingress[0] (rule 5) and passes the flow)"
            ),
            "{text}"
        );
        assert!(
            text.contains("egress   ALLOWED  not isolated                                   -       datapath: not checked (another node enforces it)"),
            "{text}"
        );
        e.source.pod = None;
        e.protocol = Protocol::ICMP;
        let text = explain(&e);
        assert!(
            text.starts_with("10.244.1.3 -> default/pod-2-1 (10.244.2.2) ICMP: DENIED"),
            "{text}"
        );
        assert!(
            text.contains("datapath: nothing to enforce (not a pod)"),
            "{text}"
        );
    }
}
