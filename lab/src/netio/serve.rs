//! The per-pod echo server: answers TCP and UDP on a few ports with a line naming the
//! server and the peer it saw, answers SCTP INITs to those ports with an INIT-ACK
//! through a raw socket, and counts every request per protocol and port — optionally
//! in a JSON stats file, so a test can tell "blocked before the server" from
//! "answered but the reply was lost".

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::echo::{self, RECEIVED_PREFIX, SINK_REQUEST};
use super::ipv4;
use super::probe::Proto;
use super::sctp;

pub const DEFAULT_PORTS: [u16; 2] = [80, 81];
/// How long a TCP client may take to send each read's worth of its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
const RAW_BUF_LEN: usize = 2048;
const SINK_BUF_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Echoed in every answer, so a probe knows which pod answered.
    pub name: String,
    pub bind: Ipv4Addr,
    /// Port 0 lets the kernel pick a free TCP port, which UDP and SCTP then share.
    pub ports: Vec<u16>,
    /// Answer SCTP INITs through a raw socket (needs CAP_NET_RAW).
    pub sctp: bool,
    /// Rewritten (atomically) after every request.
    pub stats_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("no ports to serve")]
    NoPorts,
    #[error("cannot bind {proto} {addr}")]
    Bind {
        proto: Proto,
        addr: SocketAddrV4,
        #[source]
        source: io::Error,
    },
    #[error("cannot open a raw sctp socket on {addr}")]
    RawSocket {
        addr: Ipv4Addr,
        #[source]
        source: io::Error,
    },
    #[error("the sctp responder on {addr} failed")]
    SctpResponder {
        addr: Ipv4Addr,
        #[source]
        source: io::Error,
    },
    #[error("{proto} listener on port {port} failed")]
    Listener {
        proto: Proto,
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("cannot spawn a {what} thread")]
    Spawn {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode server stats")]
    EncodeStats {
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write server stats to {path}")]
    WriteStats {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read server stats from {path}")]
    ReadStats {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot decode server stats in {path}")]
    DecodeStats {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("every listener thread stopped")]
    ListenersGone,
}

/// The stats file's content: requests seen per "proto/port" key (e.g. "tcp/80").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeStats {
    pub name: String,
    pub requests: BTreeMap<String, u64>,
}

/// Requests seen per protocol and port, shared by the listener threads.
#[derive(Debug)]
pub struct Counters {
    name: String,
    stats_file: Option<PathBuf>,
    counts: Mutex<BTreeMap<(Proto, u16), u64>>,
}

/// A bound server, ready to `run`.
#[derive(Debug)]
pub struct Server {
    name: String,
    bind: Ipv4Addr,
    ports: Vec<u16>,
    tcp: Vec<(u16, TcpListener)>,
    udp: Vec<(u16, UdpSocket)>,
    sctp: Option<Socket>,
    counters: Arc<Counters>,
}

/// Binds everything in `config` and serves until a listener fails.
pub fn serve(config: ServeConfig) -> Result<(), ServeError> {
    Server::bind(config)?.run()
}

/// Reads a stats file written by a server.
pub fn read_stats(path: &Path) -> Result<ServeStats, ServeError> {
    let bytes = fs::read(path).map_err(|source| ServeError::ReadStats {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| ServeError::DecodeStats {
        path: path.to_path_buf(),
        source,
    })
}

// === impl ServeConfig ===

impl ServeConfig {
    /// Ports 80 and 81 on every address, SCTP on, no stats file.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            bind: Ipv4Addr::UNSPECIFIED,
            ports: DEFAULT_PORTS.to_vec(),
            sctp: true,
            stats_file: None,
        }
    }
}

// === impl ServeStats ===

impl ServeStats {
    pub fn key(proto: Proto, port: u16) -> String {
        format!("{proto}/{port}")
    }

    pub fn requests(&self, proto: Proto, port: u16) -> u64 {
        self.requests
            .get(&Self::key(proto, port))
            .copied()
            .unwrap_or(0)
    }
}

// === impl Counters ===

impl Counters {
    /// Starts every served protocol/port at zero and writes the first stats file, so
    /// a reader sees zeros rather than a missing file before the first request.
    fn new(
        name: String,
        keys: impl IntoIterator<Item = (Proto, u16)>,
        stats_file: Option<PathBuf>,
    ) -> Result<Self, ServeError> {
        let counters = Self {
            name,
            stats_file,
            counts: Mutex::new(keys.into_iter().map(|key| (key, 0)).collect()),
        };
        counters.write_stats(&counters.lock())?;
        Ok(counters)
    }

    pub fn get(&self, proto: Proto, port: u16) -> u64 {
        self.lock().get(&(proto, port)).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> ServeStats {
        self.stats(&self.lock())
    }

    /// Counts one request and rewrites the stats file while still holding the lock, so
    /// the file never goes backwards.
    fn record(&self, proto: Proto, port: u16) -> Result<(), ServeError> {
        let mut counts = self.lock();
        *counts.entry((proto, port)).or_insert(0) += 1;
        self.write_stats(&counts)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Proto, u16), u64>> {
        // A panicking connection thread cannot leave a half-updated counter map.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self, counts: &BTreeMap<(Proto, u16), u64>) -> ServeStats {
        ServeStats {
            name: self.name.clone(),
            requests: counts
                .iter()
                .map(|(&(proto, port), &n)| (ServeStats::key(proto, port), n))
                .collect(),
        }
    }

    fn write_stats(&self, counts: &BTreeMap<(Proto, u16), u64>) -> Result<(), ServeError> {
        let Some(path) = &self.stats_file else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(&self.stats(counts))
            .map_err(|source| ServeError::EncodeStats { source })?;
        // Write-then-rename: a reader sees the old file or the new one, never half.
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        fs::write(&tmp, json)
            .and_then(|()| fs::rename(&tmp, path))
            .map_err(|source| ServeError::WriteStats {
                path: path.clone(),
                source,
            })
    }
}

// === impl Server ===

impl Server {
    pub fn bind(config: ServeConfig) -> Result<Self, ServeError> {
        if config.ports.is_empty() {
            return Err(ServeError::NoPorts);
        }
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        let mut ports = Vec::new();
        for &wanted in &config.ports {
            let addr = SocketAddrV4::new(config.bind, wanted);
            let bind_error = |proto, addr, source| ServeError::Bind {
                proto,
                addr,
                source,
            };
            let listener =
                TcpListener::bind(addr).map_err(|source| bind_error(Proto::Tcp, addr, source))?;
            let port = listener
                .local_addr()
                .map_err(|source| bind_error(Proto::Tcp, addr, source))?
                .port();
            let addr = SocketAddrV4::new(config.bind, port);
            let socket =
                UdpSocket::bind(addr).map_err(|source| bind_error(Proto::Udp, addr, source))?;
            tcp.push((port, listener));
            udp.push((port, socket));
            ports.push(port);
        }
        let sctp = config.sctp.then(|| sctp_socket(config.bind)).transpose()?;
        let protos: &[Proto] = if sctp.is_some() {
            &[Proto::Tcp, Proto::Udp, Proto::Sctp]
        } else {
            &[Proto::Tcp, Proto::Udp]
        };
        let keys = ports
            .iter()
            .flat_map(|&port| protos.iter().map(move |&proto| (proto, port)));
        let counters = Counters::new(config.name.clone(), keys, config.stats_file)?;
        Ok(Self {
            name: config.name,
            bind: config.bind,
            ports,
            tcp,
            udp,
            sctp,
            counters: Arc::new(counters),
        })
    }

    /// The ports actually bound (differs from the config where it asked for 0).
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Serves on one thread per listener; returns only when one of them fails.
    pub fn run(self) -> Result<(), ServeError> {
        let (fatal_tx, fatal_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            name: self.name,
            counters: self.counters,
            fatal: fatal_tx,
        });
        for (port, listener) in self.tcp {
            let shared = Arc::clone(&shared);
            spawn("tcp listener", move || {
                let err = tcp_accept_loop(&listener, port, &shared);
                shared.fail(err);
            })?;
        }
        for (port, socket) in self.udp {
            let shared = Arc::clone(&shared);
            spawn("udp listener", move || {
                let err = udp_loop(&socket, port, &shared);
                shared.fail(err);
            })?;
        }
        if let Some(socket) = self.sctp {
            let ports = self.ports;
            let bind = self.bind;
            let responder = Arc::clone(&shared);
            spawn("sctp responder", move || {
                let err = sctp_loop(&socket, bind, &ports, &responder);
                responder.fail(err);
            })?;
        }
        // The sender lives in `Shared`; once our handle is gone, a closed channel means
        // every thread has ended without reporting (they only end by panicking).
        drop(shared);
        Err(fatal_rx.recv().unwrap_or(ServeError::ListenersGone))
    }
}

/// What every server thread needs.
#[derive(Debug)]
struct Shared {
    name: String,
    counters: Arc<Counters>,
    fatal: Sender<ServeError>,
}

impl Shared {
    fn fail(&self, err: ServeError) {
        // If `run` is no longer listening, the server is already going down.
        let _ = self.fatal.send(err);
    }
}

fn spawn(what: &'static str, body: impl FnOnce() + Send + 'static) -> Result<(), ServeError> {
    thread::Builder::new()
        .name(format!("lumen-serve {what}"))
        .spawn(body)
        .map(drop)
        .map_err(|source| ServeError::Spawn { what, source })
}

fn sctp_socket(bind: Ipv4Addr) -> Result<Socket, ServeError> {
    let raw_error = |source| ServeError::RawSocket { addr: bind, source };
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(sctp::IPPROTO_SCTP)),
    )
    .map_err(raw_error)?;
    // On a raw socket, bind filters arriving packets by destination address.
    socket
        .bind(&SockAddr::from(SocketAddrV4::new(bind, 0)))
        .map_err(raw_error)?;
    Ok(socket)
}

