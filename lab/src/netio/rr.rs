//! Request/response latency (netperf TCP_RR style, since netperf is not packaged):
//! an echo server, and a client that ping-pongs fixed-size requests over one
//! connection for a while and reports transactions per second and latency
//! percentiles.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Larger requests could fill both sides' socket buffers, since the client writes the
/// whole request before reading the echo.
pub const MAX_REQUEST_SIZE: usize = 64 * 1024;
/// Bounds connect and each read/write, so a dead peer ends a run instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
const ECHO_BUF_LEN: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RrError {
    #[error("request size {size} is outside 1..={MAX_REQUEST_SIZE}")]
    InvalidSize { size: usize },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddrV4,
        #[source]
        source: io::Error,
    },
    #[error("accepting on {addr} failed")]
    Accept {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot spawn a connection thread")]
    Spawn {
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddrV4,
        #[source]
        source: io::Error,
    },
    #[error("transaction {transaction} with {addr} failed")]
    Transaction {
        addr: SocketAddrV4,
        transaction: u64,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RrStats {
    pub transactions: u64,
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// A bound echo server, ready to `run`.
#[derive(Debug)]
pub struct RrServer {
    listener: TcpListener,
    addr: SocketAddr,
}

/// Echoes on `port` on every address until accepting fails.
pub fn rr_server(port: u16) -> Result<(), RrError> {
    RrServer::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?.run()
}

/// Runs request/response transactions of `size` bytes against an echo server for
/// `duration`, over one connection.
pub fn rr_client(
    target: Ipv4Addr,
    port: u16,
    duration: Duration,
    size: usize,
) -> Result<RrStats, RrError> {
    if !(1..=MAX_REQUEST_SIZE).contains(&size) {
        return Err(RrError::InvalidSize { size });
    }
    let addr = SocketAddrV4::new(target, port);
    let connect_error = |source| RrError::Connect { addr, source };
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::V4(addr), IO_TIMEOUT).map_err(connect_error)?;
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(connect_error)?;

    let request = vec![b'r'; size];
    let mut response = vec![0u8; size];
    let mut rtts = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let sent = Instant::now();
        stream
            .write_all(&request)
            .and_then(|()| stream.read_exact(&mut response))
            .map_err(|source| RrError::Transaction {
                addr,
                transaction: rtts.len() as u64,
                source,
            })?;
        rtts.push(sent.elapsed());
    }
    Ok(RrStats::from_rtts(rtts, start.elapsed()))
}

// === impl RrServer ===

impl RrServer {
    pub fn bind(addr: SocketAddrV4) -> Result<Self, RrError> {
        let bind_error = |source| RrError::Bind { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts connections, each echoed on its own thread; returns only on failure.
    pub fn run(self) -> Result<(), RrError> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    thread::Builder::new()
                        .name("lumen-rr echo".to_owned())
                        .spawn(move || echo(stream))
                        .map_err(|source| RrError::Spawn { source })?;
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(source) => {
                    return Err(RrError::Accept {
                        addr: self.addr,
                        source,
                    });
                }
            }
        }
    }
}

/// Writes back whatever arrives, as it arrives, so any request size works; ends with
/// the connection (errors included: they belong to the client's run).
fn echo(mut stream: TcpStream) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut buf = vec![0u8; ECHO_BUF_LEN];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

// === impl RrStats ===

impl RrStats {
    fn from_rtts(mut rtts: Vec<Duration>, elapsed: Duration) -> Self {
        rtts.sort_unstable();
        let seconds = elapsed.as_secs_f64();
        Self {
            transactions: rtts.len() as u64,
            per_second: if seconds > 0.0 {
                rtts.len() as f64 / seconds
            } else {
                0.0
            },
            p50_us: percentile_us(&rtts, 50.0),
            p99_us: percentile_us(&rtts, 99.0),
        }
    }
}

/// Nearest-rank percentile of sorted samples, in microseconds; 0 without samples.
fn percentile_us(sorted: &[Duration], pct: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let rtts: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let stats = RrStats::from_rtts(rtts, Duration::from_secs(2));
        assert_eq!(stats.transactions, 100);
        assert!((stats.per_second - 50.0).abs() < 1e-9);
        assert!((stats.p50_us - 50.0).abs() < 1e-6);
        assert!((stats.p99_us - 99.0).abs() < 1e-6);
        let empty = RrStats::from_rtts(Vec::new(), Duration::ZERO);
        assert_eq!(empty.transactions, 0);
        assert_eq!(empty.p99_us, 0.0);
    }

    #[test]
    fn rejects_bad_sizes() {
        for size in [0, MAX_REQUEST_SIZE + 1] {
            let err = rr_client(Ipv4Addr::LOCALHOST, 9, Duration::from_millis(1), size);
            assert!(matches!(err, Err(RrError::InvalidSize { .. })), "{err:?}");
        }
    }

    #[test]
    fn ping_pong_over_loopback() {
        let server = RrServer::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = server.local_addr().port();
        thread::spawn(move || server.run());
        for size in [1, 4096] {
            let stats =
                rr_client(Ipv4Addr::LOCALHOST, port, Duration::from_millis(300), size).unwrap();
            println!("rr size {size}: {stats:?}");
            assert!(stats.transactions > 10, "{stats:?}");
            assert!(stats.per_second > 30.0, "{stats:?}");
            assert!(
                stats.p50_us > 0.0 && stats.p50_us <= stats.p99_us,
                "{stats:?}"
            );
        }
    }
}
