//! NetworkPolicy as the node API shows it: the policies in force and the
//! refused ones (`GET /v1/policies`), what applies to one pod per direction
//! (`GET /v1/policies/for`), and the verdict for one packet with the rule that
//! decides it, from the policy engine and from the datapath's maps
//! (`GET /v1/policies/explain`). The queries are validated here, by the agent
//! and by `lumen policy` alike.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::Ipv4Cidr;
use crate::filter::percent_encode;
use crate::flow::{PolicyRef, Protocol};

/// A rule's (or a policy's default deny's) id in the compiled policy of the
/// cluster; 0 names no rule. Ids are not reused while flows may carry them.
pub type RuleId = u32;

/// The namespace of a pod named without one.
const DEFAULT_NAMESPACE: &str = "default";

/// A direction a policy isolates, spelled as in `spec.policyTypes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

impl fmt::Display for PolicyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "Ingress",
            Self::Egress => "Egress",
        })
    }
}

// === GET /v1/policies ===

/// Every policy the cluster holds: enforced, or refused with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyList {
    /// In force, by namespace and name.
    pub policies: Vec<PolicySummary>,
    /// Refused, by namespace and name.
    pub rejected: Vec<RejectedPolicy>,
}

/// A policy in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    pub namespace: String,
    pub name: String,
    pub policy_types: Vec<PolicyType>,
    /// Pods its `podSelector` selects now, with an address or not.
    pub selected_pods: usize,
    /// This is the previous accepted version: the current one was refused.
    pub previous_version: bool,
}

/// A policy refused as the API server would refuse it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedPolicy {
    pub namespace: String,
    pub name: String,
    /// The field and the reason (`spec.ingress[0].ports[0].port: …`).
    pub reason: String,
    /// An earlier version of the policy was accepted and stays in force.
    pub previous_in_force: bool,
}

// === GET /v1/policies/for ===

/// A pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    /// `ns/name`, or `name` in the namespace `default`.
    pub fn parse(s: &str) -> Option<Self> {
        let (namespace, name) = s.split_once('/').unwrap_or((DEFAULT_NAMESPACE, s));
        let valid = |part: &str| !part.is_empty() && !part.contains('/');
        (valid(namespace) && valid(name)).then(|| Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The query string of `GET /v1/policies/for`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForQuery {
    /// `ns/name` or `name` (namespace `default`).
    pub pod: Option<String>,
}

impl ForQuery {
    pub fn new(pod: &PodRef) -> Self {
        Self {
            pod: Some(pod.to_string()),
        }
    }

    /// The path with the query string (`/v1/policies/for?pod=default%2Fweb`).
    pub fn path(&self) -> String {
        with_query(crate::paths::POLICIES_FOR, &[("pod", self.pod.as_deref())])
    }

    /// The pod asked for.
    pub fn pod(&self) -> Result<PodRef, PolicyQueryError> {
        let pod = self
            .pod
            .as_deref()
            .ok_or(PolicyQueryError::Missing { what: "pod" })?;
        PodRef::parse(pod).ok_or_else(|| invalid("pod", pod, POD))
    }
}

/// What applies to one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPolicies {
    /// The node that answered.
    pub node: String,
    pub pod: PodRef,
    pub ip: Ipv4Addr,
    /// The pod is the answering node's, which enforces its policy.
    pub local: bool,
    pub ingress: DirectionPolicies,
    pub egress: DirectionPolicies,
}

/// One direction of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionPolicies {
    /// Some policy selects the pod for this direction: only what `rules`
    /// allow passes.
    pub isolated: bool,
    /// When isolated: the default deny, named after the first isolating
    /// policy (by namespace and name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_deny: Option<RuleRef>,
    /// The allowing rules, in the order they are tried (the first match
    /// decides). One rule may appear several times: an egress rule with named
    /// ports, once per group of destination pods that resolve them alike.
    pub rules: Vec<AllowingRule>,
}

/// A rule id and what it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// The rule's id in the compiled policy.
    pub id: RuleId,
    pub policy: PolicyRef,
}

