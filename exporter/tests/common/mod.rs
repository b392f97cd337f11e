//! Helpers shared by the exporter's integration tests: loopback collectors that
//! collect raw messages, and polling.

#![allow(dead_code, reason = "each test crate uses part of these helpers")]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use lumen_exporter::ipfix::test_util::split_messages;
use lumen_exporter::{CollectorStats, IpfixExporter};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::{Instant, sleep, timeout};

pub const WAIT: Duration = Duration::from_secs(10);

/// A port on loopback that nothing listens on (for now).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Poll `cond` until it holds; panic with `what` after `WAIT`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

pub fn collector_stats(exporter: &IpfixExporter, index: usize) -> CollectorStats {
    exporter.stats().collectors[index].clone()
}

/// A UDP collector that keeps every datagram.
pub struct UdpCollector {
    pub socket: UdpSocket,
}

impl UdpCollector {
    pub async fn bind() -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
        }
    }

    pub fn url(&self) -> String {
        format!("udp://{}", self.socket.local_addr().expect("addr"))
    }

    /// The next datagram, if one comes within `wait`.
    pub async fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0; 65536];
        let (n, _) = timeout(wait, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// Datagrams until `done` says the collection is complete.
    pub async fn recv_until(&self, mut done: impl FnMut(&[Vec<u8>]) -> bool) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self
                .recv(left)
                .await
                .unwrap_or_else(|| panic!("timed out after {} datagrams", got.len()));
            got.push(msg);
        }
        got
    }
}

/// One accepted TCP connection, read as IPFIX messages.
pub struct TcpSession {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl TcpSession {
    pub async fn accept(listener: &TcpListener) -> Self {
        let (stream, _) = timeout(WAIT, listener.accept())
            .await
            .expect("exporter connects")
            .expect("accept");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// The next whole message; None at a clean end of stream.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.buf.len() >= 4 {
                let len = usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
                if self.buf.len() >= len {
                    let rest = self.buf.split_off(len);
                    let msg = std::mem::replace(&mut self.buf, rest);
                    split_messages(&msg).expect("one whole message");
                    return Some(msg);
                }
            }
            let mut chunk = [0; 8192];
            let n = timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("a message within the wait")
                .expect("read");
            if n == 0 {
                assert!(self.buf.is_empty(), "stream ended inside a message");
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

pub async fn listen(port: u16) -> TcpListener {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpListener::bind(addr)
        .await
        .expect("bind the collector's port")
}

/// Run `f` with a deadline.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
