//! The node agent's HTTP API paths, in one place so server and clients agree.

/// Liveness and readiness; also what the CNI `STATUS` command asks.
pub const HEALTHZ: &str = "/healthz";
/// `POST` a [`crate::cni::CniRequest`]: create the pod's interface and address.
pub const CNI_ADD: &str = "/v1/cni/add";
/// `POST` a [`crate::cni::CniRequest`]: remove it (idempotent).
pub const CNI_DEL: &str = "/v1/cni/del";
/// `POST` a [`crate::cni::CniRequest`]: verify it is still as ADD left it.
pub const CNI_CHECK: &str = "/v1/cni/check";
/// `POST` a [`crate::cni::GcRequest`]: release everything not listed.
pub const CNI_GC: &str = "/v1/cni/gc";
/// `GET` the local endpoints ([`crate::Endpoint`]) as the datapath sees them.
pub const ENDPOINTS: &str = "/v1/endpoints";
/// `GET` the IPAM state ([`crate::cni::IpamState`]).
pub const IPAM: &str = "/v1/ipam";
/// `GET` the datapath's per-CPU packet counters, summed, by name.
pub const COUNTERS: &str = "/v1/datapath/counters";
/// `GET` flow records as NDJSON ([`crate::FlowEvent`] a line), filtered by a
/// [`crate::FlowQuery`] in the query string.
pub const FLOWS: &str = "/v1/flows";
/// `GET` the flow pipeline's state ([`crate::flow::FlowStats`]).
pub const FLOW_STATS: &str = "/v1/flows/stats";
/// `GET` every NetworkPolicy in force and every refused one
/// ([`crate::policy::PolicyList`]).
pub const POLICIES: &str = "/v1/policies";
/// `GET` what applies to one pod ([`crate::policy::PodPolicies`]), asked with a
/// [`crate::policy::ForQuery`].
pub const POLICIES_FOR: &str = "/v1/policies/for";
/// `GET` the verdict for one packet ([`crate::policy::Explanation`]), asked
/// with a [`crate::policy::ExplainQuery`].
pub const POLICIES_EXPLAIN: &str = "/v1/policies/explain";
/// `GET` the agent's metrics in the Prometheus text format.
pub const METRICS: &str = "/metrics";
/// `POST` a [`crate::trace::TraceRequest`] to the source pod's node: the trace
/// starts ([`crate::trace::SourceTrace`]).
pub const TRACES: &str = "/v1/traces";
/// `POST` a [`crate::trace::HopsQuery`] to any node: its hops of one packet
/// ([`crate::trace::NodeHops`]), long-polled.
pub const TRACE_HOPS: &str = "/v1/traces/hops";

/// `GET` one trace from its source node ([`crate::trace::SourceTrace`]),
/// waiting as `wait` says.
pub fn trace_wait(id: &str, wait: &crate::trace::TraceWait) -> String {
    format!(
        "{TRACES}/{id}?packets={}&waitMs={}",
        wait.packets, wait.wait_ms
    )
}

/// `POST` the orchestrator's [`crate::trace::TraceResult`] to the source node:
/// the trace ends there.
pub fn trace_finish(id: &str) -> String {
    format!("{TRACES}/{id}/finish")
}
