//! The node API over a unix socket (axum): the CNI operations, endpoints, IPAM,
//! datapath counters, the flow stream, NetworkPolicy (list, per pod, explain)
//! and health. Paths come from `lumen_api::paths`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRef, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lumen_api::cni::{AgentError, CniRequest, GcRequest, code};
use lumen_api::flow::FlowEvent;
use lumen_api::policy::{ExplainQuery, ExplainRequest, ForQuery, PolicyQueryError};
use lumen_api::trace::{HopsQuery, NodeHops, SourceTrace, TraceRequest, TraceResult, TraceWait};
use lumen_api::{FlowFilter, FlowQuery, paths};
use serde_json::json;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

use crate::datapath::abi::{MAX_ENDPOINTS, MAX_REMOTE_CIDRS, counter};
use crate::flows::Flows;
use crate::metrics::{CollectorCounts, MapFill, Metrics, Snapshot, TraceSnapshot};
use crate::node::Node;
use crate::pods::PodError;
use crate::policy::report::{self, ReportError};
use crate::trace::{TraceError, Tracer};
use std::sync::atomic::Ordering;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    pub flows: Arc<Flows>,
    pub exporter: Option<Arc<lumen_exporter::IpfixExporter>>,
    pub metrics: Arc<Metrics>,
    pub tracer: Arc<Tracer>,
}

impl FromRef<AppState> for Arc<Node> {
    fn from_ref(state: &AppState) -> Self {
        state.node.clone()
    }
}

impl FromRef<AppState> for Arc<Flows> {
    fn from_ref(state: &AppState) -> Self {
        state.flows.clone()
    }
}

/// An error answer: the CNI code travels in the body.
#[derive(Debug)]
pub struct ApiError(AgentError);

impl From<PodError> for ApiError {
    fn from(e: PodError) -> Self {
        Self(e.to_agent_error())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.0.code {
            code::UNKNOWN_CONTAINER => StatusCode::NOT_FOUND,
            code::INVALID_ENV | code::INVALID_CONFIG => StatusCode::BAD_REQUEST,
            code::NO_ADDRESS => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(self.0)).into_response()
    }
}

/// The router, testable with `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(paths::HEALTHZ, get(healthz))
        .route(paths::CNI_ADD, post(add))
        .route(paths::CNI_DEL, post(del))
        .route(paths::CNI_CHECK, post(check))
        .route(paths::CNI_GC, post(gc))
        .route(paths::ENDPOINTS, get(endpoints))
        .route(paths::IPAM, get(ipam))
        .route(paths::COUNTERS, get(counters))
        .route(paths::FLOWS, get(flows))
        .route(paths::FLOW_STATS, get(flow_stats))
        .route(paths::METRICS, get(metrics))
        .route(paths::POLICIES, get(policies))
        .route(paths::POLICIES_FOR, get(policies_for))
        .route(paths::POLICIES_EXPLAIN, get(policies_explain))
        .route(paths::TRACES, post(trace_start))
        .route(paths::TRACE_HOPS, post(trace_hops))
        .route("/v1/traces/{id}", get(trace_get))
        .route("/v1/traces/{id}/finish", post(trace_finish))
        .with_state(state)
}

/// The metrics alone, for the agent's TCP listener.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route(paths::METRICS, get(metrics))
        .with_state(state)
}

fn poisoned() -> ApiError {
    ApiError::from(PodError::Poisoned)
}

async fn healthz(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "node": node.config.node_name,
        "node_ip": node.node_ip,
        "pod_mtu": node.pod_mtu,
    }))
}

/// Time a CNI operation and count its failure by code.
async fn timed<T>(
    metrics: &Metrics,
    operation: &'static str,
    work: impl std::future::Future<Output = Result<T, PodError>>,
) -> Result<T, ApiError> {
    let _timer = metrics.cni_timer(operation);
    work.await.map_err(|e| {
        let e = ApiError::from(e);
        metrics.cni_error(operation, e.0.code);
        e
    })
}

