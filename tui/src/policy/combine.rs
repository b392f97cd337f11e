//! Several agents' answers made one. Every agent compiles the same cluster
//! state, so the policies and the engine's verdicts are the same everywhere;
//! what differs is which node enforces what: a pod's policy is its node's, and
//! only that node's datapath can say whether it agrees with the engine.

use std::collections::BTreeMap;

use lumen_api::policy::{Explanation, PodPolicies, PolicyList};

/// The answers of the agents that answered: at least one.
#[derive(Debug)]
pub struct Answers<T> {
    pub first: T,
    pub rest: Vec<T>,
}

impl<T> Answers<T> {
    fn into_vec(self) -> Vec<T> {
        let mut all = Vec::with_capacity(1 + self.rest.len());
        all.push(self.first);
        all.extend(self.rest);
        all
    }
}

/// Every policy any agent knows, once, by namespace and name (the first
/// agent's version of each, should an agent lag behind).
pub fn list(answers: Answers<PolicyList>) -> PolicyList {
    let mut policies = BTreeMap::new();
    let mut rejected = BTreeMap::new();
    for answer in answers.into_vec() {
        for p in answer.policies {
            policies
                .entry((p.namespace.clone(), p.name.clone()))
                .or_insert(p);
        }
        for r in answer.rejected {
            rejected
                .entry((r.namespace.clone(), r.name.clone()))
                .or_insert(r);
        }
    }
    PolicyList {
        policies: policies.into_values().collect(),
        rejected: rejected.into_values().collect(),
    }
}

/// The answer of the pod's own node, or any answer if that node did not give one.
pub fn for_pod(answers: Answers<PodPolicies>) -> PodPolicies {
    let Answers { first, rest } = answers;
    if first.local {
        return first;
    }
    rest.into_iter().find(|a| a.local).unwrap_or(first)
}

/// Egress as the source's node explains it, ingress as the destination's
/// does; where no answering node enforces a direction, any answer's engine
/// verdict.
pub fn explain(answers: Answers<Explanation>) -> Explanation {
    let Answers { first, rest } = answers;
    let ingress = std::iter::once(&first)
        .chain(&rest)
        .find(|e| e.ingress.node.is_some())
        .map(|e| e.ingress.clone());
    let mut combined = if first.egress.node.is_some() {
        first
    } else {
        rest.into_iter()
            .find(|e| e.egress.node.is_some())
            .unwrap_or(first)
    };
    if let Some(ingress) = ingress {
        combined.ingress = ingress;
    }
    combined
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lumen_api::flow::{PolicyRef, Protocol, RuleAction};
    use lumen_api::policy::{
        DatapathVerdict, DirectionExplanation, DirectionPolicies, EngineVerdict, ExplainedEnd,
        PodRef, PolicySummary, PolicyType, RejectedPolicy, RuleId,
    };

    use super::*;

    fn summary(name: &str, pods: usize) -> PolicySummary {
        PolicySummary {
            namespace: "x".into(),
            name: name.into(),
            policy_types: vec![PolicyType::Ingress],
            selected_pods: pods,
            previous_version: false,
        }
    }

    fn rejected(name: &str) -> RejectedPolicy {
        RejectedPolicy {
            namespace: "x".into(),
            name: name.into(),
            reason: "bad".into(),
            previous_in_force: false,
        }
    }

    #[test]
    fn lists_each_policy_once() {
        let merged = list(Answers {
            first: PolicyList {
                policies: vec![summary("b", 2), summary("c", 1)],
                rejected: vec![rejected("r")],
            },
            rest: vec![PolicyList {
                policies: vec![summary("a", 5), summary("b", 3)],
                rejected: vec![rejected("r"), rejected("s")],
            }],
        });
        let shown: Vec<_> = merged
            .policies
            .iter()
            .map(|p| (p.name.as_str(), p.selected_pods))
            .collect();
        assert_eq!(shown, [("a", 5), ("b", 2), ("c", 1)]);
        let names: Vec<_> = merged.rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["r", "s"]);
    }

    fn pod_answer(node: &str, local: bool) -> PodPolicies {
        let open = DirectionPolicies {
            isolated: false,
            default_deny: None,
            rules: vec![],
        };
        PodPolicies {
            node: node.into(),
            pod: PodRef {
                namespace: "x".into(),
                name: "a".into(),
            },
            ip: Ipv4Addr::new(10, 0, 2, 1),
            local,
            ingress: open.clone(),
            egress: open,
        }
    }

    #[test]
    fn a_pod_is_shown_by_its_node() {
        let pick = |nodes: &[(&str, bool)]| {
            let mut all = nodes.iter().map(|(n, l)| pod_answer(n, *l));
            let first = all.next().expect("one");
            for_pod(Answers {
                first,
                rest: all.collect(),
            })
            .node
        };
        assert_eq!(pick(&[("node-1", false), ("node-2", true)]), "node-2");
        assert_eq!(pick(&[("node-1", true), ("node-2", false)]), "node-1");
        assert_eq!(pick(&[("node-1", false), ("node-3", false)]), "node-1");
    }

    fn direction(node: Option<&str>, rule: RuleId) -> DirectionExplanation {
        let policy = PolicyRef {
            namespace: "x".into(),
            name: "p".into(),
            rule: String::new(),
            action: RuleAction::Drop,
        };
        DirectionExplanation {
            engine: EngineVerdict::DefaultDeny {
                rule,
                policy: policy.clone(),
            },
            node: node.map(str::to_owned),
            datapath: node.map(|_| DatapathVerdict {
                rule,
                policy: Some(policy),
                denied: true,
                agrees: true,
            }),
        }
    }

    fn explanation(egress: Option<&str>, ingress: Option<&str>) -> Explanation {
        let end = |n| ExplainedEnd {
            ip: Ipv4Addr::new(10, 0, n, 1),
            pod: None,
        };
        Explanation {
            source: end(1),
            destination: end(2),
            protocol: Protocol::TCP,
            port: 80,
            allowed: false,
            egress: direction(egress, 1),
            ingress: direction(ingress, 2),
        }
    }

    #[test]
    fn each_direction_comes_from_its_enforcing_node() {
        let combined = explain(Answers {
            first: explanation(None, Some("node-2")),
            rest: vec![explanation(Some("node-1"), None)],
        });
        assert_eq!(combined.egress.node.as_deref(), Some("node-1"));
        assert_eq!(combined.ingress.node.as_deref(), Some("node-2"));
        assert!(combined.egress.datapath.is_some() && combined.ingress.datapath.is_some());
        // Nobody enforces it (not pods, or their nodes did not answer): the
        // engine's verdict alone.
        let alone = explain(Answers {
            first: explanation(None, None),
            rest: vec![],
        });
        assert_eq!(alone.egress.node, None);
        assert_eq!(alone.ingress.datapath, None);
        assert_eq!(alone.ingress.engine.rule(), 2);
    }
}
