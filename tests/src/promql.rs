//! The PromQL the repository ships, as tests need it: every query of every Grafana
//! panel (`dashboards/grafana/*.json`) and every rule of every Prometheus rule file
//! (`dashboards/prometheus/*.yml` with `groups`), with Grafana's variables replaced
//! so that each can go to Prometheus's HTTP API as is; the metric families that
//! `docs/metrics.md` documents, to check the queries against.
//!
//! Queries are read with a small PromQL lexer, enough to find variables, selectors
//! and grouping labels; Prometheus itself (`promtool`, the HTTP API) judges the
//! rest.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::peers;

/// Grafana dashboards, relative to the repository's root.
pub const GRAFANA_DIR: &str = "dashboards/grafana";
/// Prometheus rule files, their tests and the lab's scrape configuration.
pub const PROMETHEUS_DIR: &str = "dashboards/prometheus";
/// The specification of the metrics.
pub const METRICS_DOC: &str = "docs/metrics.md";

/// What `$__rate_interval` becomes: a window that holds several of the lab's 5 s
/// scrapes, so `rate()` has two samples even after a late scrape.
pub const RATE_INTERVAL: &str = "1m";
/// What `$__interval` becomes: Grafana's step for an hour on a wide panel.
pub const INTERVAL: &str = "15s";
/// Labels every family has once scraped: the scrape's `instance` and `job`, and
/// the `node` the lab's scrape configuration adds.
pub const TARGET_LABELS: [&str; 3] = ["instance", "job", "node"];

/// Grafana's range variables and what they become.
const RANGE_VARIABLES: [(&str, &str); 2] =
    [("__rate_interval", RATE_INTERVAL), ("__interval", INTERVAL)];
/// Grafana's label variables. They are multi-value with "All", which Grafana
/// writes as a regex alternation, so they belong in `=~` matchers only, where
/// "All" is `.*`.
const LABEL_VARIABLES: [&str; 1] = ["node"];
const ALL: &str = ".*";

/// Words that are never a metric name: aggregations, binary operators, modifiers.
const KEYWORDS: [&str; 20] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "offset",
    "inf",
    "nan",
];
/// Words followed by a list of label names.
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Why the repository's queries could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PromqlError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path} as JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("parsing {path} as YAML")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: no panels")]
    NoPanels { path: PathBuf },
    #[error("{path}: panel {panel:?} has no targets")]
    NoTargets { path: PathBuf, panel: String },
    #[error("{path}: panel {panel:?}, target {ref_id:?} has no expr")]
    NoPanelExpr {
        path: PathBuf,
        panel: String,
        ref_id: String,
    },
    #[error("{path}: rule {rule:?} has no expr")]
    NoRuleExpr { path: PathBuf, rule: String },
    #[error("{expr:?}, at byte {at}: {reason}")]
    Syntax {
        expr: String,
        at: usize,
        reason: &'static str,
    },
    #[error("{expr:?}: variable ${variable}: {reason}")]
    Variable {
        expr: String,
        variable: String,
        reason: &'static str,
    },
}

/// One PromQL expression of the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The file, relative to the repository's root.
    pub file: String,
    /// The panel's title, or the alert's (or recorded series') name.
    pub title: String,
    /// The panel target's `refId`; `None` for a rule.
    pub ref_id: Option<String>,
    /// The expression as written.
    pub raw: String,
    /// The expression with Grafana's variables replaced.
    pub expr: String,
}

impl Query {
    fn new(
        file: String,
        title: String,
        ref_id: Option<String>,
        raw: &str,
    ) -> Result<Self, PromqlError> {
        Ok(Self {
            expr: substitute(raw)?,
            raw: raw.to_owned(),
            file,
            title,
            ref_id,
        })
    }

    /// Whether it comes from a Grafana dashboard (else from a rule file).
    pub fn is_panel(&self) -> bool {
        self.ref_id.is_some()
    }

    /// The metric names its selectors read (`_bucket`, `_sum`, `_count` kept).
    pub fn metrics(&self) -> Result<BTreeSet<String>, PromqlError> {
        Ok(analyze(&self.expr)?
            .selectors
            .into_iter()
            .map(|s| s.metric)
            .collect())
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ref_id {
            Some(ref_id) => write!(f, "{}: {:?} [{ref_id}]", self.file, self.title),
            None => write!(f, "{}: {}", self.file, self.title),
        }
    }
}

