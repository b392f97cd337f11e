//! The metrics relay. The lab's Prometheus runs in the root network namespace,
//! which cannot reach any lab address (and must not be given a route to one), but
//! every agent's API socket is a file the root namespace can open. So the relay
//! listens on one loopback port per node and answers `GET /metrics` with what
//! that node's agent says on its socket, bytes and `Content-Type` unchanged;
//! Prometheus's scrape config adds the `node` label.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lumen_api::client::Client;
use lumen_api::paths;

/// How often the accept loop looks at its stop flag.
const POLL_MS: libc::c_int = 100;
/// Longest request head the relay reads.
const MAX_HEAD: u64 = 16 * 1024;
/// How long a client gets to send its request and take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// What an agent's metrics are, if its answer does not say.
const DEFAULT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the relay could not run.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for connections failed")]
    Poll(#[source] std::io::Error),
    #[error("the relay has no targets")]
    NoTargets,
}

/// One node: where the relay listens for it, and its agent's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub listen: SocketAddr,
    pub socket: PathBuf,
}

/// The relay's listeners, bound and ready to serve.
#[derive(Debug)]
pub struct Relay {
    listeners: Vec<(TcpListener, PathBuf)>,
    agent_timeout: Duration,
}

impl Relay {
    /// Listen for every target; `agent_timeout` bounds each fetch from an agent.
    pub fn bind(targets: &[Target], agent_timeout: Duration) -> Result<Self, RelayError> {
        if targets.is_empty() {
            return Err(RelayError::NoTargets);
        }
        let listeners = targets
            .iter()
            .map(|t| {
                let bind = |source| RelayError::Bind {
                    addr: t.listen,
                    source,
                };
                let listener = TcpListener::bind(t.listen).map_err(bind)?;
                // Accepting only after poll(2) said so; non-blocking makes a
                // connection that went away in between harmless.
                listener.set_nonblocking(true).map_err(bind)?;
                Ok((listener, t.socket.clone()))
            })
            .collect::<Result<_, RelayError>>()?;
        Ok(Self {
            listeners,
            agent_timeout,
        })
    }

    /// The addresses listened on, in target order (port 0 becomes the real port).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serve until `stop` is set; each connection on a thread of its own, so a
    /// slow agent or client holds up no other scrape.
    pub fn serve(&self, stop: &AtomicBool) -> Result<(), RelayError> {
        let mut fds: Vec<libc::pollfd> = self
            .listeners
            .iter()
            .map(|(l, _)| libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
        while !stop.load(Ordering::SeqCst) {
            // SAFETY: `fds` is a valid, exclusively borrowed array of `nfds`
            // pollfd structs for the duration of the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), nfds, POLL_MS) };
            if ready < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RelayError::Poll(err));
            }
            for (pfd, (listener, socket)) in fds.iter_mut().zip(&self.listeners) {
                if pfd.revents == 0 {
                    continue;
                }
                pfd.revents = 0;
                // WouldBlock (the client gave up) and per-connection errors
                // concern that client alone.
                while let Ok((conn, _)) = listener.accept() {
                    let client = Client::new(socket, self.agent_timeout);
                    std::thread::spawn(move || answer(conn, &client));
                }
            }
        }
        Ok(())
    }
}

/// What the relay answers to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    status: &'static str,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn text(status: &'static str, body: String) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8".to_owned(),
            body: body.into_bytes(),
        }
    }
}

/// Read one request from `conn` and answer it; the connection then closes.
fn answer(mut conn: TcpStream, agent: &Client) {
    // Errors talking to the client concern it alone: it sees a closed socket.
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = conn.set_write_timeout(Some(CLIENT_TIMEOUT));
    let reply = match read_request_line(&conn) {
        Ok(line) => route(&line, agent),
        Err(_) => Reply::text("400 Bad Request", "bad request\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    let _ = conn
        .write_all(head.as_bytes())
        .and_then(|()| conn.write_all(&reply.body));
}

/// The request line of the head on `conn`; the rest of the head is read and
/// ignored (the relay needs no header).
fn read_request_line(conn: &TcpStream) -> std::io::Result<String> {
    let mut reader = BufReader::new(conn).take(MAX_HEAD);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.trim_end().is_empty() {
            return Ok(first.trim_end().to_owned());
        }
    }
}

/// `GET /metrics` goes to the agent; anything else is refused here.
fn route(request_line: &str, agent: &Client) -> Reply {
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next());
    let path = target.and_then(|t| t.split('?').next()).unwrap_or_default();
    if path != paths::METRICS {
        return Reply::text(
            "404 Not Found",
            format!("only {} is relayed\n", paths::METRICS),
        );
    }
    if method != "GET" {
        return Reply::text("405 Method Not Allowed", "only GET\n".to_owned());
    }
    match agent.get_text(paths::METRICS) {
        Ok(text) => Reply {
            status: "200 OK",
            content_type: text
                .content_type
                .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned()),
            body: text.body.into_bytes(),
        },
        // Prometheus marks the target down (`up` 0) and shows this message.
        Err(err) => Reply::text("502 Bad Gateway", format!("{}\n", chain(&err))),
    }
}

