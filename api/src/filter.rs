//! Flow filters, Hubble-style: the query of `GET /v1/flows` and the flags of
//! `lumen observe`. Different fields must all match (AND); a field with several
//! comma-separated values matches if any does (OR), except labels, whose
//! comma-separated `key=value` terms are a Kubernetes selector (AND).

use serde::{Deserialize, Serialize};

use crate::flow::{Flow, FlowEndpoint, FlowEvent, Protocol, Verdict};

/// The filter as it travels in a query string: every field optional text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowQuery {
    /// Source pod: `ns/name`, `name` (namespace `default`) or `ns/` (any pod in ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_pod: Option<String>,
    /// Either side in one of these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Source labels: `key=value` or `key` (present), comma-separated (AND).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_label: Option<String>,
    /// `TCP`, `UDP`, `ICMP`, `SCTP` or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Either side's transport port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// `FORWARDED` or `DROPPED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// The observing node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Only the newest N matching records from the recent buffer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<usize>,
    /// Only records whose last packet is at or after this time (ns since epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ns: Option<u64>,
    /// Keep the stream open and send new records as they come.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
}

impl FlowQuery {
    /// The query string of `GET /v1/flows` (`from_pod=default%2Fweb&follow=true`),
    /// with the serde field names; empty when nothing is set.
    pub fn to_query_string(&self) -> String {
        let last = self.last.map(|n| n.to_string());
        let since_ns = self.since_ns.map(|n| n.to_string());
        let fields = [
            ("from_pod", self.from_pod.as_deref()),
            ("to_pod", self.to_pod.as_deref()),
            ("namespace", self.namespace.as_deref()),
            ("from_label", self.from_label.as_deref()),
            ("to_label", self.to_label.as_deref()),
            ("protocol", self.protocol.as_deref()),
            ("port", self.port.as_deref()),
            ("verdict", self.verdict.as_deref()),
            ("node", self.node.as_deref()),
            ("last", last.as_deref()),
            ("since_ns", since_ns.as_deref()),
            ("follow", self.follow.then_some("true")),
        ];
        let pairs: Vec<String> = fields
            .iter()
            .filter_map(|&(name, value)| Some(format!("{name}={}", percent_encode(value?))))
            .collect();
        pairs.join("&")
    }
}

/// `application/x-www-form-urlencoded` value encoding: unreserved characters as
/// they are, every other byte of the UTF-8 as `%XX`.
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Why a filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("{field}: {value:?} is not a valid {what}")]
    Invalid {
        field: &'static str,
        value: String,
        what: &'static str,
    },
}

/// A pod pattern: a namespace and, unless it is `ns/`, a pod name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodPattern {
    namespace: String,
    name: Option<String>,
}

impl PodPattern {
    fn parse(s: &str) -> Result<Self, FilterError> {
        let bad = || FilterError::Invalid {
            field: "pod",
            value: s.to_owned(),
            what: "pod (ns/name, name or ns/)",
        };
        let (namespace, name) = match s.split_once('/') {
            Some((ns, "")) => (ns, None),
            Some((ns, name)) => (ns, Some(name)),
            None => ("default", Some(s)),
        };
        if namespace.is_empty() || name.is_some_and(|n| n.contains('/')) {
            return Err(bad());
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.map(str::to_owned),
        })
    }

    fn matches(&self, ep: &FlowEndpoint) -> bool {
        ep.namespace.as_deref() == Some(self.namespace.as_str())
            && match &self.name {
                Some(name) => ep.pod.as_deref() == Some(name.as_str()),
                None => ep.pod.is_some(),
            }
    }
}

/// A label selector term: `key=value`, `key!=value` or `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelTerm {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
}

impl LabelTerm {
    fn parse(s: &str) -> Result<Self, FilterError> {
        let term = if let Some((k, v)) = s.split_once("!=") {
            Self::NotEquals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = s.split_once('=') {
            Self::Equals(k.trim().to_owned(), v.trim().to_owned())
        } else {
            Self::Exists(s.trim().to_owned())
        };
        let key = match &term {
            Self::Equals(k, _) | Self::NotEquals(k, _) | Self::Exists(k) => k,
        };
        if key.is_empty() {
            return Err(FilterError::Invalid {
                field: "label",
                value: s.to_owned(),
                what: "label selector (key=value, key!=value or key)",
            });
        }
        Ok(term)
    }

    fn matches(&self, ep: &FlowEndpoint) -> bool {
        match self {
            Self::Equals(k, v) => ep.labels.get(k) == Some(v),
            Self::NotEquals(k, v) => ep.labels.get(k) != Some(v),
            Self::Exists(k) => ep.labels.contains_key(k),
        }
    }
}

/// A validated filter, ready to test records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    from_pod: Vec<PodPattern>,
    to_pod: Vec<PodPattern>,
    namespace: Vec<String>,
    from_label: Vec<LabelTerm>,
    to_label: Vec<LabelTerm>,
    protocol: Vec<Protocol>,
    port: Vec<u16>,
    verdict: Vec<VerdictMatch>,
    node: Vec<String>,
    since_ns: Option<u64>,
}

