//! The cluster-wide side of a trace, blocking and std-only so the CLI, the web
//! UI and the agent's `Traceflow` controller share it: start the trace on the
//! source pod's node, learn the packet(s) it marked, long-poll every node for
//! its hops of that packet until one reports the path's end, and assemble the
//! hops in path order (nodes chained by their tunnel endpoints, not by clocks).

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::client::{Client, ClientError};
use crate::paths;
use crate::trace::{
    Hop, HopAction, HopsQuery, NodeHops, SourceTrace, TracePhase, TracePoint, TraceRequest,
    TraceRequestError, TraceResult, TraceVerdict, TraceWait, TracedPacket,
};

/// Longest single wait asked of an agent; a poll that returns empty is repeated.
const POLL: Duration = Duration::from_millis(1_000);
/// Extra time a request may take beyond the wait it asks for.
const SLACK: Duration = Duration::from_millis(2_000);

/// One node's agent, by its API socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAgent {
    pub node: String,
    pub socket: PathBuf,
}

/// Why a trace could not be run at all (a trace that ran but found no complete
/// path is a [`TraceResult`] in phase `Failed`).
#[derive(Debug, thiserror::Error)]
pub enum OrchestrateError {
    #[error(transparent)]
    Request(#[from] TraceRequestError),
    #[error("no agent is known for node {0}")]
    UnknownNode(String),
    #[error("the agent of node {node} refused the trace: {reason}")]
    Refused { node: String, reason: String },
    #[error("the agent of node {node} cannot be asked")]
    Agent {
        node: String,
        #[source]
        source: ClientError,
    },
}

/// Run `request` from the pod on `source_node` and wait for its result.
pub fn run(
    agents: &[NodeAgent],
    source_node: &str,
    request: &TraceRequest,
) -> Result<TraceResult, OrchestrateError> {
    request.validate()?;
    let source = agents
        .iter()
        .find(|a| a.node == source_node)
        .ok_or_else(|| OrchestrateError::UnknownNode(source_node.to_owned()))?;
    let started = Instant::now();
    let deadline = started + Duration::from_millis(request.timeout_ms);
    let client = Client::new(&source.socket, SLACK);
    let trace: SourceTrace = client
        .post(paths::TRACES, request)
        .map_err(|e| refused(&source.node, e))?;
    let mut result = trace.result;
    let outcome = follow_packets(agents, source, &result.id, trace.packets, request, deadline);
    match outcome {
        Ok((packet, hops)) => finish_path(&mut result, packet, hops),
        Err(failed) => {
            // What was seen still says where the packet got to.
            result.phase = TracePhase::Failed;
            result.reason = Some(failed.reason);
            result.packet = failed.packet.or(result.packet);
            result.hops = failed.hops;
        }
    }
    // The source ends the trace (disarms it, counts it); a failure here loses
    // nothing the caller needs, so it is reported inside the result.
    let finish = Client::new(&source.socket, SLACK);
    let path = paths::trace_finish(&result.id);
    if let Err(e) = finish.post::<_, serde_json::Value>(&path, &result) {
        result
            .reason
            .get_or_insert_with(|| format!("the source agent did not take the result: {e}"));
    }
    Ok(result)
}

/// Why no packet has a complete path, with what was seen of the last one.
#[derive(Debug)]
struct Incomplete {
    reason: String,
    packet: Option<TracedPacket>,
    hops: Vec<Hop>,
}

impl Incomplete {
    fn because(reason: String) -> Self {
        Self {
            reason,
            packet: None,
            hops: Vec::new(),
        }
    }
}

/// Follow each packet the source marks until one has a complete path (the
/// first one, or with `dropped_only` the first that was dropped). Returns the
/// packet and its hops, or why there is none.
fn follow_packets(
    agents: &[NodeAgent],
    source: &NodeAgent,
    id: &str,
    mut packets: Vec<TracedPacket>,
    request: &TraceRequest,
    deadline: Instant,
) -> Result<(TracedPacket, Vec<Hop>), Incomplete> {
    let mut next = 0;
    let mut incomplete = None;
    let mut errors: Vec<String> = Vec::new();
    let mut partial: Vec<Hop> = Vec::new();
    loop {
        while next < packets.len() {
            let packet = packets[next];
            next += 1;
            match follow(agents, packet, deadline) {
                Ok(hops) => {
                    let dropped = hops.iter().find(|h| h.is_final()).is_some_and(|h| {
                        matches!(h.action, HopAction::Dropped | HopAction::Rejected)
                    });
                    if !request.dropped_only || dropped {
                        return Ok((packet, hops));
                    }
                }
                Err((e, hops)) => {
                    incomplete = Some(packet);
                    errors = e;
                    partial = hops;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let seen = if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join("; "))
            };
            let reason = match incomplete {
                Some(p) => format!(
                    "the path of {p} did not end within {} ms{seen}",
                    request.timeout_ms
                ),
                None if packets.is_empty() => {
                    format!("no packet matched within {} ms", request.timeout_ms)
                }
                None => format!(
                    "no dropped packet within {} ms ({} allowed ones ignored)",
                    request.timeout_ms,
                    packets.len()
                ),
            };
            return Err(Incomplete {
                reason,
                packet: incomplete,
                hops: partial,
            });
        }
        let wait = TraceWait {
            packets: packets.len(),
            wait_ms: duration_ms(left.min(POLL)),
        };
        let client = Client::new(&source.socket, left.min(POLL) + SLACK);
        match client.get::<SourceTrace>(&paths::trace_wait(id, &wait)) {
            Ok(t) => {
                if t.result.phase == TracePhase::Failed {
                    return Err(Incomplete::because(
                        t.result
                            .reason
                            .unwrap_or_else(|| "the source failed".into()),
                    ));
                }
                packets = t.packets;
            }
            Err(e) => {
                return Err(Incomplete::because(format!(
                    "the source agent stopped answering: {e}"
                )));
            }
        }
    }
}

/// Every node's hops of `packet`, once one node has the path's end and the
/// chain before it is whole (a node may file its hops after the next node
/// filed its own); on the deadline, why not and the hops seen so far.
fn follow(
    agents: &[NodeAgent],
    packet: TracedPacket,
    deadline: Instant,
) -> Result<Vec<Hop>, (Vec<String>, Vec<Hop>)> {
    let (tx, rx) = mpsc::channel::<Result<NodeHops, String>>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for agent in agents {
        let (tx, stop, agent) = (tx.clone(), stop.clone(), agent.clone());
        std::thread::spawn(move || poll_node(&agent, packet, deadline, &stop, &tx));
    }
    drop(tx);
    let mut seen: Vec<NodeHops> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut ended_at: Option<Instant> = None;
    loop {
        // Once the end is known, wait a little for the rest of the chain.
        let update = match ended_at {
            None => rx.recv().map_err(|_| ()),
            Some(t) => {
                let left = (t + CHAIN_GRACE).saturating_duration_since(Instant::now());
                rx.recv_timeout(left).map_err(|_| ())
            }
        };
        let Ok(update) = update else { break };
        match update {
            Ok(u) => match seen.iter_mut().find(|s| s.node == u.node) {
                Some(s) => *s = u,
                None => seen.push(u),
            },
            Err(e) if !errors.contains(&e) => errors.push(e),
            Err(_) => {}
        }
        if ended_at.is_none() && seen.iter().flat_map(|n| &n.hops).any(Hop::is_final) {
            ended_at = Some(Instant::now());
        }
        if ended_at.is_some() && chain_complete(&seen) {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let hops = assemble(seen);
    if ended_at.is_none() {
        return Err((errors, hops));
    }
    Ok(hops)
}

/// How long to wait, after the path's end is seen, for the nodes before it.
const CHAIN_GRACE: Duration = Duration::from_millis(500);

/// Whether the hops seen hold the whole path: the source's first hop, for
/// every tunnelled hop the next node's reception, and for every reception the
/// sender's tunnelled hop (a node files its hops in batches, so its first hop
/// may come before the rest of its own).
fn chain_complete(nodes: &[NodeHops]) -> bool {
    let hops = || nodes.iter().flat_map(|n| &n.hops);
    let sent = || {
        hops()
            .filter(|h| h.action == HopAction::Tunnelled)
            .filter_map(|h| h.tunnel)
    };
    let received = || {
        hops()
            .filter(|h| h.point == TracePoint::FromOverlay)
            .filter_map(|h| h.tunnel)
    };
    hops().any(|h| h.point == TracePoint::FromPod)
        && sent().all(|t| received().any(|r| r.local == t.remote))
        && received().all(|r| sent().any(|t| t.remote == r.local))
}

/// Long-poll one node, sending every change, until the deadline or `stop`.
fn poll_node(
    agent: &NodeAgent,
    packet: TracedPacket,
    deadline: Instant,
    stop: &std::sync::atomic::AtomicBool,
    tx: &mpsc::Sender<Result<NodeHops, String>>,
) {
    let mut after = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let wait = left.min(POLL);
        let client = Client::new(&agent.socket, wait + SLACK);
        let query = HopsQuery {
            packet,
            after,
            wait_ms: duration_ms(wait),
        };
        let hops = match client.post::<_, NodeHops>(paths::TRACE_HOPS, &query) {
            Ok(h) => h,
            Err(e) => {
                // An unreachable node adds nothing; the others may still end
                // the path, and the failure says why if they do not.
                if tx.send(Err(format!("node {}: {e}", agent.node))).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20).min(left));
                continue;
            }
        };
        let ended = hops.hops.iter().any(|h| h.is_final());
        if hops.hops.len() > after {
            after = hops.hops.len();
            if tx.send(Ok(hops)).is_err() {
                return;
            }
        }
        if ended {
            return;
        }
    }
}

