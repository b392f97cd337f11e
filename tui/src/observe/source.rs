//! Where `lumen observe` reads records from: one agent, or every node agent of a
//! lab, asked in parallel and merged. A finished query is merged by time with
//! `--last` applied across nodes; a followed one is passed on as lines arrive.
//! An agent that fails is reported, not fatal, as long as another one answers.

use std::sync::mpsc::{self, Receiver};

use lumen_api::client::{Client, ClientError, FlowLine};

/// One agent to ask, named by its node (or its socket, when given one).
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    pub client: Client,
}

/// Something that went wrong with one agent; the others carry on.
#[derive(Debug)]
pub struct Problem {
    pub agent: String,
    pub error: ClientError,
}

/// What one agent sent for a finished query.
#[derive(Debug)]
pub struct Answer {
    pub agent: String,
    pub lines: Vec<FlowLine>,
    pub problems: Vec<ClientError>,
    /// Whether the agent accepted the query (it may still fail part way).
    pub answered: bool,
}

/// Read an agent's whole answer; `opened` is the result of sending the query.
pub fn collect<I>(agent: &str, opened: Result<I, ClientError>) -> Answer
where
    I: IntoIterator<Item = Result<FlowLine, ClientError>>,
{
    let mut answer = Answer {
        agent: agent.to_owned(),
        lines: Vec::new(),
        problems: Vec::new(),
        answered: opened.is_ok(),
    };
    match opened {
        Ok(stream) => {
            for item in stream {
                match item {
                    Ok(line) => answer.lines.push(line),
                    Err(e) => answer.problems.push(e),
                }
            }
        }
        Err(e) => answer.problems.push(e),
    }
    answer
}

/// Every agent's answer merged into one list.
#[derive(Debug)]
pub struct Merged {
    pub lines: Vec<FlowLine>,
    pub problems: Vec<Problem>,
    /// How many agents accepted the query.
    pub answered: usize,
}

/// Merge answers: oldest first (ties in the order of `answers`), then only the
/// newest `last` across all of them.
pub fn merge(answers: Vec<Answer>, last: Option<usize>) -> Merged {
    let mut merged = Merged {
        lines: Vec::new(),
        problems: Vec::new(),
        answered: 0,
    };
    for answer in answers {
        merged.answered += usize::from(answer.answered);
        merged.lines.extend(answer.lines);
        merged
            .problems
            .extend(answer.problems.into_iter().map(|error| Problem {
                agent: answer.agent.clone(),
                error,
            }));
    }
    merged.lines.sort_by_key(|l| l.event.time_ns());
    if let Some(last) = last {
        let skip = merged.lines.len().saturating_sub(last);
        merged.lines.drain(..skip);
    }
    merged
}