fn list(s: &Option<String>) -> impl Iterator<Item = &str> {
    s.as_deref()
        .into_iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn parse_list<T>(
    s: &Option<String>,
    parse: impl Fn(&str) -> Result<T, FilterError>,
) -> Result<Vec<T>, FilterError> {
    list(s).map(parse).collect()
}

impl TryFrom<&FlowQuery> for FlowFilter {
    type Error = FilterError;

    fn try_from(q: &FlowQuery) -> Result<Self, FilterError> {
        let invalid = |field: &'static str, what: &'static str| {
            move |v: &str| FilterError::Invalid {
                field,
                value: v.to_owned(),
                what,
            }
        };
        Ok(Self {
            from_pod: parse_list(&q.from_pod, PodPattern::parse)?,
            to_pod: parse_list(&q.to_pod, PodPattern::parse)?,
            namespace: list(&q.namespace).map(str::to_owned).collect(),
            from_label: parse_list(&q.from_label, LabelTerm::parse)?,
            to_label: parse_list(&q.to_label, LabelTerm::parse)?,
            protocol: parse_list(&q.protocol, |s| {
                Protocol::parse(s).ok_or_else(|| invalid("protocol", "protocol")(s))
            })?,
            port: parse_list(&q.port, |s| {
                s.parse().map_err(|_| invalid("port", "port number")(s))
            })?,
            verdict: parse_list(&q.verdict, |s| {
                VerdictMatch::parse(s)
                    .ok_or_else(|| invalid("verdict", "verdict (FORWARDED|DROPPED|TRACED)")(s))
            })?,
            node: list(&q.node).map(str::to_owned).collect(),
            since_ns: q.since_ns,
        })
    }
}

/// A `verdict` term: the flow's verdict, or `TRACED` for a flow that carried
/// a traced packet (Hubble's verdict for trace observations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VerdictMatch {
    Is(Verdict),
    Traced,
}

impl VerdictMatch {
    fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("TRACED") {
            return Some(Self::Traced);
        }
        Verdict::parse(s).map(Self::Is)
    }

    fn matches(self, flow: &Flow) -> bool {
        match self {
            Self::Is(v) => v == flow.verdict,
            Self::Traced => flow.traced,
        }
    }
}

/// True when `items` is empty (no constraint) or any item satisfies `f`.
fn any_or_empty<T>(items: &[T], f: impl Fn(&T) -> bool) -> bool {
    items.is_empty() || items.iter().any(f)
}

impl FlowFilter {
    /// Whether a flow passes every constraint.
    pub fn matches_flow(&self, flow: &Flow) -> bool {
        let (src, dst) = (&flow.source, &flow.destination);
        any_or_empty(&self.from_pod, |p| p.matches(src))
            && any_or_empty(&self.to_pod, |p| p.matches(dst))
            && any_or_empty(&self.namespace, |ns| {
                [src, dst]
                    .iter()
                    .any(|e| e.namespace.as_deref() == Some(ns.as_str()))
            })
            && self.from_label.iter().all(|t| t.matches(src))
            && self.to_label.iter().all(|t| t.matches(dst))
            && any_or_empty(&self.protocol, |p| *p == flow.protocol)
            && any_or_empty(&self.port, |p| src.port == *p || dst.port == *p)
            && any_or_empty(&self.verdict, |v| v.matches(flow))
            && any_or_empty(&self.node, |n| *n == flow.node)
            && self.since_ns.is_none_or(|t| flow.end_ns >= t)
    }