/// The hops of every node in path order: the node with the `FROM_POD` hop
/// first, then each node that received what the previous one tunnelled to it.
/// Latency is the time since the previous hop.
pub fn assemble(mut nodes: Vec<NodeHops>) -> Vec<Hop> {
    nodes.retain(|n| !n.hops.is_empty());
    let mut ordered: Vec<NodeHops> = Vec::with_capacity(nodes.len());
    let first = nodes
        .iter()
        .position(|n| n.hops.iter().any(|h| h.point == TracePoint::FromPod))
        .unwrap_or(0);
    if nodes.is_empty() {
        return Vec::new();
    }
    ordered.push(nodes.remove(first));
    while !nodes.is_empty() {
        let sent_to = ordered
            .last()
            .and_then(|n| {
                n.hops
                    .iter()
                    .rev()
                    .find_map(|h| h.tunnel.filter(|_| h.action == HopAction::Tunnelled))
            })
            .map(|t| t.remote);
        let next = sent_to.and_then(|remote| {
            nodes.iter().position(|n| {
                n.hops.iter().any(|h| {
                    h.point == TracePoint::FromOverlay
                        && h.tunnel.is_some_and(|t| t.local == remote)
                })
            })
        });
        // Nodes off the chain (clock order is the best left) follow it.
        let next = next.unwrap_or_else(|| {
            (0..nodes.len())
                .min_by_key(|&i| nodes[i].hops.first().map_or(u64::MAX, |h| h.timestamp_ns))
                .unwrap_or(0)
        });
        ordered.push(nodes.remove(next));
    }
    let mut hops: Vec<Hop> = ordered.into_iter().flat_map(|n| n.hops).collect();
    let mut previous = None;
    for hop in &mut hops {
        hop.latency_ns = previous.map_or(0, |p: u64| hop.timestamp_ns.saturating_sub(p));
        previous = Some(hop.timestamp_ns);
    }
    hops
}

