//! Reachability probes from inside a pod: one request over TCP, UDP, ICMP echo or SCTP
//! INIT, with the reply and round-trip time, and the distinction between "refused",
//! "unreachable" and "nothing came back" that policy tests rely on. Also `transfer`,
//! which pushes a known number of bytes through the server's sink mode.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::num::ParseIntError;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::echo::{self, PROBE_REQUEST, RECEIVED_PREFIX, SINK_REQUEST};
use super::ipv4::{self, Ipv4Packet};
use super::{icmp, nonce, sctp};

/// Payload size of each write in `transfer`: below a 1450-byte pod MTU's TCP payload,
/// like a typical bulk sender's segments.
pub const TRANSFER_WRITE_LEN: usize = 1400;
const IPPROTO_ICMP: u8 = 1;
const ICMP_PAYLOAD: &[u8] = b"lumen-probe";
/// Large enough for any IPv4 packet on a 1500-byte link, with room to spare.
const RAW_BUF_LEN: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Sctp,
}

/// What was probed, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTarget {
    pub addr: Ipv4Addr,
    pub proto: Proto,
    /// 0 for ICMP.
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReply {
    pub rtt: Duration,
    /// The server's answer line without its newline, or "echo reply" / "init-ack".
    pub reply: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("unknown protocol {name:?} (expected tcp, udp, icmp or sctp)")]
    UnknownProto { name: String },
    #[error("invalid port in {input:?}")]
    InvalidPort {
        input: String,
        #[source]
        source: ParseIntError,
    },
    #[error("{input:?} needs a port from 1 to 65535, as in 80/{proto}")]
    MissingPort { input: String, proto: Proto },
    #[error("{input:?}: icmp takes no port")]
    IcmpWithPort { input: String },
    #[error("{target}: no reply within {timeout:?}")]
    Timeout {
        target: ProbeTarget,
        timeout: Duration,
    },
    #[error("{target}: refused")]
    Refused {
        target: ProbeTarget,
        #[source]
        source: io::Error,
    },
    #[error("{target}: unreachable")]
    Unreachable {
        target: ProbeTarget,
        #[source]
        source: io::Error,
    },
    #[error("{target}: cannot {op}")]
    Io {
        target: ProbeTarget,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{target}: unexpected reply {reply:?}")]
    UnexpectedReply { target: ProbeTarget, reply: String },
}

// === impl Proto ===

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = ProbeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "icmp" => Ok(Proto::Icmp),
            "sctp" => Ok(Proto::Sctp),
            _ => Err(ProbeError::UnknownProto { name: s.to_owned() }),
        }
    }
}

// === impl ProbeTarget ===

impl fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            Proto::Icmp => write!(f, "icmp to {}", self.addr),
            proto => write!(f, "{proto} to {}:{}", self.addr, self.port),
        }
    }
}

/// Parses "80/tcp", "81/udp", "80/sctp" or "icmp" (port 0).
pub fn parse_port_proto(s: &str) -> Result<(u16, Proto), ProbeError> {
    let Some((port, proto)) = s.split_once('/') else {
        return match s.parse::<Proto>()? {
            Proto::Icmp => Ok((0, Proto::Icmp)),
            proto => Err(ProbeError::MissingPort {
                input: s.to_owned(),
                proto,
            }),
        };
    };
    let proto = proto.parse::<Proto>()?;
    if proto == Proto::Icmp {
        return Err(ProbeError::IcmpWithPort {
            input: s.to_owned(),
        });
    }
    let port = port
        .parse::<u16>()
        .map_err(|source| ProbeError::InvalidPort {
            input: s.to_owned(),
            source,
        })?;
    if port == 0 {
        return Err(ProbeError::MissingPort {
            input: s.to_owned(),
            proto,
        });
    }
    Ok((port, proto))
}

/// Sends one request to `target` and waits up to `timeout` for the matching reply.
/// `port` is ignored for ICMP. ICMP and SCTP use raw sockets and need CAP_NET_RAW.
/// The round-trip time includes the TCP handshake for TCP.
pub fn probe(
    target: Ipv4Addr,
    proto: Proto,
    port: u16,
    timeout: Duration,
) -> Result<ProbeReply, ProbeError> {
    let target = ProbeTarget {
        addr: target,
        proto,
        port: if proto == Proto::Icmp { 0 } else { port },
    };
    let probe = Probe {
        target,
        timeout,
        start: Instant::now(),
    };
    match proto {
        Proto::Tcp => probe.tcp(),
        Proto::Udp => probe.udp(),
        Proto::Icmp => probe.icmp(),
        Proto::Sctp => probe.sctp(),
    }
}

