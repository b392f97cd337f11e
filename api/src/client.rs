//! A small blocking HTTP/1.1 client for the agent's unix socket.
//!
//! The CNI plugin must start fast and never block past its timeout, so it cannot
//! bring up an async runtime; this client is std-only, one request per connection,
//! with a deadline on connect, write and read. `lumen observe` also reads the
//! agent's streamed NDJSON answers with it: the same deadline up to the answer's
//! headers, then the body line by line as it arrives (de-chunked here).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cni::AgentError;
use crate::filter::FlowQuery;
use crate::flow::FlowEvent;
use crate::paths;

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent socket {path} is unreachable")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent on {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent's answer is not valid HTTP: {reason}")]
    Protocol { reason: String },
    #[error("the agent's answer could not be decoded")]
    Decode(#[source] serde_json::Error),
    #[error("the agent refused: {0}")]
    Agent(AgentError),
    #[error("the agent answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
}

/// A text answer (see [`Client::get_text`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    /// The answer's `Content-Type`, if it had one.
    pub content_type: Option<String>,
    pub body: String,
}

/// A client for one agent socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(path: impl AsRef<Path>, timeout: Duration) -> Self {
        Self {
            path: path.as_ref().to_owned(),
            timeout,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `GET path`, decoding a JSON answer.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = self.request("GET", path, None)?;
        decode(status, &body)
    }

    /// `GET path`, answered with text such as `/metrics`: the body and its
    /// `Content-Type`, exactly as the agent sent them. A non-2xx answer is
    /// [`ClientError::Status`].
    pub fn get_text(&self, path: &str) -> Result<Text, ClientError> {
        let (head, mut answer) = self.open("GET", path, None)?;
        let mut body = Vec::new();
        answer
            .read_to_end(&mut body)
            .map_err(|e| self.read_error(e))?;
        if !(200..300).contains(&head.status) {
            return Err(refusal(head.status, &body));
        }
        let body = String::from_utf8(body).map_err(|_| ClientError::Protocol {
            reason: "text body not utf-8".to_owned(),
        })?;
        Ok(Text {
            content_type: head.content_type,
            body,
        })
    }

    /// `POST path` with a JSON body, decoding a JSON answer.
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(ClientError::Decode)?;
        let (status, answer) = self.request("POST", path, Some(&body))?;
        decode(status, &answer)
    }

    /// One raw request: the status code and the body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let (head, mut answer) = self.open(method, path, body)?;
        let mut out = Vec::new();
        answer
            .read_to_end(&mut out)
            .map_err(|e| self.read_error(e))?;
        Ok((head.status, out))
    }

    /// `GET path_and_query`, answered with newline-delimited text (NDJSON): the
    /// answer's lines as they arrive. Connecting, sending and reading the headers
    /// share the client's deadline; after that each read of the body waits at most
    /// `idle`, or forever with `None` (a stream that stays open for new lines).
    /// A non-2xx answer is [`ClientError::Status`] with the agent's `error`
    /// message, if it sent one.
    pub fn stream(
        &self,
        path_and_query: &str,
        idle: Option<Duration>,
    ) -> Result<LineStream, ClientError> {
        let (head, mut answer) = self.open("GET", path_and_query, None)?;
        if !(200..300).contains(&head.status) {
            let mut body = Vec::new();
            answer
                .read_to_end(&mut body)
                .map_err(|e| self.read_error(e))?;
            return Err(refusal(head.status, &body));
        }
        let conn = answer.reader.get_mut();
        conn.deadline = None;
        conn.idle = idle;
        Ok(LineStream {
            path: self.path.clone(),
            body: BufReader::new(answer),
            done: false,
        })
    }

    /// `GET /v1/flows` with `query`: the agent's flow records, one per line. With
    /// `follow` the stream waits for new records for as long as the agent runs;
    /// without, it ends after the buffered matches and no read of it waits longer
    /// than the client's timeout.
    pub fn flows(&self, query: &FlowQuery) -> Result<FlowStream, ClientError> {
        let query_string = query.to_query_string();
        let path = if query_string.is_empty() {
            paths::FLOWS.to_owned()
        } else {
            format!("{}?{query_string}", paths::FLOWS)
        };
        let idle = (!query.follow).then_some(self.timeout);
        Ok(FlowStream {
            lines: self.stream(&path, idle)?,
        })
    }

    /// Connect, send the request and read the answer's head, all within the
    /// client's deadline. The body reader keeps that deadline.
    fn open(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(Head, Body<BufReader<Conn>>), ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut stream =
            UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
                path: self.path.clone(),
                source,
            })?;
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: lumen-agent\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        stream
            .set_write_timeout(Some(remaining(deadline).map_err(io)?))
            .map_err(io)?;
        stream.write_all(&request).map_err(io)?;
        let mut reader = BufReader::new(Conn {
            stream,
            deadline: Some(deadline),
            idle: None,
        });
        let head = read_head(&mut reader).map_err(|e| self.read_error(e))?;
        let framing = head.framing;
        Ok((head, Body::new(reader, framing)))
    }

    /// A failed read: garbled framing is a protocol error, anything else I/O.
    fn read_error(&self, source: std::io::Error) -> ClientError {
        read_error(&self.path, source)
    }
}