/// One allowing rule as compiled for the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowingRule {
    pub id: RuleId,
    pub policy: PolicyRef,
    /// The peer's addresses (the source for ingress, the destination for
    /// egress), as disjoint CIDRs: selected pods as /32s, `ipBlock`s with
    /// their `except`s cut out.
    pub peers: Vec<Ipv4Cidr>,
    /// Empty: every protocol and port. Named ports are resolved.
    pub ports: Vec<PortRange>,
}

/// `from..=to` of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub protocol: Protocol,
    pub from: u16,
    pub to: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.from, self.to) {
            (0, u16::MAX) => write!(f, "{}", self.protocol),
            (from, to) if from == to => write!(f, "{}/{from}", self.protocol),
            (from, to) => write!(f, "{}/{from}-{to}", self.protocol),
        }
    }
}

// === GET /v1/policies/explain ===

/// The query string of `GET /v1/policies/explain`: one packet, from `from`
/// (an address) or `from_pod`, to `to` or `to_pod`. Values stay text so the
/// agent can say what is wrong with them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainQuery {
    pub from: Option<String>,
    /// `ns/name` or `name` (namespace `default`).
    pub from_pod: Option<String>,
    pub to: Option<String>,
    pub to_pod: Option<String>,
    /// TCP, UDP, SCTP, ICMP or a number; TCP when absent.
    pub protocol: Option<String>,
    /// Required for TCP, UDP and SCTP; ignored for protocols without ports.
    pub port: Option<String>,
}

impl ExplainQuery {
    /// The path with the query string.
    pub fn path(&self) -> String {
        with_query(
            crate::paths::POLICIES_EXPLAIN,
            &[
                ("from", self.from.as_deref()),
                ("from_pod", self.from_pod.as_deref()),
                ("to", self.to.as_deref()),
                ("to_pod", self.to_pod.as_deref()),
                ("protocol", self.protocol.as_deref()),
                ("port", self.port.as_deref()),
            ],
        )
    }
}

/// One end of the packet asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Address(Ipv4Addr),
    Pod(PodRef),
}

/// A validated [`ExplainQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainRequest {
    pub from: Peer,
    pub to: Peer,
    pub protocol: Protocol,
    /// 0 for protocols without ports.
    pub port: u16,
}

impl TryFrom<&ExplainQuery> for ExplainRequest {
    type Error = PolicyQueryError;

    fn try_from(q: &ExplainQuery) -> Result<Self, PolicyQueryError> {
        let from = peer(("from", &q.from), ("from_pod", &q.from_pod))?;
        let to = peer(("to", &q.to), ("to_pod", &q.to_pod))?;
        let protocol = match q.protocol.as_deref() {
            None => Protocol::TCP,
            Some(p) => Protocol::parse(p).ok_or_else(|| invalid("protocol", p, PROTOCOL))?,
        };
        let port = match (protocol.has_ports(), q.port.as_deref()) {
            (false, _) => 0,
            (true, None) => return Err(PolicyQueryError::Missing { what: "port" }),
            (true, Some(p)) => p
                .parse()
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| invalid("port", p, "port number (1-65535)"))?,
        };
        Ok(Self {
            from,
            to,
            protocol,
            port,
        })
    }
}

fn peer(
    address: (&'static str, &Option<String>),
    pod: (&'static str, &Option<String>),
) -> Result<Peer, PolicyQueryError> {
    match (address.1.as_deref(), pod.1.as_deref()) {
        (Some(_), Some(_)) => Err(PolicyQueryError::Conflict {
            a: address.0,
            b: pod.0,
        }),
        (None, None) => Err(PolicyQueryError::Missing { what: address.0 }),
        (Some(ip), None) => ip
            .parse()
            .map(Peer::Address)
            .map_err(|_| invalid(address.0, ip, "IPv4 address")),
        (None, Some(p)) => PodRef::parse(p)
            .map(Peer::Pod)
            .ok_or_else(|| invalid(pod.0, p, POD)),
    }
}

/// The verdict for one packet, direction by direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub source: ExplainedEnd,
    pub destination: ExplainedEnd,
    pub protocol: Protocol,
    /// 0 for protocols without ports.
    pub port: u16,
    /// The engine lets it through in both directions.
    pub allowed: bool,
    /// Decided at the source.
    pub egress: DirectionExplanation,
    /// Decided at the destination.
    pub ingress: DirectionExplanation,
}

/// One end of the packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainedEnd {
    pub ip: Ipv4Addr,
    /// The pod with this address, if one has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

/// One direction: the engine's verdict and, where the answering node enforces
/// it, the datapath's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionExplanation {
    pub engine: EngineVerdict,
    /// The node that enforces this direction, when it is the one that
    /// answered (the pod is its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What that node's datapath decides: present with `node`, except for a
    /// pod talking to itself (the packet never reaches the datapath).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathVerdict>,
}