/// Every query of this repository: its dashboards' panels, then its rules
/// (`queries` of the repository's root). A file that cannot be read, a panel
/// target without an expression or a variable Lumen does not substitute fails
/// the calling test.
#[track_caller]
pub fn expressions() -> Vec<Query> {
    queries(&peers::repo_root())
        .unwrap_or_else(|e| panic!("the repository's PromQL: {}", chain(&e)))
}

/// An error with its causes, for a panic message.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Every query of the repository at `root`: each panel target of each dashboard,
/// then each rule of each rule file, files in name order.
pub fn queries(root: &Path) -> Result<Vec<Query>, PromqlError> {
    let mut all = Vec::new();
    for path in files(root, GRAFANA_DIR, &["json"])? {
        let dashboard = read_json(&path)?;
        all.extend(dashboard_queries(&relative(root, &path), &dashboard)?);
    }
    for path in files(root, PROMETHEUS_DIR, &["yml", "yaml"])? {
        let doc = read_yaml(&path)?;
        if doc.get("groups").is_some() {
            all.extend(rule_queries(&relative(root, &path), &doc)?);
        }
    }
    Ok(all)
}

/// The dashboards of the repository at `root`, each with its path relative to
/// `root`.
pub fn dashboards(root: &Path) -> Result<Vec<(String, Json)>, PromqlError> {
    files(root, GRAFANA_DIR, &["json"])?
        .into_iter()
        .map(|path| Ok((relative(root, &path), read_json(&path)?)))
        .collect()
}

