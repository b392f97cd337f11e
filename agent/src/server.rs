//! The node API over a unix socket (axum): the CNI operations, endpoints, IPAM,
//! datapath counters and health. Paths come from `lumen_api::paths`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lumen_api::cni::{AgentError, CniRequest, GcRequest, code};
use lumen_api::paths;
use serde_json::json;

use crate::node::Node;
use crate::pods::PodError;

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
pub fn app(node: Arc<Node>) -> Router {
    Router::new()
        .route(paths::HEALTHZ, get(healthz))
        .route(paths::CNI_ADD, post(add))
        .route(paths::CNI_DEL, post(del))
        .route(paths::CNI_CHECK, post(check))
        .route(paths::CNI_GC, post(gc))
        .route(paths::ENDPOINTS, get(endpoints))
        .route(paths::IPAM, get(ipam))
        .route(paths::COUNTERS, get(counters))
        .with_state(node)
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

async fn add(
    State(node): State<Arc<Node>>,
    Json(req): Json<CniRequest>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.add(&req).await?))
}

async fn del(
    State(node): State<Arc<Node>>,
    Json(req): Json<CniRequest>,
) -> Result<impl IntoResponse, ApiError> {
    node.del(&req).await?;
    Ok(Json(json!({})))
}

async fn check(
    State(node): State<Arc<Node>>,
    Json(req): Json<CniRequest>,
) -> Result<impl IntoResponse, ApiError> {
    node.check(&req).await?;
    Ok(Json(json!({})))
}

async fn gc(
    State(node): State<Arc<Node>>,
    Json(req): Json<GcRequest>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.gc(&req.valid).await?))
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