/// Sends `bytes` bytes to the server's sink mode on `port` and returns the count the
/// server reports having received. `timeout` bounds each socket operation rather than
/// the whole transfer, so large transfers over slow paths still finish.
pub fn transfer(
    target: Ipv4Addr,
    port: u16,
    bytes: usize,
    timeout: Duration,
) -> Result<usize, ProbeError> {
    let probe = Probe {
        target: ProbeTarget {
            addr: target,
            proto: Proto::Tcp,
            port,
        },
        timeout,
        start: Instant::now(),
    };
    let mut stream = probe.tcp_connect()?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|source| probe.io_error("set socket timeouts", source))?;
    let payload = [b'x'; TRANSFER_WRITE_LEN];
    let mut request = SINK_REQUEST.to_vec();
    request.push(b'\n');
    stream
        .write_all(&request)
        .map_err(|source| probe.io_error("send the sink request", source))?;
    let mut left = bytes;
    while left > 0 {
        let len = left.min(TRANSFER_WRITE_LEN);
        stream
            .write_all(&payload[..len])
            .map_err(|source| probe.io_error("send payload", source))?;
        left -= len;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|source| probe.io_error("shut down the write side", source))?;
    let line =
        echo::read_line(&mut stream).map_err(|source| probe.io_error("read the count", source))?;
    let reply = String::from_utf8_lossy(&line.text).into_owned();
    reply
        .strip_prefix(RECEIVED_PREFIX)
        .and_then(|count| count.parse::<usize>().ok())
        .ok_or(ProbeError::UnexpectedReply {
            target: probe.target,
            reply,
        })
}

// === impl Probe ===

/// One probe in flight: its target and its deadline.
#[derive(Debug)]
struct Probe {
    target: ProbeTarget,
    timeout: Duration,
    start: Instant,
}

impl Probe {
    fn tcp(&self) -> Result<ProbeReply, ProbeError> {
        let mut stream = self.tcp_connect()?;
        let remaining = self.remaining()?;
        stream
            .set_read_timeout(Some(remaining))
            .and_then(|()| stream.set_write_timeout(Some(remaining)))
            .map_err(|source| self.io_error("set socket timeouts", source))?;
        stream
            .write_all(PROBE_REQUEST)
            .map_err(|source| self.io_error("send the request", source))?;
        let line = echo::read_line(&mut stream)
            .map_err(|source| self.io_error("read the reply", source))?;
        self.line_reply(&line.text)
    }

    fn tcp_connect(&self) -> Result<TcpStream, ProbeError> {
        let addr = SocketAddr::from((self.target.addr, self.target.port));
        let stream = TcpStream::connect_timeout(&addr, self.timeout)
            .map_err(|source| self.io_error("connect", source))?;
        // Requests are single small writes; don't let Nagle hold them back.
        stream
            .set_nodelay(true)
            .map_err(|source| self.io_error("set TCP_NODELAY", source))?;
        Ok(stream)
    }

    fn udp(&self) -> Result<ProbeReply, ProbeError> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .map_err(|source| self.io_error("bind a udp socket", source))?;
        // Connected, so only the target's datagrams arrive and an ICMP port
        // unreachable surfaces as "refused".
        socket
            .connect((self.target.addr, self.target.port))
            .map_err(|source| self.io_error("connect", source))?;
        socket
            .send(PROBE_REQUEST)
            .map_err(|source| self.io_error("send the request", source))?;
        let mut buf = [0u8; echo::MAX_LINE_LEN];
        loop {
            socket
                .set_read_timeout(Some(self.remaining()?))
                .map_err(|source| self.io_error("set the read timeout", source))?;
            match socket.recv(&mut buf) {
                Ok(n) => {
                    let text = buf[..n].strip_suffix(b"\n").unwrap_or(&buf[..n]);
                    return self.line_reply(text);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(self.io_error("receive the reply", source)),
            }
        }
    }

    fn icmp(&self) -> Result<ProbeReply, ProbeError> {
        let socket = self.raw_socket(Protocol::ICMPV4)?;
        let id = nonce::random_u64() as u16;
        let seq = 1;
        socket
            .send(&icmp::echo_request(id, seq, ICMP_PAYLOAD))
            .map_err(|source| self.io_error("send the echo request", source))?;
        self.await_raw(&socket, |packet| {
            packet.protocol == IPPROTO_ICMP && icmp::is_echo_reply(packet.payload, id, seq)
        })?;
        Ok(self.reply("echo reply"))
    }