/// What the policy engine decides for one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EngineVerdict {
    /// No policy selects the pod for this direction, or the address is not a
    /// pod's: everything passes.
    NotIsolated,
    /// A pod talking to its own address: never isolated.
    Loopback,
    /// The first allowing rule.
    Allowed { rule: RuleId, policy: PolicyRef },
    /// Isolated and no rule allows it: the default deny of the first
    /// isolating policy.
    DefaultDeny { rule: RuleId, policy: PolicyRef },
}

impl EngineVerdict {
    pub fn allowed(&self) -> bool {
        !matches!(self, Self::DefaultDeny { .. })
    }

    /// The deciding rule id; 0 where no rule decides.
    pub fn rule(&self) -> RuleId {
        match self {
            Self::Allowed { rule, .. } | Self::DefaultDeny { rule, .. } => *rule,
            Self::NotIsolated | Self::Loopback => 0,
        }
    }

    pub fn policy(&self) -> Option<&PolicyRef> {
        match self {
            Self::Allowed { policy, .. } | Self::DefaultDeny { policy, .. } => Some(policy),
            Self::NotIsolated | Self::Loopback => None,
        }
    }
}

/// What the datapath's maps decide for one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathVerdict {
    /// The deciding rule id; 0 when the pod is not isolated there.
    pub rule: RuleId,
    /// What the engine calls that id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    /// This node's datapath drops the flow (for this direction or the other
    /// one, if it enforces both).
    pub denied: bool,
    /// The datapath decides with the engine's rule, and drops the flow if
    /// that rule is a default deny.
    pub agrees: bool,
}

// === errors and helpers ===

const POD: &str = "pod (ns/name or name)";
const PROTOCOL: &str = "protocol (TCP, UDP, SCTP, ICMP or a number)";

/// Why a policy query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyQueryError {
    #[error("{field}: {value:?} is not a valid {what}")]
    Invalid {
        field: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("{what} is missing")]
    Missing { what: &'static str },
    #[error("{a} and {b} are exclusive")]
    Conflict { a: &'static str, b: &'static str },
}

fn invalid(field: &'static str, value: &str, what: &'static str) -> PolicyQueryError {
    PolicyQueryError::Invalid {
        field,
        value: value.to_owned(),
        what,
    }
}