// === TCP ===

fn tcp_accept_loop(listener: &TcpListener, port: u16, shared: &Arc<Shared>) -> ServeError {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let conn = Arc::clone(shared);
                let spawned = spawn("tcp connection", move || {
                    if let Err(err) = serve_connection(stream, peer, port, &conn) {
                        conn.fail(err);
                    }
                });
                if let Err(err) = spawned {
                    return err;
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(source) => {
                return ServeError::Listener {
                    proto: Proto::Tcp,
                    port,
                    source,
                };
            }
        }
    }
}

/// Answers one connection. Errors on the connection itself (timeouts, resets) are the
/// client's failure and only end the connection; only a stats failure is returned.
fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    shared: &Shared,
) -> Result<(), ServeError> {
    if stream.set_read_timeout(Some(READ_TIMEOUT)).is_err() {
        return Ok(());
    }
    let Ok(line) = echo::read_line(&mut stream) else {
        return Ok(());
    };
    shared.counters.record(Proto::Tcp, port)?;
    let answer = if line.text == SINK_REQUEST {
        let Ok(received) = drain(&mut stream) else {
            return Ok(());
        };
        format!("{RECEIVED_PREFIX}{}\n", line.rest.len() + received)
    } else {
        echo::reply_line(&shared.name, peer, Proto::Tcp, port)
    };
    // The client may already be gone; nothing is left to do for it either way.
    let _ = stream.write_all(answer.as_bytes());
    Ok(())
}