async fn add(
    State(state): State<AppState>,
    Json(req): Json<CniRequest>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        timed(&state.metrics, "add", state.node.add(&req)).await?,
    ))
}

async fn del(
    State(state): State<AppState>,
    Json(req): Json<CniRequest>,
) -> Result<impl IntoResponse, ApiError> {
    timed(&state.metrics, "del", state.node.del(&req)).await?;
    Ok(Json(json!({})))
}

async fn check(
    State(state): State<AppState>,
    Json(req): Json<CniRequest>,
) -> Result<impl IntoResponse, ApiError> {
    timed(&state.metrics, "check", state.node.check(&req)).await?;
    Ok(Json(json!({})))
}

async fn gc(
    State(state): State<AppState>,
    Json(req): Json<GcRequest>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        timed(&state.metrics, "gc", state.node.gc(&req.valid)).await?,
    ))
}

async fn endpoints(State(node): State<Arc<Node>>) -> Result<impl IntoResponse, ApiError> {
    let eps: Vec<_> = node
        .endpoints
        .lock()
        .map_err(|_| poisoned())?
        .values()
        .cloned()
        .collect();
    Ok(Json(eps))
}

async fn ipam(State(node): State<Arc<Node>>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.ipam.lock().map_err(|_| poisoned())?.state()))
}

async fn counters(State(node): State<Arc<Node>>) -> Result<impl IntoResponse, ApiError> {
    let counters: serde_json::Map<String, serde_json::Value> = node
        .datapath
        .lock()
        .map_err(|_| poisoned())?
        .counters()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    Ok(Json(counters))
}

/// A policy question the agent cannot answer: `{"error": …}` with the status.
#[derive(Debug)]
pub struct QueryError {
    status: StatusCode,
    message: String,
}

impl From<QueryRejection> for QueryError {
    fn from(e: QueryRejection) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: e.body_text(),
        }
    }
}

impl From<PolicyQueryError> for QueryError {
    fn from(e: PolicyQueryError) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: e.to_string(),
        }
    }
}