    fn sctp(&self) -> Result<ProbeReply, ProbeError> {
        let socket = self.raw_socket(Protocol::from(sctp::IPPROTO_SCTP))?;
        let src_port = nonce::ephemeral_port();
        let tag = nonce::nonzero_u32();
        socket
            .send(&sctp::init_packet(src_port, self.target.port, tag))
            .map_err(|source| self.io_error("send the INIT", source))?;
        let port = self.target.port;
        self.await_raw(&socket, |packet| {
            if packet.protocol != sctp::IPPROTO_SCTP as u8 {
                return false;
            }
            // Our own INIT comes back on loopback and other probes share the socket's
            // view: only an intact INIT-ACK for exactly this exchange counts.
            sctp::parse(packet.payload).is_ok_and(|reply| {
                matches!(reply.first_chunk, sctp::Chunk::InitAck(_))
                    && reply.header.src_port == port
                    && reply.header.dst_port == src_port
                    && reply.header.verification_tag == tag
            })
        })?;
        Ok(self.reply("init-ack"))
    }

    /// A raw IPv4 socket connected to the target, so the kernel filters replies by
    /// source address and `send` needs no address.
    fn raw_socket(&self, protocol: Protocol) -> Result<Socket, ProbeError> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(protocol))
            .map_err(|source| self.io_error("open a raw socket", source))?;
        socket
            .connect(&SockAddr::from(SocketAddrV4::new(self.target.addr, 0)))
            .map_err(|source| self.io_error("connect the raw socket", source))?;
        Ok(socket)
    }

    /// Reads packets (IP header included) until one from the target satisfies
    /// `matches` or the deadline passes.
    fn await_raw(
        &self,
        socket: &Socket,
        matches: impl Fn(&Ipv4Packet<'_>) -> bool,
    ) -> Result<(), ProbeError> {
        let mut buf = [0u8; RAW_BUF_LEN];
        loop {
            socket
                .set_read_timeout(Some(self.remaining()?))
                .map_err(|source| self.io_error("set the read timeout", source))?;
            let n = match (&*socket).read(&mut buf) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(self.io_error("receive the reply", source)),
            };
            if ipv4::parse(&buf[..n])
                .is_some_and(|packet| packet.src == self.target.addr && matches(&packet))
            {
                return Ok(());
            }
        }
    }

    fn line_reply(&self, text: &[u8]) -> Result<ProbeReply, ProbeError> {
        let reply = String::from_utf8_lossy(text).into_owned();
        if reply.is_empty() {
            return Err(ProbeError::UnexpectedReply {
                target: self.target,
                reply,
            });
        }
        Ok(ProbeReply {
            rtt: self.start.elapsed(),
            reply,
        })
    }

    fn reply(&self, reply: &str) -> ProbeReply {
        ProbeReply {
            rtt: self.start.elapsed(),
            reply: reply.to_owned(),
        }
    }

    fn remaining(&self) -> Result<Duration, ProbeError> {
        self.timeout
            .checked_sub(self.start.elapsed())
            .filter(|left| !left.is_zero())
            .ok_or(ProbeError::Timeout {
                target: self.target,
                timeout: self.timeout,
            })
    }

    /// Sorts an I/O failure into what a policy test wants to know.
    fn io_error(&self, op: &'static str, source: io::Error) -> ProbeError {
        let target = self.target;
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ProbeError::Timeout {
                target,
                timeout: self.timeout,
            },
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
                ProbeError::Refused { target, source }
            }
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                ProbeError::Unreachable { target, source }
            }
            _ => ProbeError::Io { target, op, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netio::serve::{self, Counters, ServeConfig, Server};
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::thread;

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// Removes the test's directory even when an assertion fails.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("lumen-netio-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A server on a free loopback port, running on its own thread.
    fn start_server(name: &str, sctp: bool, stats_file: Option<PathBuf>) -> (u16, Arc<Counters>) {
        let server = Server::bind(ServeConfig {
            name: name.to_owned(),
            bind: Ipv4Addr::LOCALHOST,
            ports: vec![0],
            sctp,
            stats_file,
        })
        .unwrap();
        let port = server.ports()[0];
        let counters = server.counters();
        thread::spawn(move || server.run());
        (port, counters)
    }

    fn unused_port() -> u16 {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn raw_sockets_allowed(what: &str) -> bool {
        let allowed = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).is_ok();
        if !allowed {
            println!("skipped {what}: raw sockets need CAP_NET_RAW");
        }
        allowed
    }

    #[test]
    fn parses_port_and_proto() {
        assert_eq!(parse_port_proto("80/tcp").unwrap(), (80, Proto::Tcp));
        assert_eq!(parse_port_proto("81/udp").unwrap(), (81, Proto::Udp));
        assert_eq!(parse_port_proto("80/sctp").unwrap(), (80, Proto::Sctp));
        assert_eq!(parse_port_proto("icmp").unwrap(), (0, Proto::Icmp));
        assert!(matches!(
            parse_port_proto("80/quic"),
            Err(ProbeError::UnknownProto { .. })
        ));
        assert!(matches!(
            parse_port_proto("x/tcp"),
            Err(ProbeError::InvalidPort { .. })
        ));
        assert!(matches!(
            parse_port_proto("70000/tcp"),
            Err(ProbeError::InvalidPort { .. })
        ));
        assert!(matches!(
            parse_port_proto("0/udp"),
            Err(ProbeError::MissingPort { .. })
        ));
        assert!(matches!(
            parse_port_proto("tcp"),
            Err(ProbeError::MissingPort { .. })
        ));
        assert!(matches!(
            parse_port_proto("8/icmp"),
            Err(ProbeError::IcmpWithPort { .. })
        ));
        for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp, Proto::Sctp] {
            assert_eq!(proto.to_string().parse::<Proto>().unwrap(), proto);
        }
    }

    #[test]
    fn tcp_and_udp_probes_are_answered_and_counted() {
        let dir = TempDir::new("tcp-udp");
        let stats_file = dir.0.join("stats.json");
        let (port, counters) = start_server("pod-a", false, Some(stats_file.clone()));
        assert_eq!(
            serve::read_stats(&stats_file)
                .unwrap()
                .requests(Proto::Tcp, port),
            0
        );

        for proto in [Proto::Tcp, Proto::Udp] {
            let reply = probe(Ipv4Addr::LOCALHOST, proto, port, TIMEOUT).unwrap();
            assert!(
                reply
                    .reply
                    .starts_with("lumen-echo name=pod-a peer=127.0.0.1:"),
                "{reply:?}"
            );
            assert!(
                reply
                    .reply
                    .ends_with(&format!(" proto={proto} port={port}")),
                "{reply:?}"
            );
            assert!(reply.rtt < TIMEOUT);
            assert_eq!(counters.get(proto, port), 1);
        }
        let stats = serve::read_stats(&stats_file).unwrap();
        assert_eq!(stats.name, "pod-a");
        assert_eq!(stats.requests(Proto::Tcp, port), 1);
        assert_eq!(stats.requests(Proto::Udp, port), 1);
        assert_eq!(stats, counters.snapshot());
    }

    #[test]
    fn transfer_counts_one_mebibyte() {
        let (port, counters) = start_server("sink", false, None);
        let sent = 1 << 20;
        assert_eq!(
            transfer(Ipv4Addr::LOCALHOST, port, sent, TIMEOUT).unwrap(),
            sent
        );
        assert_eq!(transfer(Ipv4Addr::LOCALHOST, port, 0, TIMEOUT).unwrap(), 0);
        assert_eq!(counters.get(Proto::Tcp, port), 2);
    }

    #[test]
    fn closed_ports_are_refused() {
        let port = unused_port();
        for proto in [Proto::Tcp, Proto::Udp] {
            let err = probe(Ipv4Addr::LOCALHOST, proto, port, TIMEOUT).unwrap_err();
            assert!(
                matches!(err, ProbeError::Refused { .. }),
                "{proto}: {err:?}"
            );
        }
    }

    #[test]
    fn icmp_echo_on_loopback() {
        if !raw_sockets_allowed("icmp probe") {
            return;
        }
        let reply = probe(Ipv4Addr::LOCALHOST, Proto::Icmp, 0, TIMEOUT).unwrap();
        assert_eq!(reply.reply, "echo reply");
    }

    #[test]
    fn sctp_init_is_answered_by_the_responder() {
        if !raw_sockets_allowed("sctp probe") {
            return;
        }
        let (port, counters) = start_server("pod-s", true, None);
        let reply = probe(Ipv4Addr::LOCALHOST, Proto::Sctp, port, TIMEOUT).unwrap();
        assert_eq!(reply.reply, "init-ack");
        assert_eq!(counters.get(Proto::Sctp, port), 1);

        // Nobody answers INITs to another port (no kernel SCTP here, or it aborts).
        let other = unused_port();
        let err = probe(
            Ipv4Addr::LOCALHOST,
            Proto::Sctp,
            other,
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
        assert_eq!(counters.get(Proto::Sctp, port), 1);
    }
}
