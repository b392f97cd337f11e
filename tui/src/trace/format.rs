//! How `lumen trace` prints a result: a tree with one branch per node and one
//! line per hop (the point, the action, the time since the previous hop, then
//! what the hop knows: the deciding policy rule, the tunnel and its tag, the
//! translated source, the interface), between a header naming the packet and
//! a footer with the verdict; or the result itself as JSON or YAML. With
//! colour the tree is drawn with box characters and actions and the verdict are
//! coloured; without, it is plain ASCII, for pipes and logs.

use clap::ValueEnum;
use lumen_api::Tag;
use lumen_api::flow::{PolicyRef, RuleAction};
use lumen_api::trace::{
    Hop, HopAction, TraceMode, TracePhase, TracePoint, TraceResult, TraceVerdict,
};
use serde::Serialize;

/// The `-o` formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One branch per node, one line per hop
    #[default]
    Tree,
    /// The result as JSON, as the agents' API has it
    Json,
    /// The result as YAML (the status of a Traceflow object)
    Yaml,
}

/// Why a result could not be printed.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot encode the result as JSON")]
    Json(#[source] serde_json::Error),
    #[error("cannot encode the result as YAML")]
    Yaml(#[source] serde_yaml::Error),
}

/// `result` as `output` asks, without a final newline.
pub fn render(output: Output, result: &TraceResult, color: bool) -> Result<String, FormatError> {
    match output {
        Output::Tree => Ok(tree(result, color)),
        Output::Json => serde_json::to_string_pretty(result).map_err(FormatError::Json),
        Output::Yaml => serde_yaml::to_string(result)
            .map(|text| text.trim_end().to_owned())
            .map_err(FormatError::Yaml),
    }
}

// === style ===

/// The few colours used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paint {
    Green,
    Red,
    Yellow,
    Bold,
}

/// Fancy (colour and box characters) or plain ASCII.
#[derive(Debug, Clone, Copy)]
struct Style {
    fancy: bool,
}

impl Style {
    fn paint(self, text: &str, paint: Paint) -> String {
        if !self.fancy {
            return text.to_owned();
        }
        let code = match paint {
            Paint::Green => 32,
            Paint::Red => 31,
            Paint::Yellow => 33,
            Paint::Bold => 1,
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    fn branch(self, last: bool) -> &'static str {
        match (self.fancy, last) {
            (true, false) => "├── ",
            (true, true) => "└── ",
            (false, false) => "|-- ",
            (false, true) => "`-- ",
        }
    }

    fn micro(self) -> &'static str {
        if self.fancy { "µs" } else { "us" }
    }
}

fn action_paint(action: HopAction) -> Paint {
    match action {
        HopAction::Received
        | HopAction::Forwarded
        | HopAction::Tunnelled
        | HopAction::Delivered => Paint::Green,
        HopAction::Dropped | HopAction::Rejected => Paint::Red,
        HopAction::Masqueraded => Paint::Yellow,
    }
}

fn verdict_paint(verdict: TraceVerdict) -> Paint {
    match verdict {
        TraceVerdict::Delivered => Paint::Green,
        TraceVerdict::Dropped => Paint::Red,
        TraceVerdict::LeftCluster => Paint::Yellow,
    }
}

// === the tree ===

/// One hop's cells, unpadded.
#[derive(Debug)]
struct Row {
    point: &'static str,
    action: String,
    paint: Paint,
    latency: String,
    detail: String,
}

impl Row {
    fn of(hop: &Hop, first: bool, style: Style) -> Self {
        let action = match hop.reason {
            Some(reason) => format!("{} ({})", hop.action, wire_name(&reason)),
            None => hop.action.to_string(),
        };
        Self {
            point: hop.point.name(),
            action,
            paint: action_paint(hop.action),
            latency: if first {
                String::new()
            } else {
                format!("+{}", duration(hop.latency_ns, style))
            },
            detail: detail(hop),
        }
    }
}

/// The tree: header, one branch per node in path order, footer.
pub fn tree(result: &TraceResult, color: bool) -> String {
    let style = Style { fancy: color };
    let mut lines = vec![header(result)];
    let rows: Vec<Row> = result
        .hops
        .iter()
        .enumerate()
        .map(|(i, hop)| Row::of(hop, i == 0, style))
        .collect();
    let width = |cell: fn(&Row) -> usize| rows.iter().map(cell).max().unwrap_or(0);
    let point_w = width(|r| r.point.chars().count());
    let action_w = width(|r| r.action.chars().count());
    let latency_w = width(|r| r.latency.chars().count());
    let mut rows = rows.iter();
    // A node's hops are consecutive in path order; a node the path comes back
    // to gets a branch of its own.
    for hops in result.hops.chunk_by(|a, b| a.node == b.node) {
        lines.push(style.paint(&hops[0].node, Paint::Bold));
        for (i, row) in rows.by_ref().take(hops.len()).enumerate() {
            let pad = action_w - row.action.chars().count();
            let line = format!(
                "{}{:<point_w$}  {}{}  {:>latency_w$}  {}",
                style.branch(i + 1 == hops.len()),
                row.point,
                style.paint(&row.action, row.paint),
                " ".repeat(pad),
                row.latency,
                row.detail,
            );
            lines.push(line.trim_end().to_owned());
        }
    }
    if result.hops.is_empty() {
        lines.push("(no hop seen)".to_owned());
    }
    lines.extend(footer(result, style));
    lines.join("\n")
}