impl From<ReportError> for QueryError {
    fn from(e: ReportError) -> Self {
        let status = match e {
            ReportError::UnknownPod { .. } => StatusCode::NOT_FOUND,
            ReportError::Datapath(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        Self { status, message }
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// `GET /v1/policies`: every policy in force and every refused one.
async fn policies(State(node): State<Arc<Node>>) -> Json<lumen_api::policy::PolicyList> {
    Json(node.policy.with_compiled(report::list))
}

/// `GET /v1/policies/for?pod=ns/name`: what applies to one pod.
async fn policies_for(
    State(node): State<Arc<Node>>,
    query: Result<Query<ForQuery>, QueryRejection>,
) -> Result<impl IntoResponse, QueryError> {
    let pod = query?.pod()?;
    let cidr = node.pod_cidr();
    let local = |ip| cidr.is_some_and(|c| c.contains(ip));
    let answer = node
        .policy
        .with_compiled(|c| report::for_pod(c, &node.config.node_name, local, &pod))?;
    Ok(Json(answer))
}

/// `GET /v1/policies/explain?from=…&to_pod=…&protocol=TCP&port=80`: the verdict
/// for one packet, with this node's datapath beside the engine where it
/// enforces a direction.
async fn policies_explain(
    State(node): State<Arc<Node>>,
    query: Result<Query<ExplainQuery>, QueryRejection>,
) -> Result<impl IntoResponse, QueryError> {
    let request = ExplainRequest::try_from(&query?.0)?;
    let cidr = node.pod_cidr();
    let local = |ip| cidr.is_some_and(|c| c.contains(ip));
    // The datapath is read while the policy cannot change: its maps are this
    // policy's (the enforcer takes the same two locks in the same order).
    let answer = node.policy.with_compiled(|c| {
        report::explain(
            c,
            &node.config.node_name,
            local,
            &request,
            |from, to, proto, port| {
                let dp = node
                    .datapath
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                dp.decide(from, to, proto, port)
            },
        )
    })?;
    Ok(Json(answer))
}

fn ndjson(event: &FlowEvent) -> Result<Bytes, Infallible> {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    Ok(Bytes::from(line))
}

/// `GET /v1/flows`: the recent events that match, then (with `follow`) new ones
/// as they come; a follower that falls behind gets a lost-events line.
async fn flows(State(flows): State<Arc<Flows>>, Query(query): Query<FlowQuery>) -> Response {
    let filter = match FlowFilter::try_from(&query) {
        Ok(f) => f,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": e.to_string() })),
            )
                .into_response();
        }
    };
    let (snapshot, upto, rx) = flows.hub.open(&filter, query.last);
    let recent = futures::stream::iter(snapshot.into_iter().map(|e| ndjson(&e)));
    let body = if query.follow {
        let live = futures::stream::unfold(
            (rx, filter, flows),
            move |(mut rx, filter, flows)| async move {
                loop {
                    match rx.recv().await {
                        Ok((seq, e)) if seq > upto && filter.matches(&e) => {
                            return Some((ndjson(&e), (rx, filter, flows)));
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(n)) => {
                            flows.reader_lagged(n);
                            let lost = flows.hub.lagged(n);
                            return Some((ndjson(&lost), (rx, filter, flows)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        );
        Body::from_stream(futures::StreamExt::chain(recent, live))
    } else {
        Body::from_stream(recent)
    };
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn flow_stats(State(state): State<AppState>) -> Json<lumen_api::flow::FlowStats> {
    let mut stats = state.flows.stats();
    stats.exporter = state
        .exporter
        .as_ref()
        .and_then(|e| serde_json::to_value(e.stats()).ok());
    Json(stats)
}

/// `GET /metrics`: every family, brought up to date from its sources.
async fn metrics(State(state): State<AppState>) -> Response {
    let snap = snapshot(&state);
    match state.metrics.render(&snap) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// What a scrape reads, from the agent's parts.
fn snapshot(state: &AppState) -> Snapshot {
    let flows = state.flows.stats();
    let (flows_created, remotes, max_flows, hops, hops_lost) = state
        .node
        .datapath
        .lock()
        .map(|dp| {
            (
                dp.counter(counter::FLOWS_CREATED),
                dp.remote_count() as u64,
                u64::from(dp.max_flows()),
                dp.counter(counter::TRACE_EVENTS),
                dp.counter(counter::TRACE_LOST),
            )
        })
        .unwrap_or_default();
    let c = &state.tracer.counts;
    let traces = TraceSnapshot {
        started: c.started.load(Ordering::Relaxed),
        delivered: c.delivered.load(Ordering::Relaxed),
        dropped: c.dropped.load(Ordering::Relaxed),
        left_cluster: c.left_cluster.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        hops,
        hops_lost,
    };
    let endpoints = state.node.endpoints.lock().map_or(0, |e| e.len() as u64);
    let maps = vec![
        MapFill {
            name: "flows",
            entries: flows.table_entries,
            capacity: max_flows,
        },
        MapFill {
            name: "endpoints",
            entries: endpoints,
            capacity: u64::from(MAX_ENDPOINTS),
        },
        MapFill {
            name: "remote_cidrs",
            entries: remotes,
            capacity: u64::from(MAX_REMOTE_CIDRS),
        },
    ];
    let collectors = state
        .exporter
        .as_ref()
        .map(|e| {
            e.stats()
                .collectors
                .into_iter()
                .map(|c| CollectorCounts {
                    collector: lumen_exporter::Collector {
                        addr: c.addr,
                        transport: c.transport,
                    }
                    .to_string(),
                    up: c.connected,
                    records_sent: c.records_sent,
                    messages_sent: c.messages_sent,
                    records_lost: c.records_lost,
                    reconnects: c.reconnects,
                    template_sends: c.templates_sent,
                })
                .collect()
        })
        .unwrap_or_default();
    let ipam = state.node.ipam.lock().map_or((0, 0), |i| i.usage());
    Snapshot {
        flows,
        flows_created,
        maps,
        collectors,
        ipam,
        traces,
    }
}

// === traces ===

impl IntoResponse for TraceError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Request(_) => StatusCode::BAD_REQUEST,
            Self::NotLocal { .. }
            | Self::UnknownPod(_)
            | Self::UnknownNode(_)
            | Self::UnknownTrace(_) => StatusCode::NOT_FOUND,
            Self::NoPodIp(_) | Self::LiveBusy { .. } => StatusCode::CONFLICT,
            Self::Map(_) | Self::Datapath(_) | Self::Inject(_) | Self::Poisoned => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut message = self.to_string();
        let mut source = std::error::Error::source(&self);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        (status, Json(json!({ "error": message }))).into_response()
    }
}

/// A JSON body that does not parse is a 400 with serde's reason.
fn bad_body(e: axum::extract::rejection::JsonRejection) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": format!("bad trace request: {}", e.body_text()) })),
    )
        .into_response()
}

async fn trace_start(
    State(state): State<AppState>,
    body: Result<Json<TraceRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    match state.tracer.start_trace(request).await {
        Ok(t) => (StatusCode::CREATED, Json(t)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn trace_get(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Query(wait): Query<TraceWait>,
) -> Result<Json<SourceTrace>, TraceError> {
    let wait_for = Duration::from_millis(wait.wait_ms.min(MAX_WAIT_MS));
    Ok(Json(
        state.tracer.wait_trace(&id, wait.packets, wait_for).await?,
    ))
}

async fn trace_finish(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: Result<Json<TraceResult>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(result) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    match state.tracer.finish(&id, result) {
        Ok(()) => Json(json!({ "finished": id })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Longest wait a long-poll may ask for.
const MAX_WAIT_MS: u64 = 30_000;

async fn trace_hops(
    State(state): State<AppState>,
    body: Result<Json<HopsQuery>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(query) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    let store = state.tracer.store();
    let wait = Duration::from_millis(query.wait_ms.min(MAX_WAIT_MS));
    let hops = store
        .wait_for(wait, |s| {
            let hops = s.hops(&query.packet);
            (hops.len() > query.after || hops.iter().any(lumen_api::trace::Hop::is_final))
                .then_some(hops)
        })
        .await
        .unwrap_or_default();
    Json(NodeHops {
        node: state.node.config.node_name.clone(),
        hops,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use lumen_api::policy::PodRef;

    use super::*;

    async fn answer(e: QueryError) -> (StatusCode, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("JSON body"))
    }

    #[tokio::test]
    async fn policy_questions_fail_with_a_status_and_a_json_error() {
        let bad = ExplainRequest::try_from(&ExplainQuery {
            from: Some("10.0.0".into()),
            to_pod: Some("x/b".into()),
            port: Some("80".into()),
            ..ExplainQuery::default()
        })
        .expect_err("bad address");
        let (status, body) = answer(bad.into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"],
            "from: \"10.0.0\" is not a valid IPv4 address"
        );

        let missing = ForQuery::default().pod().expect_err("no pod");
        assert_eq!(answer(missing.into()).await.0, StatusCode::BAD_REQUEST);

        let unknown = ReportError::UnknownPod {
            pod: PodRef {
                namespace: "x".into(),
                name: "zz".into(),
            },
        };
        let (status, body) = answer(unknown.into()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no pod x/zz with an address");

        let broken = ReportError::Datapath(crate::datapath::DatapathError::Lookup {
            name: "ep_policy",
            source: aya::maps::MapError::KeyNotFound,
        });
        let (status, body) = answer(broken.into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body["error"],
            "the datapath's policy maps could not be read: reading BPF map ep_policy failed: key not found"
        );
    }
}