fn read_error(path: &Path, source: std::io::Error) -> ClientError {
    if source.kind() == ErrorKind::InvalidData {
        ClientError::Protocol {
            reason: source.to_string(),
        }
    } else {
        ClientError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The time left until `deadline`, or `TimedOut` once it has passed.
fn remaining(deadline: Instant) -> std::io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ErrorKind::TimedOut.into())
}

fn decode<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, ClientError> {
    if (200..300).contains(&status) {
        return serde_json::from_slice(body).map_err(ClientError::Decode);
    }
    match serde_json::from_slice::<AgentError>(body) {
        Ok(err) => Err(ClientError::Agent(err)),
        Err(_) => Err(refusal(status, body)),
    }
}

/// A non-2xx answer: the `error` message of a JSON error body, or the body.
fn refusal(status: u16, body: &[u8]) -> ClientError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let body = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(body).trim_end().to_owned(),
    };
    ClientError::Status { status, body }
}

// === impl Conn ===

/// The socket, with every read bounded by the exchange's deadline (so a slow
/// agent cannot stretch a call by trickling bytes) and by an idle limit.
#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    deadline: Option<Instant>,
    idle: Option<Duration>,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.map(remaining).transpose()?;
        let timeout = match (left, self.idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.stream.set_read_timeout(timeout)?;
        self.stream.read(buf)
    }
}

/// Longest header or chunk-size line accepted.
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines accepted.
const MAX_HEADERS: usize = 100;

fn invalid(reason: &str) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, reason.to_owned())
}

/// One CRLF- (or LF-) terminated line without its terminator; an error at EOF.
fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = Vec::new();
    reader.take(MAX_LINE).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(if line.is_empty() {
            ErrorKind::UnexpectedEof.into()
        } else {
            invalid("truncated line")
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| invalid("line not utf-8"))
}

/// How the body of an answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked,
    Length(u64),
    /// At the end of the connection.
    Close,
}

/// What an answer's head says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    framing: Framing,
    content_type: Option<String>,
}

/// The status code, body framing and content type of an HTTP/1.1 answer.
/// Nothing at all before EOF is `UnexpectedEof`: the agent took the request and
/// went away before answering (killed or restarting), and the caller may try
/// again later.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Head> {
    let status_line = read_line(reader)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let mut framing = Framing::Close;
    let mut content_type = None;
    for _ in 0..MAX_HEADERS {
        let line = read_line(reader).map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => invalid("no end of headers"),
            _ => e,
        })?;
        if line.is_empty() {
            return Ok(Head {
                status,
                framing,
                content_type,
            });
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid("bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            let length = value.parse().map_err(|_| invalid("bad content-length"))?;
            framing = Framing::Length(length);
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_owned());
        }
    }
    Err(invalid("too many headers"))
}

// === impl Body ===

/// Where a body reader is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk's data, with this many bytes left.
    ChunkData(u64),
    /// After a chunk's data, before its CRLF.
    ChunkEnd,
    /// This many bytes left of a `Content-Length` body.
    Length(u64),
    /// Until the connection closes.
    Close,
    Done,
}

/// An answer's body, de-chunked, read as it arrives.
#[derive(Debug)]
struct Body<R> {
    reader: R,
    state: BodyState,
}