/// The panels of `dashboard` that show data: rows are containers, and a
/// collapsed row holds its panels.
pub fn panels(dashboard: &Json) -> Vec<&Json> {
    fn walk<'a>(list: &'a [Json], out: &mut Vec<&'a Json>) {
        for panel in list {
            if panel.get("type").and_then(Json::as_str) == Some("row") {
                if let Some(inner) = panel.get("panels").and_then(Json::as_array) {
                    walk(inner, out);
                }
            } else {
                out.push(panel);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(list) = dashboard.get("panels").and_then(Json::as_array) {
        walk(list, &mut out);
    }
    out
}

fn dashboard_queries(file: &str, dashboard: &Json) -> Result<Vec<Query>, PromqlError> {
    let path = PathBuf::from(file);
    let panels = panels(dashboard);
    if panels.is_empty() {
        return Err(PromqlError::NoPanels { path });
    }
    let mut out = Vec::new();
    for panel in panels {
        let title = panel
            .get("title")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned();
        let targets = panel
            .get("targets")
            .and_then(Json::as_array)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| PromqlError::NoTargets {
                path: path.clone(),
                panel: title.clone(),
            })?;
        for target in targets {
            let ref_id = target
                .get("refId")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned();
            let expr = target
                .get("expr")
                .and_then(Json::as_str)
                .filter(|e| !e.trim().is_empty())
                .ok_or_else(|| PromqlError::NoPanelExpr {
                    path: path.clone(),
                    panel: title.clone(),
                    ref_id: ref_id.clone(),
                })?;
            out.push(Query::new(
                file.to_owned(),
                title.clone(),
                Some(ref_id),
                expr,
            )?);
        }
    }
    Ok(out)
}

fn rule_queries(file: &str, doc: &Yaml) -> Result<Vec<Query>, PromqlError> {
    let groups = doc.get("groups").and_then(Yaml::as_sequence);
    let rules = groups
        .into_iter()
        .flatten()
        .filter_map(|g| g.get("rules").and_then(Yaml::as_sequence))
        .flatten();
    let mut out = Vec::new();
    for rule in rules {
        let name = ["alert", "record"]
            .iter()
            .find_map(|k| rule.get(*k).and_then(Yaml::as_str))
            .unwrap_or_default()
            .to_owned();
        let expr = rule
            .get("expr")
            .and_then(Yaml::as_str)
            .filter(|e| !e.trim().is_empty())
            .ok_or_else(|| PromqlError::NoRuleExpr {
                path: PathBuf::from(file),
                rule: name.clone(),
            })?;
        out.push(Query::new(file.to_owned(), name, None, expr.trim())?);
    }
    Ok(out)
}

fn files(root: &Path, dir: &str, extensions: &[&str]) -> Result<Vec<PathBuf>, PromqlError> {
    let dir = root.join(dir);
    let read_err = |source| PromqlError::Read {
        path: dir.clone(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e));
        if wanted && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn read(path: &Path) -> Result<String, PromqlError> {
    std::fs::read_to_string(path).map_err(|source| PromqlError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_json(path: &Path) -> Result<Json, PromqlError> {
    serde_json::from_str(&read(path)?).map_err(|source| PromqlError::Json {
        path: path.to_owned(),
        source,
    })
}

fn read_yaml(path: &Path) -> Result<Yaml, PromqlError> {
    serde_yaml::from_str(&read(path)?).map_err(|source| PromqlError::Yaml {
        path: path.to_owned(),
        source,
    })
}

// === Variables ===

/// `expr` with Grafana's variables replaced: `$__rate_interval` and
/// `$__interval` by `RATE_INTERVAL` and `INTERVAL`, a label variable (`$node`,
/// `${node}`, `${node:regex}`) by `.*` in an `=~` matcher. Any other variable, or
/// a label variable anywhere else, is an error: Prometheus would get it verbatim.
pub fn substitute(expr: &str) -> Result<String, PromqlError> {
    let tokens = lex(expr)?;
    let mut out = String::with_capacity(expr.len());
    let mut copied = 0;
    for (i, token) in tokens.iter().enumerate() {
        let replacement = match token.kind {
            Kind::Var => {
                let name = variable_name(token.text);
                let value = RANGE_VARIABLES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| *v);
                let reason = if LABEL_VARIABLES.contains(&name) {
                    "a label variable belongs in an =~ matcher"
                } else {
                    "not a variable Lumen's dashboards use"
                };
                Some(
                    value
                        .ok_or_else(|| variable_error(expr, name, reason))?
                        .to_owned(),
                )
            }
            Kind::Str if token.text.contains('$') => {
                let regex = i > 0 && tokens[i - 1].is(Kind::Op, "=~");
                Some(substitute_in_string(expr, token.text, regex)?)
            }
            _ => None,
        };
        if let Some(replacement) = replacement {
            out.push_str(&expr[copied..token.start]);
            out.push_str(&replacement);
            copied = token.start + token.text.len();
        }
    }
    out.push_str(&expr[copied..]);
    Ok(out)
}

/// A string literal (quotes included) with its label variables replaced by `.*`.
/// `$` before a digit is a regex back-reference and `$` before anything else not
/// a name is a regex anchor: both stay.
fn substitute_in_string(expr: &str, literal: &str, regex: bool) -> Result<String, PromqlError> {
    let bytes = literal.as_bytes();
    let mut out = String::with_capacity(literal.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let len = variable_len(&bytes[i..]);
        let text = &literal[i..i + len];
        let name = variable_name(text);
        let is_name = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if len == 0 || !is_name {
            i += 1;
            continue;
        }
        if !LABEL_VARIABLES.contains(&name) {
            return Err(variable_error(
                expr,
                name,
                "not a variable Lumen's dashboards use",
            ));
        }
        if !regex {
            return Err(variable_error(
                expr,
                name,
                "a label variable belongs in an =~ matcher",
            ));
        }
        out.push_str(&literal[copied..i]);
        out.push_str(ALL);
        i += len;
        copied = i;
    }
    out.push_str(&literal[copied..]);
    Ok(out)
}

fn variable_error(expr: &str, name: &str, reason: &'static str) -> PromqlError {
    PromqlError::Variable {
        expr: expr.to_owned(),
        variable: name.to_owned(),
        reason,
    }
}

/// The length of the variable at the start of `bytes` (`$name` or `${…}`); 0 if
/// there is none.
fn variable_len(bytes: &[u8]) -> usize {
    match bytes.get(1) {
        Some(b'{') => {
            let inside = bytes[2..]
                .iter()
                .take_while(|&&b| is_word(b) || b == b':' || b == b'.')
                .count();
            if inside > 0 && bytes.get(2 + inside) == Some(&b'}') {
                inside + 3
            } else {
                0
            }
        }
        _ => 1 + bytes[1..].iter().take_while(|b| is_word(**b)).count(),
    }
}

/// `$name`, `${name}` or `${name:format}` → `name`.
fn variable_name(text: &str) -> &str {
    let inner = text.trim_start_matches('$');
    let inner = inner
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(inner);
    inner.split(':').next().unwrap_or(inner)
}

// === Lexer ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ident,
    Number,
    Str,
    Var,
    Op,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind,
    /// The source text, quotes and `$`/braces included.
    text: &'a str,
    start: usize,
}

impl Token<'_> {
    fn is(&self, kind: Kind, text: &str) -> bool {
        self.kind == kind && self.text == text
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn lex(expr: &str) -> Result<Vec<Token<'_>>, PromqlError> {
    let syntax = |at, reason| PromqlError::Syntax {
        expr: expr.to_owned(),
        at,
        reason,
    };
    let bytes = expr.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        let kind = match b {
            _ if b.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'#' => {
                i += bytes[i..].iter().take_while(|&&c| c != b'\n').count();
                continue;
            }
            b'"' | b'\'' | b'`' => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err(syntax(start, "unterminated string")),
                        Some(b'\\') if b != b'`' => i += 2,
                        Some(&c) if c == b => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                Kind::Str
            }
            b'$' => {
                let len = variable_len(&bytes[i..]);
                if len <= 1 {
                    return Err(syntax(start, "`$` without a variable name"));
                }
                i += len;
                Kind::Var
            }
            _ if b.is_ascii_alphabetic() || b == b'_' => {
                i += bytes[i..]
                    .iter()
                    .take_while(|&&c| is_word(c) || c == b':')
                    .count();
                Kind::Ident
            }
            _ if b.is_ascii_digit() || b == b'.' => {
                i += bytes[i..]
                    .iter()
                    .take_while(|&&c| is_word(c) || c == b'.')
                    .count();
                Kind::Number
            }
            _ => {
                let two = bytes.get(i..i + 2).unwrap_or_default();
                i += if [b"=~", b"!~", b"!=", b"==", b">=", b"<="]
                    .iter()
                    .any(|op| op[..] == *two)
                {
                    2
                } else if b"=<>+-*/%^,(){}[]@:".contains(&b) {
                    1
                } else {
                    return Err(syntax(start, "unexpected character"));
                };
                Kind::Op
            }
        };
        tokens.push(Token {
            kind,
            text: &expr[start..i],
            start,
        });
    }
    Ok(tokens)
}

