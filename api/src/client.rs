//! A small blocking HTTP/1.1 client for the agent's unix socket.
//!
//! The CNI plugin must start fast and never block past its timeout, so it cannot
//! bring up an async runtime; this client is std-only, one request per connection,
//! with a deadline on connect, write and read.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cni::AgentError;

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
        let deadline = Instant::now() + self.timeout;
        let stream = UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
            path: self.path.clone(),
            source,
        })?;
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        // One deadline for the whole exchange, not one per read or write: a slow
        // agent cannot stretch a call past the timeout by trickling bytes.
        let remaining = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))
        };
        let mut stream = stream;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: lumen-agent\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        stream
            .set_write_timeout(Some(remaining().map_err(io)?))
            .map_err(io)?;
        stream.write_all(&request).map_err(io)?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            stream
                .set_read_timeout(Some(remaining().map_err(io)?))
                .map_err(io)?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        if raw.is_empty() {
            // The agent took the request and went away before answering (killed
            // or restarting): the caller may try again later.
            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        parse_response(&raw)
    }
}

fn decode<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, ClientError> {
    if (200..300).contains(&status) {
        return serde_json::from_slice(body).map_err(ClientError::Decode);
    }
    match serde_json::from_slice::<AgentError>(body) {
        Ok(err) => Err(ClientError::Agent(err)),
        Err(_) => Err(ClientError::Status {
            status,
            body: String::from_utf8_lossy(body).into_owned(),
        }),
    }
}

/// Split an HTTP/1.1 response into status and (de-chunked) body.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
    let protocol = |reason: &str| ClientError::Protocol {
        reason: reason.to_owned(),
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| protocol("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| protocol("headers not utf-8"))?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| protocol("bad status line"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| protocol("truncated chunk size"))?;
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .ok_or_else(|| protocol("bad chunk size"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| protocol("truncated chunk"))?;
        out.extend_from_slice(chunk);
        rest = rest
            .get(size + 2..)
            .ok_or_else(|| protocol("truncated chunk"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (404, b"abcde".to_vec()));
        assert!(parse_response(b"garbage").is_err());
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
