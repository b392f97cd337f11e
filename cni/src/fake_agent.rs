//! A one-shot fake agent for unit tests: a unix socket in a fresh temporary
//! directory that takes one connection, records the request and answers a
//! canned HTTP/1.1 response.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A directory removed on drop, even when the test panics.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "lumen-cni-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the plugin sent.
#[derive(Debug)]
pub struct Request {
    /// The request line, e.g. `POST /v1/cni/add HTTP/1.1`.
    pub line: String,
    pub body: Vec<u8>,
}

impl Request {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Debug)]
pub struct FakeAgent {
    dir: TempDir,
    server: JoinHandle<Request>,
}

impl FakeAgent {
    /// Answer the first request with `status` and `body`.
    pub fn answering(status: u16, body: &str) -> Self {
        let response = format!(
            "HTTP/1.1 {status} Canned\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        Self::serving(move |mut stream| {
            stream.write_all(response.as_bytes()).unwrap();
        })
    }

    /// Take the request and answer nothing for `hold`, as a hung agent would.
    pub fn silent(hold: Duration) -> Self {
        Self::serving(move |stream| {
            std::thread::sleep(hold);
            drop(stream);
        })
    }

    fn serving(respond: impl FnOnce(UnixStream) + Send + 'static) -> Self {
        let dir = TempDir::new();
        let listener = UnixListener::bind(dir.path().join("agent.sock")).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let request = read_request(&mut stream);
            respond(stream);
            request
        });
        Self { dir, server }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// The request the plugin sent (waits for the answer to be written).
    pub fn request(self) -> Request {
        self.server.join().unwrap()
    }
}

fn read_request(stream: &mut UnixStream) -> Request {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the end of headers");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(raw[..head_end].to_vec()).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the end of the body");
        body.extend_from_slice(&buf[..n]);
    }
    Request {
        line: head.lines().next().unwrap_or_default().to_owned(),
        body,
    }
}