// === Selectors ===

/// A label matcher of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: String,
    /// The value, unquoted.
    pub value: String,
}

/// A vector selector: a metric name and its label matchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

/// The selectors of an expression, and the labels its `by`, `without`, `on`,
/// `ignoring` and `group_*` clauses name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    pub selectors: Vec<Selector>,
    pub grouping: BTreeSet<String>,
}

/// The selectors and grouping labels of `expr`, which must have no Grafana
/// variables left (see `substitute`). Every selector must name its metric.
pub fn analyze(expr: &str) -> Result<Analysis, PromqlError> {
    let syntax = |at, reason| PromqlError::Syntax {
        expr: expr.to_owned(),
        at,
        reason,
    };
    let tokens = lex(expr)?;
    let mut analysis = Analysis::default();
    let mut i = 0;
    while let Some(token) = tokens.get(i) {
        i += 1;
        let next_is = |text: &str| tokens.get(i).is_some_and(|t| t.is(Kind::Op, text));
        match token.kind {
            Kind::Var => return Err(syntax(token.start, "a variable is left")),
            Kind::Op if token.text == "{" => {
                return Err(syntax(token.start, "a selector without a metric name"));
            }
            Kind::Ident if GROUPING.contains(&token.text) => {
                if !next_is("(") {
                    continue;
                }
                i += 1;
                loop {
                    let Some(t) = tokens.get(i) else {
                        return Err(syntax(token.start, "unclosed label list"));
                    };
                    i += 1;
                    match t.kind {
                        Kind::Ident => {
                            analysis.grouping.insert(t.text.to_owned());
                        }
                        Kind::Op if t.text == "," => {}
                        Kind::Op if t.text == ")" => break,
                        _ => return Err(syntax(t.start, "expected a label name")),
                    }
                }
            }
            Kind::Ident if KEYWORDS.contains(&token.text) || next_is("(") => {}
            Kind::Ident => {
                let mut selector = Selector {
                    metric: token.text.to_owned(),
                    matchers: Vec::new(),
                };
                if next_is("{") {
                    i += 1;
                    i = matchers(expr, &tokens, i, &mut selector.matchers)?;
                }
                analysis.selectors.push(selector);
            }
            _ => {}
        }
    }
    Ok(analysis)
}