/// Ask every agent at once (one thread each) and merge their answers.
pub fn query_all(agents: &[Agent], query: &lumen_api::FlowQuery, last: Option<usize>) -> Merged {
    let answers = std::thread::scope(|scope| {
        let handles: Vec<_> = agents
            .iter()
            .map(|agent| scope.spawn(|| collect(&agent.name, agent.client.flows(query))))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    merge(answers, last)
}

/// What the follow threads report, in the order it happens.
#[derive(Debug)]
pub enum Update {
    Line(FlowLine),
    Problem(Problem),
    /// An agent's stream ended (or never opened: `answered` false).
    Ended {
        answered: bool,
    },
}

/// Follow every source on a thread of its own; updates arrive on the receiver
/// as they happen, and every source ends with exactly one [`Update::Ended`].
pub fn follow<F, I>(sources: Vec<(String, F)>) -> Receiver<Update>
where
    F: FnOnce() -> Result<I, ClientError> + Send + 'static,
    I: Iterator<Item = Result<FlowLine, ClientError>>,
{
    let (tx, rx) = mpsc::channel();
    for (agent, open) in sources {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let problem = |error| {
                Update::Problem(Problem {
                    agent: agent.clone(),
                    error,
                })
            };
            let answered = match open() {
                Ok(stream) => {
                    for item in stream {
                        let update = item.map_or_else(problem, Update::Line);
                        // The reader is gone: nobody wants more.
                        if tx.send(update).is_err() {
                            return;
                        }
                    }
                    true
                }
                Err(error) => {
                    let _ = tx.send(problem(error));
                    false
                }
            };
            let _ = tx.send(Update::Ended { answered });
        });
    }
    rx
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use lumen_api::FlowEvent;

    use super::*;
    use crate::observe::format::tests::{T0, tcp_flow};

    /// A flow of `node` ending `offset` ns after T0.
    fn line(node: &str, offset: u64) -> FlowLine {
        let event = FlowEvent::Flow(Box::new(tcp_flow(node, T0 + offset)));
        FlowLine {
            json: serde_json::to_string(&event).unwrap(),
            event,
        }
    }

    fn nodes_and_times(lines: &[FlowLine]) -> Vec<(String, u64)> {
        lines
            .iter()
            .map(|l| match &l.event {
                FlowEvent::Flow(f) => (f.node.clone(), f.end_ns - T0),
                FlowEvent::LostEvents(l) => (l.node.clone(), l.time_ns - T0),
            })
            .collect()
    }

    fn unreachable() -> ClientError {
        ClientError::Connect {
            path: PathBuf::from("/run/lumen-lab/lumen/node-3/agent.sock"),
            source: std::io::ErrorKind::NotFound.into(),
        }
    }

    fn ok_stream(lines: Vec<FlowLine>) -> Result<Vec<Result<FlowLine, ClientError>>, ClientError> {
        Ok(lines.into_iter().map(Ok).collect())
    }

    #[test]
    fn merge_sorts_by_time_across_nodes_and_keeps_the_newest() {
        let answers = vec![
            collect(
                "node-1",
                ok_stream(vec![
                    line("node-1", 10),
                    line("node-1", 30),
                    line("node-1", 50),
                ]),
            ),
            collect(
                "node-2",
                ok_stream(vec![
                    line("node-2", 20),
                    line("node-2", 30),
                    line("node-2", 60),
                ]),
            ),
            collect("node-3", Err::<Vec<_>, _>(unreachable())),
        ];
        let all = merge(answers, None);
        assert_eq!(
            nodes_and_times(&all.lines),
            [
                ("node-1".into(), 10),
                ("node-2".into(), 20),
                ("node-1".into(), 30),
                ("node-2".into(), 30),
                ("node-1".into(), 50),
                ("node-2".into(), 60),
            ]
        );
        assert_eq!(all.answered, 2);
        assert_eq!(all.problems.len(), 1);
        assert_eq!(all.problems[0].agent, "node-3");

        let answers = vec![
            collect(
                "node-1",
                ok_stream(vec![line("node-1", 10), line("node-1", 50)]),
            ),
            collect(
                "node-2",
                ok_stream(vec![line("node-2", 20), line("node-2", 60)]),
            ),
        ];
        let last = merge(answers, Some(3));
        assert_eq!(
            nodes_and_times(&last.lines),
            [
                ("node-2".into(), 20),
                ("node-1".into(), 50),
                ("node-2".into(), 60)
            ]
        );
    }

    #[test]
    fn a_failure_part_way_keeps_what_came_before() {
        let stream: Vec<Result<FlowLine, ClientError>> = vec![
            Ok(line("node-1", 1)),
            Err(ClientError::Protocol {
                reason: "truncated body".into(),
            }),
        ];
        let answer = collect("node-1", Ok::<_, ClientError>(stream));
        assert!(answer.answered);
        assert_eq!(answer.lines.len(), 1);
        assert_eq!(answer.problems.len(), 1);
    }

    #[test]
    fn follow_passes_lines_on_and_ends_every_source() {
        type Stream = std::vec::IntoIter<Result<FlowLine, ClientError>>;
        type Open = Box<dyn FnOnce() -> Result<Stream, ClientError> + Send>;
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let sources: Vec<(String, Open)> = vec![
            (
                "node-1".into(),
                Box::new(|| Ok(vec![Ok(line("node-1", 1)), Ok(line("node-1", 2))].into_iter())),
            ),
            (
                "node-2".into(),
                // Opens only once node-1's lines were read: arrival order is
                // what follow shows, whatever the records' times.
                Box::new(move || {
                    gate_rx.recv().unwrap();
                    Ok(vec![Ok(line("node-2", 0))].into_iter())
                }),
            ),
            ("node-3".into(), Box::new(|| Err(unreachable()))),
        ];
        let rx = follow(sources);
        let mut seen = Vec::new();
        let mut ended = Vec::new();
        let mut problems = Vec::new();
        while ended.len() < 3 {
            match rx.recv().unwrap() {
                Update::Line(l) => {
                    seen.push(l);
                    if seen.len() == 2 {
                        gate_tx.send(()).unwrap();
                    }
                }
                Update::Problem(p) => problems.push(p.agent),
                Update::Ended { answered } => ended.push(answered),
            }
        }
        assert_eq!(
            nodes_and_times(&seen),
            [
                ("node-1".into(), 1),
                ("node-1".into(), 2),
                ("node-2".into(), 0)
            ]
        );
        assert_eq!(problems, ["node-3"]);
        ended.sort();
        assert_eq!(ended, [false, true, true]);
    }
}