/// `trace ID PACKET (MODE)`; before any packet is known, what was asked.
fn header(result: &TraceResult) -> String {
    let request = &result.request;
    let mode = match (request.mode, request.dropped_only) {
        (TraceMode::Injected, _) => "injected",
        (TraceMode::Live, false) => "live",
        (TraceMode::Live, true) => "live, dropped only",
    };
    match &result.packet {
        Some(packet) => format!("trace {} {packet} ({mode})", result.id),
        None => {
            let port = request
                .destination_port
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            format!(
                "trace {} {} {} -> {}{port} ({mode}, no packet seen)",
                result.id, request.protocol, request.source, request.destination
            )
        }
    }
}

/// The verdict, where it was reached and how long the path took; or why the
/// trace failed.
fn footer(result: &TraceResult, style: Style) -> Vec<String> {
    match result.phase {
        TracePhase::Succeeded => {
            let verdict = match result.verdict {
                Some(v) => style.paint(&v.to_string(), verdict_paint(v)),
                None => "unknown".to_owned(),
            };
            let at = result
                .final_hop()
                .or(result.hops.last())
                .map(|h| format!(" at {} {}", h.node, h.point.name()))
                .unwrap_or_default();
            let span = match node_count(result) {
                1 => "on 1 node".to_owned(),
                n => format!("over {n} nodes"),
            };
            let mut lines = vec![format!(
                "verdict {verdict}{at}; end to end {} {span}",
                duration(result.end_to_end_ns, style)
            )];
            // A trace can succeed with something to say (the source did not
            // take the result back).
            if let Some(note) = &result.reason {
                lines.push(format!("note: {note}"));
            }
            lines
        }
        TracePhase::Failed => vec![format!(
            "{} {}",
            style.paint("trace FAILED:", Paint::Red),
            result.reason.as_deref().unwrap_or("no reason given")
        )],
        TracePhase::Running => vec![format!(
            "{} (no verdict yet)",
            style.paint("trace still RUNNING", Paint::Yellow)
        )],
    }
}

fn node_count(result: &TraceResult) -> usize {
    let mut nodes: Vec<&str> = result.hops.iter().map(|h| h.node.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes.len()
}

/// What a hop knows beyond its action, in a fixed order.
fn detail(hop: &Hop) -> String {
    let mut parts = Vec::new();
    let at_policy = matches!(
        hop.point,
        TracePoint::PolicyEgress | TracePoint::PolicyIngress
    );
    match &hop.policy {
        Some(p) => parts.push(policy(p)),
        None if at_policy => parts.push("no policy".to_owned()),
        None => {}
    }
    if let Some(t) = hop.tunnel {
        // In the packet's direction: a receiving node's local end is the
        // packet's destination.
        let (from, to) = if hop.point == TracePoint::FromOverlay {
            (t.remote, t.local)
        } else {
            (t.local, t.remote)
        };
        let tag = Tag::from_vni(t.vni);
        let traced = if tag.trace { "traced" } else { "not traced" };
        parts.push(format!(
            "{from} -> {to} vni {:#x} (identity {}, {traced})",
            t.vni, tag.identity.0
        ));
    }
    if let Some(source) = hop.translated_source {
        parts.push(format!("as {source}"));
    }
    match (hop.interface.as_str(), hop.ifindex) {
        ("", 0) => {}
        ("", index) => parts.push(format!("if {index}")),
        (name, 0) => parts.push(name.to_owned()),
        (name, index) => parts.push(format!("{name} (if {index})")),
    }
    parts.join("  ")
}

/// `ns/name rule`, or the default deny of `ns/name` (as `lumen policy` says it).
fn policy(p: &PolicyRef) -> String {
    match (p.action, p.rule.is_empty()) {
        (RuleAction::Drop, true) => format!("default deny of {}/{}", p.namespace, p.name),
        (_, true) => format!("{}/{}", p.namespace, p.name),
        (_, false) => format!("{}/{} {}", p.namespace, p.name, p.rule),
    }
}

/// The name a value has on the wire (`POLICY`, `NO_ROUTE`).
fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "?".to_owned(),
    }
}

/// About three significant digits: `850ns`, `4.2µs`, `41µs`, `1.25ms`, `2.00s`
/// (truncated, not rounded, so a value never shows in the next unit up).
fn duration(ns: u64, style: Style) -> String {
    let micro = style.micro();
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..10_000 => format!("{}.{}{micro}", ns / 1_000, ns / 100 % 10),
        10_000..1_000_000 => format!("{}{micro}", ns / 1_000),
        1_000_000..10_000_000 => format!("{}.{:02}ms", ns / 1_000_000, ns / 10_000 % 100),
        10_000_000..100_000_000 => format!("{}.{}ms", ns / 1_000_000, ns / 100_000 % 10),
        100_000_000..1_000_000_000 => format!("{}ms", ns / 1_000_000),
        _ => format!("{}.{:02}s", ns / 1_000_000_000, ns / 10_000_000 % 100),
    }
}

#[cfg(test)]
mod tests;