/// Reads `label op "value"` items up to the closing brace from `tokens[i]`;
/// returns the index after the brace.
fn matchers(
    expr: &str,
    tokens: &[Token<'_>],
    mut i: usize,
    out: &mut Vec<Matcher>,
) -> Result<usize, PromqlError> {
    let syntax = |at, reason| PromqlError::Syntax {
        expr: expr.to_owned(),
        at,
        reason,
    };
    let end = expr.len();
    loop {
        match tokens.get(i) {
            Some(t) if t.is(Kind::Op, "}") => return Ok(i + 1),
            Some(t) if t.is(Kind::Op, ",") => i += 1,
            Some(label) if label.kind == Kind::Ident => {
                let op = tokens
                    .get(i + 1)
                    .filter(|t| t.kind == Kind::Op && ["=", "!=", "=~", "!~"].contains(&t.text))
                    .ok_or_else(|| syntax(label.start, "expected a matcher operator"))?;
                let value = tokens
                    .get(i + 2)
                    .filter(|t| t.kind == Kind::Str)
                    .ok_or_else(|| syntax(op.start, "expected a quoted value"))?;
                out.push(Matcher {
                    label: label.text.to_owned(),
                    op: op.text.to_owned(),
                    value: unquote(value.text),
                });
                i += 3;
            }
            Some(t) => return Err(syntax(t.start, "expected a label matcher")),
            None => return Err(syntax(end, "unclosed selector")),
        }
    }
}

/// A string literal's value: quotes off, backslash escapes resolved to the
/// escaped character (enough for label values).
fn unquote(literal: &str) -> String {
    let inner = literal
        .get(1..literal.len().saturating_sub(1))
        .unwrap_or_default();
    if literal.starts_with('`') {
        return inner.to_owned();
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    out
}

// === The specification ===

/// A metric family as `docs/metrics.md` documents it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Family {
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    /// Each label with its documented values; an empty set when the values are
    /// open (codes, collectors, names).
    pub labels: BTreeMap<String, BTreeSet<String>>,
}

/// The metric families documented in `docs/metrics.md` of this repository.
pub fn repo_families() -> Result<BTreeMap<String, Family>, PromqlError> {
    Ok(families(&read(&peers::repo_root().join(METRICS_DOC))?))
}

/// The metric families of a metrics document: each table row whose first cell is
/// a `lumen_…` name, with its type and labels. A label cell lists `` `label` ``
/// names, each optionally followed by its values in parentheses
/// (`` `direction` (`egress`, `ingress`) ``); a value with `…` in it is a pattern,
/// which leaves the values open.
pub fn families(markdown: &str) -> BTreeMap<String, Family> {
    let mut out = BTreeMap::new();
    for line in markdown.lines() {
        let Some(row) = line.trim().strip_prefix('|') else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let [name, kind, labels, ..] = cells[..] else {
            continue;
        };
        let Some(name) = name.strip_prefix('`').and_then(|n| n.strip_suffix('`')) else {
            continue;
        };
        if !name.starts_with("lumen_") {
            continue;
        }
        out.insert(
            name.to_owned(),
            Family {
                kind: kind.to_owned(),
                labels: label_cell(labels),
            },
        );
    }
    out
}

fn label_cell(cell: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut open = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut depth = 0_u32;
    let mut rest = cell;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '`' => {
                let (word, after) = rest.split_once('`').unwrap_or((rest, ""));
                rest = after;
                if depth == 0 {
                    labels.entry(word.to_owned()).or_default();
                    current = Some(word.to_owned());
                } else if let Some(label) = &current {
                    if word.contains('…') {
                        open.insert(label.clone());
                    }
                    labels
                        .entry(label.clone())
                        .or_default()
                        .insert(word.to_owned());
                }
            }
            _ => {}
        }
    }
    for label in open {
        labels.insert(label, BTreeSet::new());
    }
    labels
}