impl<R: BufRead> Body<R> {
    fn new(reader: R, framing: Framing) -> Self {
        let state = match framing {
            Framing::Chunked => BodyState::ChunkSize,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Close => BodyState::Close,
        };
        Self { reader, state }
    }

    /// Read at most `limit` bytes of data; EOF here is a truncated body.
    fn read_data(&mut self, buf: &mut [u8], limit: u64) -> std::io::Result<usize> {
        let len = usize::try_from(limit).map_or(buf.len(), |l| l.min(buf.len()));
        let n = self.reader.read(&mut buf[..len])?;
        if n == 0 {
            return Err(invalid("truncated body"));
        }
        Ok(n)
    }
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                BodyState::Done | BodyState::Length(0) => {
                    self.state = BodyState::Done;
                    return Ok(0);
                }
                BodyState::Close => return self.reader.read(buf),
                BodyState::Length(left) => {
                    let n = self.read_data(buf, left)?;
                    self.state = BodyState::Length(left - n as u64);
                    return Ok(n);
                }
                BodyState::ChunkData(left) => {
                    let n = self.read_data(buf, left)?;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        BodyState::ChunkEnd
                    } else {
                        BodyState::ChunkData(left)
                    };
                    return Ok(n);
                }
                BodyState::ChunkEnd => {
                    if !read_line(&mut self.reader)?.is_empty() {
                        return Err(invalid("chunk longer than its size"));
                    }
                    self.state = BodyState::ChunkSize;
                }
                BodyState::ChunkSize => {
                    let line = read_line(&mut self.reader).map_err(|e| match e.kind() {
                        ErrorKind::UnexpectedEof => invalid("truncated chunk size"),
                        _ => e,
                    })?;
                    let digits = line.split(';').next().unwrap_or_default().trim();
                    let size =
                        u64::from_str_radix(digits, 16).map_err(|_| invalid("bad chunk size"))?;
                    if size == 0 {
                        // Trailers, if any, up to the blank line that ends the body.
                        while !read_line(&mut self.reader)?.is_empty() {}
                        self.state = BodyState::Done;
                    } else {
                        self.state = BodyState::ChunkData(size);
                    }
                }
            }
        }
    }
}

// === impl LineStream ===

/// The lines of a streamed answer (see [`Client::stream`]), without their line
/// ends; blank lines are skipped. Ends when the agent ends the body; after an
/// error it yields nothing more.
#[derive(Debug)]
pub struct LineStream {
    path: PathBuf,
    body: BufReader<Body<BufReader<Conn>>>,
    done: bool,
}

impl Iterator for LineStream {
    type Item = Result<String, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let mut line = Vec::new();
            match self.body.read_until(b'\n', &mut line) {
                Ok(0) => self.done = true,
                Ok(_) => {
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    let text = text.strip_suffix(b"\r").unwrap_or(text);
                    if text.is_empty() {
                        continue;
                    }
                    return Some(String::from_utf8(text.to_vec()).map_err(|_| {
                        ClientError::Protocol {
                            reason: "line not utf-8".to_owned(),
                        }
                    }));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(read_error(&self.path, e)));
                }
            }
        }
        None
    }
}

// === impl FlowStream ===

/// One line of `GET /v1/flows`: the event, and its JSON exactly as the agent sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLine {
    pub event: FlowEvent,
    pub json: String,
}

/// The records of `GET /v1/flows` (see [`Client::flows`]). A line that does not
/// decode is an error item; the lines after it still come.
#[derive(Debug)]
pub struct FlowStream {
    lines: LineStream,
}

