//! The plugin's side of the agent's CNI API: one blocking request per command.
//!
//! Only ADD answers a body we read; for the others any 2xx is success whatever
//! the body, so the agent is free to answer `204 No Content` or a report.

use lumen_api::client::{Client, ClientError};
use lumen_api::cni::{AgentError, Attachment, CniRequest, GcRequest};
use lumen_api::paths;
use serde::Serialize;

pub fn add(client: &Client, request: &CniRequest) -> Result<Attachment, ClientError> {
    client.post(paths::CNI_ADD, request)
}

pub fn check(client: &Client, request: &CniRequest) -> Result<(), ClientError> {
    post(client, paths::CNI_CHECK, request)
}

/// The agent answers success for an attachment it does not know, which makes
/// DEL idempotent.
pub fn del(client: &Client, request: &CniRequest) -> Result<(), ClientError> {
    post(client, paths::CNI_DEL, request)
}

pub fn gc(client: &Client, request: &GcRequest) -> Result<(), ClientError> {
    post(client, paths::CNI_GC, request)
}

pub fn status(client: &Client) -> Result<(), ClientError> {
    let (status, body) = client.request("GET", paths::HEALTHZ, None)?;
    succeeded(status, &body)
}

fn post(client: &Client, path: &str, body: &impl Serialize) -> Result<(), ClientError> {
    let body = serde_json::to_vec(body).map_err(ClientError::Decode)?;
    let (status, answer) = client.request("POST", path, Some(&body))?;
    succeeded(status, &answer)
}

/// A non-2xx answer is the agent's [`AgentError`] if it sent one.
fn succeeded(status: u16, body: &[u8]) -> Result<(), ClientError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    Err(match serde_json::from_slice::<AgentError>(body) {
        Ok(refusal) => ClientError::Agent(refusal),
        Err(_) => ClientError::Status {
            status,
            body: String::from_utf8_lossy(body).into_owned(),
        },
    })
}