/// The documented family a selected metric belongs to, and whether the series
/// are a histogram's buckets (which add the `le` label).
pub fn family_of<'a>(
    families: &'a BTreeMap<String, Family>,
    metric: &str,
) -> Option<(&'a Family, bool)> {
    if let Some(family) = families.get(metric) {
        return Some((family, false));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let family = families.get(metric.strip_suffix(suffix)?)?;
        (family.kind == "histogram").then_some((family, *suffix == "_bucket"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_dashboards() -> Vec<(String, Json)> {
        dashboards(&peers::repo_root()).expect("the dashboards parse")
    }

    #[test]
    fn the_four_dashboards_have_panels_and_every_panel_a_query() {
        let dashboards = repo_dashboards();
        let names: BTreeSet<&str> = dashboards.iter().map(|(f, _)| f.as_str()).collect();
        for wanted in ["overview", "drops-and-policy", "flow-export", "datapath"] {
            assert!(
                names.contains(format!("{GRAFANA_DIR}/{wanted}.json").as_str()),
                "{wanted}.json is missing from {names:?}"
            );
        }
        let queries = expressions();
        for (file, dashboard) in &dashboards {
            let panels = panels(dashboard);
            assert!(!panels.is_empty(), "{file} has no panels");
            for panel in panels {
                let title = panel["title"].as_str().expect("every panel has a title");
                let targets = panel["targets"].as_array().expect("targets");
                let found = queries
                    .iter()
                    .filter(|q| q.file == *file && q.title == title)
                    .count();
                assert_eq!(
                    found,
                    targets.len(),
                    "{file}: panel {title:?}: one query per target (titles are unique)"
                );
            }
        }
    }

    #[test]
    fn a_panel_without_a_query_is_an_error() {
        let no_expr = serde_json::json!({"panels": [
            {"title": "ok", "targets": [{"refId": "A", "expr": "lumen_flows_active"}]},
            {"title": "broken", "targets": [{"refId": "B", "expr": ""}]},
        ]});
        let err = dashboard_queries("d.json", &no_expr).expect_err("an empty expr");
        assert!(
            matches!(&err, PromqlError::NoPanelExpr { panel, ref_id, .. } if panel == "broken" && ref_id == "B"),
            "{err}"
        );
        let no_targets = serde_json::json!({"panels": [{"title": "t", "type": "timeseries"}]});
        let err = dashboard_queries("d.json", &no_targets).expect_err("no targets");
        assert!(matches!(err, PromqlError::NoTargets { .. }), "{err}");
        let collapsed = serde_json::json!({"panels": [{"type": "row", "title": "r", "panels": [
            {"title": "inner", "targets": [{"refId": "A", "expr": "lumen_flows_active"}]}
        ]}]});
        let found = dashboard_queries("d.json", &collapsed).expect("a collapsed row");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].title, "inner");
        let empty = serde_json::json!({"panels": []});
        assert!(matches!(
            dashboard_queries("d.json", &empty),
            Err(PromqlError::NoPanels { .. })
        ));
    }

    #[test]
    fn every_alert_rule_is_a_query() {
        let queries = expressions();
        let rules: Vec<&Query> = queries.iter().filter(|q| !q.is_panel()).collect();
        let doc: Yaml = serde_yaml::from_str(
            &read(&peers::repo_root().join(PROMETHEUS_DIR).join("alerts.yml")).expect("alerts.yml"),
        )
        .expect("alerts.yml parses");
        let alerts: Vec<&str> = doc["groups"]
            .as_sequence()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_sequence().expect("rules"))
            .map(|r| r["alert"].as_str().expect("alert rules only"))
            .collect();
        assert!(!alerts.is_empty());
        let titles: Vec<&str> = rules.iter().map(|q| q.title.as_str()).collect();
        assert_eq!(titles, alerts);
        assert!(
            rules.iter().all(|q| q.file.ends_with("alerts.yml")),
            "{rules:#?}"
        );
    }

    #[test]
    fn variables_are_replaced() {
        let ok = [
            (
                r#"sum by (node) (rate(lumen_flows_created_total{node=~"$node"}[$__rate_interval]))"#,
                r#"sum by (node) (rate(lumen_flows_created_total{node=~".*"}[1m]))"#,
            ),
            (
                r#"rate(x{node=~"${node}", map="flows"}[${__interval}])"#,
                r#"rate(x{node=~".*", map="flows"}[15s])"#,
            ),
            (
                r#"x{node=~"${node:regex}|node-9"}"#,
                r#"x{node=~".*|node-9"}"#,
            ),
            (
                r#"label_replace(x, "n", "$1", "node", "(.*)-\\d$")"#,
                r#"label_replace(x, "n", "$1", "node", "(.*)-\\d$")"#,
            ),
            (
                "x offset 5m # $node in a comment",
                "x offset 5m # $node in a comment",
            ),
        ];
        for (raw, want) in ok {
            assert_eq!(substitute(raw).expect(raw), want, "{raw}");
        }
        let bad = [
            (r#"x{node="$node"}"#, "node"),
            (r#"x{node!~"$node"}"#, "node"),
            ("sum by ($node) (x)", "node"),
            ("rate(x[$__range])", "__range"),
            ("rate(x[$__interval_ms])", "__interval_ms"),
            (r#"x{pod=~"$pod"}"#, "pod"),
        ];
        for (raw, name) in bad {
            match substitute(raw) {
                Err(PromqlError::Variable { variable, .. }) => assert_eq!(variable, name, "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
        }
    }

    #[test]
    fn no_query_keeps_a_variable() {
        for q in expressions() {
            let left = q.expr.match_indices('$').find(|(at, _)| {
                q.expr[at + 1..]
                    .bytes()
                    .next()
                    .is_some_and(|b| b == b'{' || b.is_ascii_alphabetic() || b == b'_')
            });
            assert!(left.is_none(), "{q}: {}", q.expr);
            analyze(&q.expr).unwrap_or_else(|e| panic!("{q}: {e}"));
        }
    }

    #[test]
    fn every_panel_query_follows_the_node_variable() {
        let all = Matcher {
            label: "node".into(),
            op: "=~".into(),
            value: ALL.into(),
        };
        for q in expressions().iter().filter(|q| q.is_panel()) {
            assert!(q.raw.contains("$node"), "{q}: {}", q.raw);
            for selector in analyze(&q.expr).expect("analyze").selectors {
                assert!(
                    selector.matchers.contains(&all),
                    "{q}: {} ignores $node",
                    selector.metric
                );
            }
        }
    }

    #[test]
    fn selectors_and_grouping_labels_are_found() {
        let expr = r#"histogram_quantile(0.99, sum by (le, node) (rate(a_bucket{node=~".*", operation="add"}[1m])))
            / on (instance) group_left (map) (b offset 10m) > bool 0.5 and sum(c) without (job)"#;
        let analysis = analyze(expr).expect("analyze");
        let metrics: Vec<&str> = analysis
            .selectors
            .iter()
            .map(|s| s.metric.as_str())
            .collect();
        assert_eq!(metrics, ["a_bucket", "b", "c"]);
        assert_eq!(
            analysis.selectors[0].matchers,
            [
                Matcher {
                    label: "node".into(),
                    op: "=~".into(),
                    value: ".*".into()
                },
                Matcher {
                    label: "operation".into(),
                    op: "=".into(),
                    value: "add".into()
                },
            ]
        );
        let grouping: Vec<&str> = analysis.grouping.iter().map(String::as_str).collect();
        assert_eq!(grouping, ["instance", "job", "le", "map", "node"]);
        assert!(matches!(
            analyze(r#"{__name__="x"}"#),
            Err(PromqlError::Syntax { .. })
        ));
        assert!(matches!(
            analyze(r#"x{a="b""#),
            Err(PromqlError::Syntax { .. })
        ));
        assert!(matches!(
            analyze(r#"x{a=b}"#),
            Err(PromqlError::Syntax { .. })
        ));
    }

    #[test]
    fn the_metrics_table_is_read() {
        let doc = "\
| name | type | labels | meaning |
|---|---|---|---|
| `lumen_a_total` | counter | `direction` (`egress`, `ingress`), `verdict` | A. |
| `lumen_b` | gauge | — | B. |
| `lumen_c_seconds` | histogram | `operation` (`add`) | C. |
| `lumen_d` | gauge | `collector` (`udp://…`/`tcp://…`) | D. |
| `other_metric` | gauge | — | not ours |
";
        let families = families(doc);
        let names: Vec<&str> = families.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["lumen_a_total", "lumen_b", "lumen_c_seconds", "lumen_d"]
        );
        let a = &families["lumen_a_total"];
        assert_eq!(a.kind, "counter");
        let direction: Vec<&str> = a.labels["direction"].iter().map(String::as_str).collect();
        assert_eq!(direction, ["egress", "ingress"]);
        assert!(a.labels["verdict"].is_empty());
        assert!(families["lumen_b"].labels.is_empty());
        assert!(families["lumen_d"].labels["collector"].is_empty());
        assert_eq!(
            family_of(&families, "lumen_c_seconds_bucket").map(|f| f.1),
            Some(true)
        );
        assert_eq!(
            family_of(&families, "lumen_c_seconds_count").map(|f| f.1),
            Some(false)
        );
        assert!(
            family_of(&families, "lumen_b_count").is_none(),
            "a gauge has no _count"
        );
    }

    #[test]
    fn every_metric_label_and_value_is_documented() {
        let families = repo_families().expect("docs/metrics.md");
        assert!(!families.is_empty(), "no families read from {METRICS_DOC}");
        for q in expressions() {
            let analysis = analyze(&q.expr).expect("analyze");
            let mut known: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
            for selector in &analysis.selectors {
                let (family, bucket) = family_of(&families, &selector.metric)
                    .unwrap_or_else(|| panic!("{q}: {} is not in {METRICS_DOC}", selector.metric));
                known.extend(family.labels.keys().map(String::as_str));
                if bucket {
                    known.insert("le");
                }
                for m in &selector.matchers {
                    let target = TARGET_LABELS.contains(&m.label.as_str());
                    let values = family.labels.get(&m.label);
                    assert!(
                        target || values.is_some() || (bucket && m.label == "le"),
                        "{q}: {} has no label {}",
                        selector.metric,
                        m.label
                    );
                    if let Some(values) = values.filter(|v| !v.is_empty())
                        && (m.op == "=" || m.op == "!=")
                    {
                        assert!(
                            values.contains(&m.value),
                            "{q}: {}{{{}={:?}}} is not a documented value ({values:?})",
                            selector.metric,
                            m.label,
                            m.value
                        );
                    }
                }
            }
            for label in &analysis.grouping {
                assert!(
                    known.contains(label.as_str()),
                    "{q}: groups by {label}, which none of its metrics has"
                );
            }
        }
    }

    #[test]
    fn dashboards_have_the_datasource_and_node_variables() {
        for (file, dashboard) in repo_dashboards() {
            let variables = dashboard["templating"]["list"]
                .as_array()
                .expect("templating.list");
            let variable = |name: &str| {
                variables
                    .iter()
                    .find(|v| v["name"] == name)
                    .unwrap_or_else(|| panic!("{file}: no {name} variable"))
            };
            let datasource = variable("datasource");
            assert_eq!(datasource["type"], "datasource", "{file}");
            assert_eq!(datasource["query"], "prometheus", "{file}");
            let node = variable("node");
            assert_eq!(node["type"], "query", "{file}");
            assert_eq!(
                node["definition"], "label_values(lumen_flows_active, node)",
                "{file}"
            );
            assert_eq!(node["query"]["query"], node["definition"], "{file}");
            assert_eq!(node["multi"], true, "{file}");
            assert_eq!(node["includeAll"], true, "{file}");
            assert_eq!(node["allValue"], ALL, "{file}");
            assert_eq!(node["datasource"]["uid"], "${datasource}", "{file}");
            assert!(
                dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
                "{file}"
            );
            assert!(
                dashboard["id"].is_null(),
                "{file}: an exported id clashes on import"
            );
        }
    }

    #[test]
    fn every_panel_uses_the_datasource_variable_and_has_its_own_place() {
        for (file, dashboard) in repo_dashboards() {
            let mut ids = BTreeSet::new();
            let mut cells = BTreeSet::new();
            for panel in panels(&dashboard) {
                let title = panel["title"].as_str().unwrap_or_default();
                assert_eq!(panel["datasource"]["type"], "prometheus", "{file}: {title}");
                assert_eq!(
                    panel["datasource"]["uid"], "${datasource}",
                    "{file}: {title}"
                );
                for target in panel["targets"].as_array().expect("targets") {
                    if let Some(uid) = target.get("datasource").map(|d| &d["uid"]) {
                        assert_eq!(uid, "${datasource}", "{file}: {title}");
                    }
                }
                assert!(
                    ids.insert(panel["id"].as_u64().expect("panel id")),
                    "{file}: {title}: id reused"
                );
                let grid = &panel["gridPos"];
                let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().expect("gridPos"));
                assert!(w > 0 && h > 0 && x + w <= 24, "{file}: {title}: {grid}");
                for cx in x..x + w {
                    for cy in y..y + h {
                        assert!(
                            cells.insert((cx, cy)),
                            "{file}: {title} overlaps another panel"
                        );
                    }
                }
            }
        }
    }
}