/// Reads to EOF, returning the byte count.
fn drain(stream: &mut TcpStream) -> io::Result<usize> {
    let mut buf = vec![0u8; SINK_BUF_LEN];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

// === UDP ===

fn udp_loop(socket: &UdpSocket, port: u16, shared: &Shared) -> ServeError {
    let mut buf = [0u8; echo::MAX_LINE_LEN];
    loop {
        let peer = match socket.recv_from(&mut buf) {
            Ok((_, peer)) => peer,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return ServeError::Listener {
                    proto: Proto::Udp,
                    port,
                    source,
                };
            }
        };
        if let Err(err) = shared.counters.record(Proto::Udp, port) {
            return err;
        }
        let answer = echo::reply_line(&shared.name, peer, Proto::Udp, port);
        // A refused or filtered reply is the client's loss, not the server's.
        let _ = socket.send_to(answer.as_bytes(), peer);
    }
}

// === SCTP ===

fn sctp_loop(socket: &Socket, bind: Ipv4Addr, ports: &[u16], shared: &Shared) -> ServeError {
    let mut buf = [0u8; RAW_BUF_LEN];
    loop {
        let n = match (&*socket).read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return ServeError::SctpResponder { addr: bind, source },
        };
        let Some(packet) = ipv4::parse(&buf[..n]) else {
            continue;
        };
        // The raw socket sees every SCTP packet, our own INIT-ACKs included: answer
        // only intact INITs to our ports.
        let Ok(init) = sctp::parse(packet.payload) else {
            continue;
        };
        let port = init.header.dst_port;
        if !matches!(init.first_chunk, sctp::Chunk::Init(_)) || !ports.contains(&port) {
            continue;
        }
        let Some(ack) = sctp::init_ack_for(packet.payload) else {
            continue;
        };
        if let Err(err) = shared.counters.record(Proto::Sctp, port) {
            return err;
        }
        // Without IP_HDRINCL the kernel writes the IP header and picks the source.
        let _ = socket.send_to(&ack, &SockAddr::from(SocketAddrV4::new(packet.src, 0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(stats_file: Option<PathBuf>) -> ServeConfig {
        ServeConfig {
            bind: Ipv4Addr::LOCALHOST,
            ports: vec![0],
            sctp: false,
            stats_file,
            ..ServeConfig::new("pod-z")
        }
    }

    #[test]
    fn defaults_serve_80_and_81_everywhere() {
        let config = ServeConfig::new("pod-z");
        assert_eq!(config.ports, vec![80, 81]);
        assert_eq!(config.bind, Ipv4Addr::UNSPECIFIED);
        assert!(config.sctp);
    }

    #[test]
    fn no_ports_is_an_error() {
        let err = Server::bind(ServeConfig {
            ports: Vec::new(),
            ..config(None)
        })
        .unwrap_err();
        assert!(matches!(err, ServeError::NoPorts), "{err:?}");
    }

    #[test]
    fn stats_file_starts_at_zero() {
        let path =
            std::env::temp_dir().join(format!("lumen-serve-stats-{}.json", std::process::id()));
        let server = Server::bind(config(Some(path.clone()))).unwrap();
        let port = server.ports()[0];
        let stats = read_stats(&path);
        std::fs::remove_file(&path).unwrap();
        let stats = stats.unwrap();
        assert_eq!(stats.name, "pod-z");
        let keys: Vec<&str> = stats.requests.keys().map(String::as_str).collect();
        assert_eq!(keys, [format!("tcp/{port}"), format!("udp/{port}")]);
        assert!(stats.requests.values().all(|&n| n == 0));
        assert_eq!(stats, server.counters().snapshot());
    }

    #[test]
    fn unwritable_stats_file_fails_bind() {
        let path = PathBuf::from("/nonexistent-lumen-dir/stats.json");
        let err = Server::bind(config(Some(path))).unwrap_err();
        assert!(matches!(err, ServeError::WriteStats { .. }), "{err:?}");
    }
}