/// Fill the result from a complete path.
fn finish_path(result: &mut TraceResult, packet: TracedPacket, hops: Vec<Hop>) {
    result.packet = Some(packet);
    let end = hops.iter().find(|h| h.is_final());
    result.verdict = end.map(|h| match h.action {
        HopAction::Dropped | HopAction::Rejected => TraceVerdict::Dropped,
        HopAction::Masqueraded => TraceVerdict::LeftCluster,
        _ if h.point == TracePoint::Masquerade => TraceVerdict::LeftCluster,
        _ => TraceVerdict::Delivered,
    });
    result.end_to_end_ns = match (hops.first(), end) {
        (Some(a), Some(b)) => b.timestamp_ns.saturating_sub(a.timestamp_ns),
        _ => 0,
    };
    result.hops = hops;
    result.phase = TracePhase::Succeeded;
}

fn refused(node: &str, e: ClientError) -> OrchestrateError {
    match e {
        ClientError::Status { body, .. } => OrchestrateError::Refused {
            node: node.to_owned(),
            reason: body,
        },
        ClientError::Agent(err) => OrchestrateError::Refused {
            node: node.to_owned(),
            reason: err.msg,
        },
        source => OrchestrateError::Agent {
            node: node.to_owned(),
            source,
        },
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::trace::TunnelInfo;

    fn hop(node: &str, point: TracePoint, action: HopAction, ts: u64) -> Hop {
        Hop::at(node, point, action, ts)
    }

    fn tunnel(local: [u8; 4], remote: [u8; 4]) -> Option<TunnelInfo> {
        Some(TunnelInfo {
            local: Ipv4Addr::from(local),
            remote: Ipv4Addr::from(remote),
            vni: 0x80_0101,
        })
    }

    #[test]
    fn a_chain_is_complete_once_every_tunnelled_hop_was_received() {
        let mut out = hop("n1", TracePoint::ToOverlay, HopAction::Tunnelled, 2);
        out.tunnel = tunnel([192, 0, 2, 11], [192, 0, 2, 12]);
        let mut into = hop("n2", TracePoint::FromOverlay, HopAction::Received, 3);
        into.tunnel = tunnel([192, 0, 2, 12], [192, 0, 2, 11]);
        let end = hop("n2", TracePoint::ToPod, HopAction::Delivered, 4);
        let node = |n: &str, hops: Vec<Hop>| NodeHops {
            node: n.into(),
            hops,
        };
        let from_pod = hop("n1", TracePoint::FromPod, HopAction::Received, 1);
        // The end seen before node-1 filed anything: not yet.
        assert!(!chain_complete(&[node(
            "n2",
            vec![into.clone(), end.clone()]
        )]));
        // node-1's first hop only: n2's reception says a tunnelled hop is to
        // come (node-1 filed its hops in two batches).
        assert!(!chain_complete(&[
            node("n1", vec![from_pod.clone()]),
            node("n2", vec![into.clone(), end.clone()]),
        ]));
        assert!(chain_complete(&[
            node("n1", vec![from_pod.clone(), out.clone()]),
            node("n2", vec![into, end.clone()]),
        ]));
        assert!(!chain_complete(&[
            node("n1", vec![from_pod, out]),
            node("n2", vec![end]),
        ]));
    }

    #[test]
    fn nodes_are_chained_by_tunnel_endpoints_not_clocks() {
        let mut out = hop("n1", TracePoint::ToOverlay, HopAction::Tunnelled, 1_000);
        out.tunnel = tunnel([192, 0, 2, 11], [192, 0, 2, 12]);
        let mut into = hop("n2", TracePoint::FromOverlay, HopAction::Received, 500);
        into.tunnel = tunnel([192, 0, 2, 12], [192, 0, 2, 11]);
        // n2's clock is behind n1's, and n2 answered first.
        let nodes = vec![
            NodeHops {
                node: "n2".into(),
                hops: vec![
                    into,
                    hop("n2", TracePoint::ToPod, HopAction::Delivered, 600),
                ],
            },
            NodeHops {
                node: "n3".into(),
                hops: vec![],
            },
            NodeHops {
                node: "n1".into(),
                hops: vec![
                    hop("n1", TracePoint::FromPod, HopAction::Received, 900),
                    out,
                ],
            },
        ];
        let hops = assemble(nodes);
        let order: Vec<(&str, TracePoint)> =
            hops.iter().map(|h| (h.node.as_str(), h.point)).collect();
        assert_eq!(
            order,
            [
                ("n1", TracePoint::FromPod),
                ("n1", TracePoint::ToOverlay),
                ("n2", TracePoint::FromOverlay),
                ("n2", TracePoint::ToPod)
            ]
        );
        let latency: Vec<u64> = hops.iter().map(|h| h.latency_ns).collect();
        assert_eq!(latency, [0, 100, 0, 100]);
    }
}