/// An error with its sources, `a: b: c`.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Shutdown};
    use std::os::unix::net::UnixListener;
    use std::sync::Arc;

    use super::*;
    use crate::state::tests::TempDir;

    const METRICS: &str = "# HELP lumen_flows_active Flows the agent tracks now.\n\
                           # TYPE lumen_flows_active gauge\n\
                           lumen_flows_active 3\n";

    /// A stand-in agent on a unix socket: answers every request with the
    /// metrics text (chunked, as hyper does) and reports each request line.
    fn fake_agent(dir: &TempDir, name: &str) -> (PathBuf, std::sync::mpsc::Receiver<String>) {
        let path = dir.0.join(name);
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let _ = tx.send(line.trim_end().to_owned());
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim_end().is_empty() {
                        break;
                    }
                }
                let (a, b) = METRICS.split_at(20);
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                     transfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    a.len(),
                    b.len()
                )
                .unwrap();
            }
        });
        (path, rx)
    }

    /// `request` sent raw to `addr`: the status line, the headers, the body.
    fn fetch(addr: SocketAddr, request: &str) -> (String, String, String) {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let (status, headers) = head.split_once("\r\n").unwrap();
        (status.to_owned(), headers.to_lowercase(), body.to_owned())
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    struct Running {
        relay: Arc<Relay>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<Result<(), RelayError>>>,
    }

    impl Running {
        fn start(targets: &[Target]) -> Self {
            let relay = Arc::new(Relay::bind(targets, Duration::from_secs(2)).unwrap());
            let stop = Arc::new(AtomicBool::new(false));
            let (r, s) = (relay.clone(), stop.clone());
            let thread = Some(std::thread::spawn(move || r.serve(&s)));
            Self {
                relay,
                stop,
                thread,
            }
        }

        fn stop(mut self) {
            self.stop.store(true, Ordering::SeqCst);
            self.thread.take().unwrap().join().unwrap().unwrap();
        }
    }

    #[test]
    fn relays_each_nodes_metrics_unchanged() {
        let dir = TempDir::new("relay");
        let (sock1, seen1) = fake_agent(&dir, "node-1.sock");
        let (sock2, seen2) = fake_agent(&dir, "node-2.sock");
        let running = Running::start(&[
            Target {
                listen: loopback(),
                socket: sock1,
            },
            Target {
                listen: loopback(),
                socket: sock2,
            },
        ]);
        let addrs = running.relay.local_addrs();
        assert_eq!(addrs.len(), 2);
        assert_ne!(addrs[0].port(), addrs[1].port());

        // What Prometheus sends, query string and all.
        let request = "GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                       Accept: text/plain;version=0.0.4\r\nAccept-Encoding: gzip\r\n\r\n";
        let (status, headers, body) = fetch(addrs[1], request);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains("content-type: text/plain; version=0.0.4"),
            "{headers}"
        );
        assert!(
            headers.contains(&format!("content-length: {}", METRICS.len())),
            "{headers}"
        );
        assert_eq!(body, METRICS);
        assert_eq!(
            seen2.recv_timeout(Duration::from_secs(2)).unwrap(),
            "GET /metrics HTTP/1.1"
        );
        // Only node-2's agent was asked.
        assert!(seen1.try_recv().is_err());

        let (status, _, body) = fetch(addrs[0], "GET /metrics HTTP/1.0\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, METRICS);
        assert!(seen1.recv_timeout(Duration::from_secs(2)).is_ok());

        let (status, _, _) = fetch(addrs[0], "GET /v1/flows HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, _, _) = fetch(addrs[0], "POST /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        let (status, _, _) = fetch(addrs[0], "GET /metrics HTTP/1.1\r\n");
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        // Refused requests never reached the agent.
        assert!(seen1.try_recv().is_err());
        running.stop();
    }

    #[test]
    fn an_unreachable_agent_is_a_bad_gateway_with_the_reason() {
        let dir = TempDir::new("relay-down");
        let running = Running::start(&[Target {
            listen: loopback(),
            socket: dir.0.join("absent.sock"),
        }]);
        let addr = running.relay.local_addrs()[0];
        let (status, _, body) = fetch(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 502 Bad Gateway");
        assert!(body.contains("absent.sock is unreachable"), "{body}");
        assert!(body.contains("No such file"), "{body}");
        running.stop();
    }

    #[test]
    fn bind_refuses_a_taken_port_and_no_targets() {
        let taken = TcpListener::bind(loopback()).unwrap();
        let target = Target {
            listen: taken.local_addr().unwrap(),
            socket: PathBuf::from("/x.sock"),
        };
        let err = Relay::bind(&[target], Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, RelayError::Bind { .. }), "{err}");
        let err = Relay::bind(&[], Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, RelayError::NoTargets), "{err}");
    }
}