    /// Whether an event passes: flows by [`Self::matches_flow`]; loss reports pass
    /// unless the filter names nodes and the report is from another one.
    pub fn matches(&self, event: &FlowEvent) -> bool {
        match event {
            FlowEvent::Flow(f) => self.matches_flow(f),
            FlowEvent::LostEvents(l) => any_or_empty(&self.node, |n| *n == l.node),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::Identity;
    use crate::flow::{FlowType, TcpFlags};

    fn ep(ns: &str, pod: &str, port: u16, app: &str) -> FlowEndpoint {
        FlowEndpoint {
            ip: Ipv4Addr::new(10, 244, 1, 2),
            port,
            identity: Identity(300),
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            node: Some("node-1".into()),
            labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        }
    }

    fn flow() -> Flow {
        Flow {
            start_ns: 1_000,
            end_ns: 2_000,
            tcp_flags: TcpFlags(TcpFlags::SYN),
            flow_type: FlowType::IntraNode,
            correlation_id: "0".into(),
            community_id: "1:x".into(),
            ..Flow::between(
                "node-1",
                Protocol::TCP,
                ep("default", "client", 40000, "client"),
                ep("shop", "web", 80, "web"),
            )
        }
    }

    fn q(f: impl FnOnce(&mut FlowQuery)) -> FlowQuery {
        let mut q = FlowQuery::default();
        f(&mut q);
        q
    }

    /// One line per case: a query and whether the flow above passes it.
    #[test]
    fn scenarios() {
        let s = |v: &str| Some(v.to_owned());
        let cases: Vec<(FlowQuery, bool)> = vec![
            (FlowQuery::default(), true),
            (q(|q| q.from_pod = s("client")), true),
            (q(|q| q.from_pod = s("default/client")), true),
            (q(|q| q.from_pod = s("default/")), true),
            (q(|q| q.from_pod = s("shop/web")), false),
            (q(|q| q.to_pod = s("shop/web")), true),
            (q(|q| q.to_pod = s("x/y,shop/web")), true),
            (q(|q| q.namespace = s("shop")), true),
            (q(|q| q.namespace = s("kube-system")), false),
            (q(|q| q.from_label = s("app=client")), true),
            (q(|q| q.from_label = s("app=web")), false),
            (q(|q| q.to_label = s("app")), true),
            (q(|q| q.to_label = s("app!=web")), false),
            (q(|q| q.to_label = s("app=web,tier")), false),
            (q(|q| q.protocol = s("tcp")), true),
            (q(|q| q.protocol = s("UDP,ICMP")), false),
            (q(|q| q.port = s("80")), true),
            (q(|q| q.port = s("443")), false),
            (q(|q| q.verdict = s("FORWARDED")), true),
            (q(|q| q.verdict = s("dropped")), false),
            (q(|q| q.verdict = s("traced")), false),
            (q(|q| q.verdict = s("DROPPED,TRACED")), false),
            (q(|q| q.node = s("node-2,node-1")), true),
            (q(|q| q.node = s("node-2")), false),
            (q(|q| q.since_ns = Some(2_000)), true),
            (q(|q| q.since_ns = Some(2_001)), false),
            (
                q(|q| {
                    q.from_pod = s("client");
                    q.port = s("443");
                }),
                false,
            ),
        ];
        let f = flow();
        for (query, want) in cases {
            let filter = FlowFilter::try_from(&query).expect("valid");
            assert_eq!(filter.matches_flow(&f), want, "{query:?}");
        }
    }

    /// The query string decodes, with the decoder axum's `Query` uses, to the
    /// query it was made from.
    #[test]
    fn query_string_round_trips() {
        let s = |v: &str| Some(v.to_owned());
        let full = FlowQuery {
            from_pod: s("default/pod-1-1,shop/"),
            to_pod: s("web"),
            namespace: s("kube-system"),
            from_label: s("app=web,tier!=db"),
            to_label: s("k8s.io/name=x y&z"),
            protocol: s("TCP,UDP"),
            port: s("80"),
            verdict: s("DROPPED"),
            node: s("node-1"),
            last: Some(20),
            since_ns: Some(1_700_000_000_000_000_000),
            follow: true,
        };
        for query in [full.clone(), FlowQuery::default(), q(|q| q.follow = true)] {
            let text = query.to_query_string();
            let back: FlowQuery = serde_urlencoded::from_str(&text).expect(&text);
            assert_eq!(back, query, "{text}");
        }
        assert_eq!(FlowQuery::default().to_query_string(), "");
        assert_eq!(
            q(|q| {
                q.from_pod = s("default/pod-1-1");
                q.last = Some(5);
            })
            .to_query_string(),
            "from_pod=default%2Fpod-1-1&last=5"
        );
        assert!(full.to_query_string().ends_with("&follow=true"));
    }

    #[test]
    fn bad_values_are_rejected_with_the_field() {
        let s = |v: &str| Some(v.to_owned());
        for (query, field) in [
            (q(|q| q.port = s("http")), "port"),
            (q(|q| q.port = s("70000")), "port"),
            (q(|q| q.protocol = s("tcpx")), "protocol"),
            (q(|q| q.verdict = s("maybe")), "verdict"),
            (q(|q| q.from_pod = s("/x")), "pod"),
            (q(|q| q.to_label = s("=v")), "label"),
        ] {
            let err = FlowFilter::try_from(&query).expect_err("invalid");
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }
}