impl Iterator for FlowStream {
    type Item = Result<FlowLine, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let json = match self.lines.next()? {
            Ok(json) => json,
            Err(e) => return Some(Err(e)),
        };
        Some(
            serde_json::from_str(&json)
                .map(|event| FlowLine { event, json })
                .map_err(ClientError::Decode),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status and whole body of a raw answer, as `request` reads it.
    fn parse(raw: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let mut reader = raw;
        let head = read_head(&mut reader)?;
        let mut body = Vec::new();
        Body::new(reader, head.framing).read_to_end(&mut body)?;
        Ok((head.status, body))
    }

    #[test]
    fn parses_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse(plain).unwrap(), (200, b"{}".to_vec()));
        let close = b"HTTP/1.1 200 OK\r\n\r\nto the end";
        assert_eq!(parse(close).unwrap(), (200, b"to the end".to_vec()));
        let chunked = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n\
                        3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: y\r\n\r\n";
        assert_eq!(parse(chunked).unwrap(), (404, b"abcde".to_vec()));
        for bad in [
            &b"garbage"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2",
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::InvalidData,
                "{:?}: {err}",
                String::from_utf8_lossy(bad)
            );
        }
        let empty = parse(b"").unwrap_err();
        assert_eq!(empty.kind(), ErrorKind::UnexpectedEof);
    }

    /// A socket in a fresh directory, served once by `answer` on a thread; the
    /// request's first line comes back through the join handle.
    struct OneShot {
        dir: PathBuf,
        path: PathBuf,
        server: Option<std::thread::JoinHandle<String>>,
    }

    impl OneShot {
        fn serve(tag: &str, answer: impl FnOnce(UnixStream) + Send + 'static) -> Self {
            static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let dir =
                std::env::temp_dir().join(format!("lumen-client-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("agent.sock");
            let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
            let server = std::thread::spawn(move || {
                let (conn, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let request_line = read_line(&mut reader).unwrap();
                while !read_line(&mut reader).unwrap().is_empty() {}
                answer(conn);
                request_line
            });
            Self {
                dir,
                path,
                server: Some(server),
            }
        }

        fn client(&self, timeout: Duration) -> Client {
            Client::new(&self.path, timeout)
        }

        /// The request line the server saw.
        fn request_line(mut self) -> String {
            self.server.take().unwrap().join().unwrap()
        }
    }

    impl Drop for OneShot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn chunk(conn: &mut UnixStream, data: &str) {
        write!(conn, "{:x}\r\n{data}\r\n", data.len()).unwrap();
    }

    const NDJSON_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                               transfer-encoding: chunked\r\n\r\n";

    fn lost(node: &str, count: u64) -> FlowEvent {
        FlowEvent::LostEvents(crate::flow::LostEvents {
            node: node.to_owned(),
            source: crate::flow::LostSource::RingBuffer,
            count,
            time_ns: 1_700_000_000_000_000_000,
        })
    }

    /// Lines split across chunks and chunks holding several lines come out as
    /// whole lines, and a follow stream waits through silences longer than the
    /// client's timeout.
    #[test]
    fn follow_stream_reassembles_lines_and_has_no_body_deadline() {
        let one = serde_json::to_string(&lost("node-1", 1)).unwrap();
        let two = serde_json::to_string(&lost("node-2", 2)).unwrap();
        let three = serde_json::to_string(&lost("node-1", 3)).unwrap();
        let (a, b) = (one.clone(), two.clone());
        let server = OneShot::serve("follow", move |mut conn| {
            conn.write_all(NDJSON_HEAD.as_bytes()).unwrap();
            let (head, tail) = a.split_at(10);
            chunk(&mut conn, head);
            std::thread::sleep(Duration::from_millis(250));
            chunk(&mut conn, &format!("{tail}\n\n{b}\n"));
            std::thread::sleep(Duration::from_millis(250));
            chunk(&mut conn, &format!("{three}\n"));
            conn.write_all(b"0\r\n\r\n").unwrap();
        });
        let query = FlowQuery {
            from_pod: Some("default/pod-1-1".into()),
            follow: true,
            ..FlowQuery::default()
        };
        let stream = server
            .client(Duration::from_millis(100))
            .flows(&query)
            .unwrap();
        let lines: Vec<FlowLine> = stream.collect::<Result<_, _>>().unwrap();
        let counts: Vec<u64> = lines
            .iter()
            .map(|l| match &l.event {
                FlowEvent::LostEvents(l) => l.count,
                FlowEvent::Flow(_) => 0,
            })
            .collect();
        assert_eq!(counts, [1, 2, 3]);
        assert_eq!(lines[0].json, one);
        assert_eq!(lines[1].json, two);
        assert_eq!(
            server.request_line(),
            "GET /v1/flows?from_pod=default%2Fpod-1-1&follow=true HTTP/1.1"
        );
    }

    /// Without follow, an agent that stops sending mid-body cannot hang the
    /// reader: each read waits at most the client's timeout.
    #[test]
    fn a_stalled_finite_stream_times_out() {
        let line = serde_json::to_string(&lost("node-1", 1)).unwrap();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let server = OneShot::serve("stall", move |mut conn| {
            conn.write_all(NDJSON_HEAD.as_bytes()).unwrap();
            chunk(&mut conn, &format!("{line}\n"));
            let _ = stop_rx.recv_timeout(Duration::from_secs(5));
        });
        let start = Instant::now();
        let mut stream = server
            .client(Duration::from_millis(200))
            .flows(&FlowQuery::default())
            .unwrap();
        assert!(matches!(stream.next(), Some(Ok(_))));
        let err = stream.next().unwrap().unwrap_err();
        assert!(matches!(err, ClientError::Io { .. }), "{err}");
        assert!(stream.next().is_none());
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        stop_tx.send(()).unwrap();
        assert_eq!(server.request_line(), "GET /v1/flows HTTP/1.1");
    }

    #[test]
    fn a_refused_stream_carries_the_agents_message() {
        let server = OneShot::serve("refuse", |mut conn| {
            let body = r#"{"error":"port: \"http\" is not a valid port number"}"#;
            write!(
                conn,
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        });
        let query = FlowQuery {
            port: Some("http".into()),
            ..FlowQuery::default()
        };
        let err = server
            .client(Duration::from_secs(2))
            .flows(&query)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"the agent answered HTTP 400: port: "http" is not a valid port number"#
        );
    }

    #[test]
    fn a_line_that_does_not_decode_is_an_error_and_the_stream_goes_on() {
        let good = serde_json::to_string(&lost("node-1", 7)).unwrap();
        let server = OneShot::serve("garbled", move |mut conn| {
            conn.write_all(NDJSON_HEAD.as_bytes()).unwrap();
            chunk(&mut conn, &format!("{{\"nonsense\":1}}\n{good}\n"));
            conn.write_all(b"0\r\n\r\n").unwrap();
        });
        let items: Vec<_> = server
            .client(Duration::from_secs(2))
            .flows(&FlowQuery::default())
            .unwrap()
            .collect();
        assert_eq!(items.len(), 2);
        assert!(matches!(items[0], Err(ClientError::Decode(_))));
        assert_eq!(items[1].as_ref().unwrap().event, lost("node-1", 7));
    }

    #[test]
    fn get_text_keeps_body_and_content_type() {
        let metrics = "# TYPE lumen_flows_active gauge\nlumen_flows_active 3\n";
        let server = OneShot::serve("text", move |mut conn| {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                 transfer-encoding: chunked\r\n\r\n"
            )
            .unwrap();
            chunk(&mut conn, &metrics[..10]);
            chunk(&mut conn, &metrics[10..]);
            conn.write_all(b"0\r\n\r\n").unwrap();
        });
        let text = server
            .client(Duration::from_secs(2))
            .get_text("/metrics")
            .unwrap();
        assert_eq!(text.body, metrics);
        assert_eq!(
            text.content_type.as_deref(),
            Some("text/plain; version=0.0.4")
        );
        assert_eq!(server.request_line(), "GET /metrics HTTP/1.1");

        let server = OneShot::serve("text-404", |mut conn| {
            conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nno metric")
                .unwrap();
        });
        let err = server
            .client(Duration::from_secs(2))
            .get_text("/metrics")
            .unwrap_err();
        assert_eq!(err.to_string(), "the agent answered HTTP 404: no metric");
    }

    #[test]
    fn unreachable_socket_is_connect_error() {
        let client = Client::new("/nonexistent/lumen.sock", Duration::from_millis(100));
        let err = client.get::<serde_json::Value>("/healthz").unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    }

    #[test]
    fn a_trickling_agent_cannot_stretch_the_timeout() {
        let dir = std::env::temp_dir().join(format!("lumen-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("slow.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            for _ in 0..40 {
                if conn.write_all(b"H").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let client = Client::new(&path, Duration::from_millis(200));
        let start = Instant::now();
        let err = client.get::<serde_json::Value>("/healthz").unwrap_err();
        assert!(matches!(err, ClientError::Io { .. }), "{err}");
        assert!(
            start.elapsed() < Duration::from_millis(600),
            "took {:?}",
            start.elapsed()
        );
        server.join().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