fn with_query(path: &str, fields: &[(&str, Option<&str>)]) -> String {
    let pairs: Vec<String> = fields
        .iter()
        .filter_map(|&(name, value)| Some(format!("{name}={}", percent_encode(value?))))
        .collect();
    if pairs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", pairs.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    fn pod(namespace: &str, name: &str) -> PodRef {
        PodRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn explain_queries_round_trip_and_validate() {
        let q = ExplainQuery {
            from_pod: s("shop/web-1"),
            to: s("10.244.2.3"),
            protocol: s("udp"),
            port: s("53"),
            ..ExplainQuery::default()
        };
        let path = q.path();
        assert_eq!(
            path,
            "/v1/policies/explain?from_pod=shop%2Fweb-1&to=10.244.2.3&protocol=udp&port=53"
        );
        let (_, query) = path.split_once('?').expect("query");
        let back: ExplainQuery = serde_urlencoded::from_str(query).expect("decodes");
        assert_eq!(back, q);
        assert_eq!(
            ExplainRequest::try_from(&q),
            Ok(ExplainRequest {
                from: Peer::Pod(pod("shop", "web-1")),
                to: Peer::Address(Ipv4Addr::new(10, 244, 2, 3)),
                protocol: Protocol::UDP,
                port: 53,
            })
        );
        // TCP by default; a bare name is in `default`; ICMP has no port.
        let q = ExplainQuery {
            from_pod: s("web"),
            to_pod: s("x/db"),
            port: s("5432"),
            ..ExplainQuery::default()
        };
        let r = ExplainRequest::try_from(&q).expect("valid");
        assert_eq!(
            (r.from, r.protocol, r.port),
            (Peer::Pod(pod("default", "web")), Protocol::TCP, 5432)
        );
        let icmp = ExplainQuery {
            from: s("10.0.0.1"),
            to: s("10.0.0.2"),
            protocol: s("ICMP"),
            port: s("whatever"),
            ..ExplainQuery::default()
        };
        assert_eq!(ExplainRequest::try_from(&icmp).map(|r| r.port), Ok(0));
    }

    #[test]
    fn bad_explain_queries_say_what_is_wrong() {
        let base = ExplainQuery {
            from: s("10.0.0.1"),
            to_pod: s("x/b"),
            port: s("80"),
            ..ExplainQuery::default()
        };
        for (change, message) in [
            (
                (|q: &mut ExplainQuery| q.from = s("10.0.0")) as fn(&mut ExplainQuery),
                "from: \"10.0.0\" is not a valid IPv4 address",
            ),
            (|q| q.from_pod = s("x/a"), "from and from_pod are exclusive"),
            (|q| q.to_pod = None, "to is missing"),
            (
                |q| q.to_pod = s("x/b/c"),
                "to_pod: \"x/b/c\" is not a valid pod (ns/name or name)",
            ),
            (|q| q.port = None, "port is missing"),
            (
                |q| q.port = s("70000"),
                "port: \"70000\" is not a valid port number (1-65535)",
            ),
            (
                |q| q.port = s("0"),
                "port: \"0\" is not a valid port number",
            ),
            (
                |q| q.protocol = s("tcpx"),
                "protocol: \"tcpx\" is not a valid protocol",
            ),
        ] {
            let mut q = base.clone();
            change(&mut q);
            let err = ExplainRequest::try_from(&q).expect_err(message);
            assert!(err.to_string().starts_with(message), "{err} vs {message}");
        }
        assert!(ExplainRequest::try_from(&base).is_ok());
    }

    #[test]
    fn for_queries() {
        let q = ForQuery::new(&pod("shop", "web"));
        assert_eq!(q.path(), "/v1/policies/for?pod=shop%2Fweb");
        assert_eq!(q.pod(), Ok(pod("shop", "web")));
        assert_eq!(
            ForQuery::default().pod(),
            Err(PolicyQueryError::Missing { what: "pod" })
        );
        assert!(
            ForQuery { pod: s("a/") }
                .pod()
                .is_err_and(|e| e.to_string().contains("not a valid pod"))
        );
    }

    #[test]
    fn verdicts_serialize_with_a_tag() {
        let v = EngineVerdict::DefaultDeny {
            rule: 3,
            policy: PolicyRef {
                namespace: "x".into(),
                name: "deny".into(),
                rule: String::new(),
                action: crate::flow::RuleAction::Drop,
            },
        };
        let json = serde_json::to_value(&v).expect("json");
        assert_eq!(json["verdict"], "DEFAULT_DENY");
        assert_eq!(json["rule"], 3);
        assert_eq!(json["policy"]["name"], "deny");
        assert_eq!(serde_json::from_value::<EngineVerdict>(json).ok(), Some(v));
        assert_eq!(
            serde_json::to_value(EngineVerdict::NotIsolated).expect("json"),
            serde_json::json!({"verdict": "NOT_ISOLATED"})
        );
        let ports = [
            PortRange {
                protocol: Protocol::TCP,
                from: 80,
                to: 80,
            },
            PortRange {
                protocol: Protocol::UDP,
                from: 53,
                to: 60,
            },
            PortRange {
                protocol: Protocol::SCTP,
                from: 0,
                to: u16::MAX,
            },
        ];
        let shown: Vec<String> = ports.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["TCP/80", "UDP/53-60", "SCTP"]);
    }
}
