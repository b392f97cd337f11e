//! One collector's transport session, as an explicit state machine (`State` +
//! `Task::step`): open the socket or connect (TCP, with exponential backoff), send the
//! templates, then drain the collector's queue into messages, re-send templates on
//! schedule (UDP), send the statistics record every `stats_interval`, and reconnect
//! when a TCP connection breaks. On shutdown it sends what is queued and a last
//! statistics record, then closes.
//!
//! UDP never reconnects: a failed send loses that message's records (counted) and
//! the session goes on. TCP loses the records of a write that failed (the collector
//! may have seen part of it) and keeps the rest queued for the next connection, where
//! sequence numbers start again from 0 (RFC 7011 §10.4.2).

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{info, warn};

use super::config::{Collector, Transport};
use super::encode::{self, Header, MESSAGE_HEADER_LEN, ReliabilityStats};
use super::shared::{Batch, CollectorShared, Shared, now_secs};

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages per `sendmmsg` call.
const UDP_BATCH: usize = 64;
/// Bytes per TCP write.
const TCP_WRITE: usize = 64 * 1024;

/// Where the session is.
#[derive(Debug)]
enum State {
    /// Open the UDP socket or connect the TCP stream.
    Connecting,
    /// Wait before the next connection attempt.
    Backoff(Duration),
    /// The transport session is up and templates have been sent.
    Connected(Session),
    /// Shut down.
    Done,
}

#[derive(Debug)]
enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// One transport session.
#[derive(Debug)]
struct Session {
    conn: Conn,
    /// Data records sent in this session so far (mod 2^32): the next message's
    /// sequence number.
    sequence: u32,
    next_templates: Instant,
    next_stats: Instant,
}

/// What woke a connected session.
enum Event {
    Shutdown,
    Queued,
    Templates,
    Stats,
    Closed(io::Error),
}

/// Run the collector `index` of `shared` until shutdown.
pub(crate) async fn run(shared: Arc<Shared>, index: usize, shutdown: watch::Receiver<bool>) {
    let mut task = Task {
        shared,
        index,
        shutdown,
        backoff: INITIAL_BACKOFF,
        ever_connected: false,
        failing: false,
        buf: Vec::new(),
    };
    let mut state = State::Connecting;
    loop {
        state = task.step(state).await;
        if matches!(state, State::Done) {
            break;
        }
    }
}

#[derive(Debug)]
struct Task {
    shared: Arc<Shared>,
    index: usize,
    shutdown: watch::Receiver<bool>,
    /// The wait after the next failed connection attempt.
    backoff: Duration,
    ever_connected: bool,
    /// Connection attempts are failing (log the first failure only).
    failing: bool,
    /// Message scratch space.
    buf: Vec<u8>,
}

impl Task {
    async fn step(&mut self, state: State) -> State {
        match state {
            State::Connecting => self.connect().await,
            State::Backoff(delay) => self.wait(delay).await,
            State::Connected(session) => self.serve(session).await,
            State::Done => State::Done,
        }
    }

    fn me(&self) -> &CollectorShared {
        &self.shared.collectors[self.index]
    }

    fn collector(&self) -> Collector {
        self.me().collector
    }

    /// Shutdown was asked for, or the exporter handle is gone.
    fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.shutdown.has_changed().is_err()
    }

    async fn connect(&mut self) -> State {
        let stopping = self.stopping();
        let collector = self.collector();
        let opened = match timeout(CONNECT_TIMEOUT, open(collector)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        };
        match opened {
            Ok(conn) => {
                let counters = &self.me().counters;
                counters.connected.store(true, Relaxed);
                if self.ever_connected {
                    counters.reconnects.fetch_add(1, Relaxed);
                }
                self.ever_connected = true;
                self.failing = false;
                self.backoff = INITIAL_BACKOFF;
                info!(%collector, "IPFIX session started");
                let now = Instant::now();
                let mut session = Session {
                    conn,
                    sequence: 0,
                    next_templates: now + self.shared.config.template_refresh,
                    next_stats: now + self.shared.config.stats_interval,
                };
                match self.send_templates(&mut session).await {
                    Ok(()) => {
                        // Records may have queued up while disconnected.
                        self.me().ready.notify_one();
                        State::Connected(session)
                    }
                    Err(err) => self.broken(err),
                }
            }
            Err(err) => {
                if !self.failing {
                    warn!(%collector, error = %err, "cannot reach IPFIX collector; retrying");
                    self.failing = true;
                }
                self.me().counters.set_error(format!("connect: {err}"));
                if stopping {
                    self.me().lose_queued();
                    return State::Done;
                }
                let delay = self.backoff.min(self.shared.config.reconnect_backoff_max);
                self.backoff = (delay * 2).min(self.shared.config.reconnect_backoff_max);
                State::Backoff(delay)
            }
        }
    }

    /// Wait out the backoff; on shutdown, go straight to one last attempt.
    async fn wait(&mut self, delay: Duration) -> State {
        if !self.stopping() {
            tokio::select! {
                _ = sleep(delay) => {}
                _ = self.shutdown.changed() => {}
            }
        }
        State::Connecting
    }

    async fn serve(&mut self, mut session: Session) -> State {
        if self.stopping() {
            return self.finish(session).await;
        }
        let shared = Arc::clone(&self.shared);
        let me = &shared.collectors[self.index];
        let udp = matches!(session.conn, Conn::Udp(_));
        // Timers before the queue, so that a queue that never empties cannot starve
        // them.
        let event = tokio::select! {
            biased;
            _ = self.shutdown.changed() => Event::Shutdown,
            _ = sleep_until(session.next_stats) => Event::Stats,
            _ = sleep_until(session.next_templates), if udp => Event::Templates,
            err = closed_by_peer(&session.conn) => Event::Closed(err),
            _ = me.ready.notified() => Event::Queued,
        };
        let result = match event {
            Event::Shutdown => return self.finish(session).await,
            Event::Queued => self.send_queued(&mut session).await,
            Event::Templates => self.send_templates(&mut session).await,
            Event::Stats => self.send_stats(&mut session).await,
            Event::Closed(err) => Err(err),
        };
        match result {
            Ok(()) => State::Connected(session),
            Err(err) => self.broken(err),
        }
    }

    /// The TCP connection failed: reconnect (or stop, on shutdown).
    fn broken(&mut self, err: io::Error) -> State {
        let collector = self.collector();
        warn!(%collector, error = %err, "IPFIX session broken; reconnecting");
        let me = self.me();
        me.counters.connected.store(false, Relaxed);
        me.counters.set_error(format!("send: {err}"));
        if self.stopping() {
            me.lose_queued();
            return State::Done;
        }
        State::Connecting
    }

    /// Send what is queued and a last statistics record, then close.
    async fn finish(&mut self, mut session: Session) -> State {
        let result = async {
            // Nothing new is queued once shutdown has begun, so this ends.
            while self.me().buffered() > 0 {
                self.send_queued(&mut session).await?;
            }
            self.send_stats(&mut session).await?;
            if let Conn::Tcp(stream) = &mut session.conn {
                stream.shutdown().await?;
            }
            Ok::<_, io::Error>(())
        }
        .await;
        let me = self.me();
        if let Err(err) = result {
            me.counters.set_error(format!("send: {err}"));
            me.lose_queued();
        }
        me.counters.connected.store(false, Relaxed);
        info!(collector = %me.collector, "IPFIX session closed");
        State::Done
    }

    fn header(&self, sequence_number: u32) -> Header {
        Header {
            export_time: now_secs(),
            sequence_number,
            observation_domain_id: self.shared.config.observation_domain_id,
        }
    }

    async fn send_templates(&mut self, session: &mut Session) -> io::Result<()> {
        session.next_templates = Instant::now() + self.shared.config.template_refresh;
        self.buf.clear();
        let header = self.header(session.sequence);
        encode::write_template_message(&mut self.buf, header, self.shared.config.enterprise_number)
            .map_err(io::Error::other)?;
        if self.send_buf(session).await? {
            self.me().counters.templates_sent.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    async fn send_stats(&mut self, session: &mut Session) -> io::Result<()> {
        session.next_stats = Instant::now() + self.shared.config.stats_interval;
        let stats = self.reliability_stats();
        self.buf.clear();
        let header = self.header(session.sequence);
        encode::write_stats_message(&mut self.buf, header, &stats).map_err(io::Error::other)?;
        if self.send_buf(session).await? {
            // The statistics record is a data record too.
            session.sequence = session.sequence.wrapping_add(1);
        }
        Ok(())
    }

    fn reliability_stats(&self) -> ReliabilityStats {
        let c = &self.me().counters;
        let up = &self.shared.upstream;
        let first = [c.lost.first_ms.load(Relaxed), up.first_ms.load(Relaxed)]
            .into_iter()
            .filter(|&t| t != 0)
            .min()
            .unwrap_or(0);
        ReliabilityStats {
            exporting_process_id: std::process::id(),
            not_sent_flows: c.lost.records.load(Relaxed) + up.records.load(Relaxed),
            not_sent_packets: c.lost.packets.load(Relaxed),
            not_sent_octets: c.lost.octets.load(Relaxed),
            first_not_sent_ms: first,
            last_not_sent_ms: c.lost.last_ms.load(Relaxed).max(up.last_ms.load(Relaxed)),
            exported_messages: c.messages_sent.load(Relaxed),
            exported_flow_records: c.records_sent.load(Relaxed),
            exported_octets: c.bytes_sent.load(Relaxed),
        }
    }

    /// Send the message in `buf`. Ok(false): a UDP send failed (recorded, not fatal).
    async fn send_buf(&mut self, session: &mut Session) -> io::Result<bool> {
        let result = match &mut session.conn {
            Conn::Udp(socket) => socket.send(&self.buf).await.map(drop),
            Conn::Tcp(stream) => stream.write_all(&self.buf).await,
        };
        let me = self.me();
        match result {
            Ok(()) => {
                me.counters.sent(self.buf.len(), 0);
                Ok(true)
            }
            Err(err) if matches!(session.conn, Conn::Udp(_)) => {
                me.counters.set_error(format!("send: {err}"));
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    async fn send_queued(&mut self, session: &mut Session) -> io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let me = &shared.collectors[self.index];
        let batches = me.take_all();
        if batches.is_empty() {
            return Ok(());
        }
        let domain = shared.config.observation_domain_id;
        match &mut session.conn {
            Conn::Udp(socket) => {
                send_udp(me, socket, &mut session.sequence, batches, domain).await;
                Ok(())
            }
            Conn::Tcp(stream) => {
                send_tcp(
                    me,
                    stream,
                    &mut session.sequence,
                    batches,
                    domain,
                    &mut self.buf,
                )
                .await
            }
        }
    }
}

async fn open(collector: Collector) -> io::Result<Conn> {
    match collector.transport {
        Transport::Udp => {
            let any: SocketAddr = match collector.addr {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = UdpSocket::bind(any).await?;
            socket.connect(collector.addr).await?;
            Ok(Conn::Udp(socket))
        }
        Transport::Tcp => {
            let stream = TcpStream::connect(collector.addr).await?;
            // Statistics records are small and should not wait for Nagle.
            stream.set_nodelay(true)?;
            Ok(Conn::Tcp(stream))
        }
    }
}

/// Resolves when the collector closes the TCP connection (collectors send nothing,
/// so readable means closed); never for UDP.
async fn closed_by_peer(conn: &Conn) -> io::Error {
    let Conn::Tcp(stream) = conn else {
        return std::future::pending().await;
    };
    let mut scratch = [0; 256];
    loop {
        if let Err(err) = stream.readable().await {
            return err;
        }
        match stream.try_read(&mut scratch) {
            Ok(0) => {
                return io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "collector closed the connection",
                );
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return err,
        }
    }
}

/// Send sets as messages with `sendmmsg`, many per system call. A message that fails
/// is lost (counted) and does not advance the sequence number.
async fn send_udp(
    me: &CollectorShared,
    socket: &UdpSocket,
    sequence: &mut u32,
    mut batches: VecDeque<Arc<Batch>>,
    domain: u32,
) {
    let pending = batches.make_contiguous();
    let mut next = 0;
    while next < pending.len() {
        let chunk = &pending[next..pending.len().min(next + UDP_BATCH)];
        let export_time = now_secs();
        let mut headers = [[0u8; MESSAGE_HEADER_LEN]; UDP_BATCH];
        let mut seq = *sequence;
        for (header, batch) in headers.iter_mut().zip(chunk) {
            let len = (MESSAGE_HEADER_LEN + batch.set.len()) as u16;
            *header = encode::message_header(
                len,
                Header {
                    export_time,
                    sequence_number: seq,
                    observation_domain_id: domain,
                },
            );
            seq = seq.wrapping_add(batch.records);
        }
        let result = match socket.writable().await {
            Ok(()) => socket.try_io(Interest::WRITABLE, || {
                sendmmsg(socket.as_raw_fd(), &headers[..chunk.len()], chunk)
            }),
            Err(err) => Err(err),
        };
        match result {
            Ok(sent) if sent > 0 => {
                for batch in &chunk[..sent] {
                    me.counters
                        .sent(MESSAGE_HEADER_LEN + batch.set.len(), batch.records);
                    *sequence = sequence.wrapping_add(batch.records);
                }
                next += sent;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            failed => {
                let err = failed
                    .err()
                    .unwrap_or_else(|| io::Error::other("sendmmsg sent nothing"));
                me.counters.set_error(format!("send: {err}"));
                me.lose([&chunk[0]]);
                next += 1;
            }
        }
    }
}

/// `sendmmsg(2)`: each message is a header and a shared set, gathered from two
/// buffers. Returns how many messages were sent.
fn sendmmsg(
    fd: RawFd,
    headers: &[[u8; MESSAGE_HEADER_LEN]],
    sets: &[Arc<Batch>],
) -> io::Result<usize> {
    let n = headers.len().min(sets.len()).min(UDP_BATCH);
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iovecs = [[empty, empty]; UDP_BATCH];
    for ((iov, header), batch) in iovecs.iter_mut().zip(headers).zip(sets).take(n) {
        // The kernel only reads through these pointers (sendmmsg does not write).
        iov[0] = libc::iovec {
            iov_base: header.as_ptr() as *mut libc::c_void,
            iov_len: header.len(),
        };
        iov[1] = libc::iovec {
            iov_base: batch.set.as_ptr() as *mut libc::c_void,
            iov_len: batch.set.len(),
        };
    }
    // SAFETY: mmsghdr is plain data for which all-zero is valid (null pointers, zero
    // lengths: no name, no control data).
    let mut msgs: [libc::mmsghdr; UDP_BATCH] = unsafe { std::mem::zeroed() };
    for (msg, iov) in msgs.iter_mut().zip(iovecs.iter_mut()).take(n) {
        msg.msg_hdr.msg_iov = iov.as_mut_ptr();
        msg.msg_hdr.msg_iovlen = 2;
    }
    // SAFETY: `msgs[..n]` point at `iovecs[..n]`, which point at `headers` and the
    // sets; all outlive the call, and the kernel only reads them (and writes each
    // mmsghdr's msg_len). The socket is connected, so no address is needed.
    let sent = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Send sets as messages over TCP, many per write. If a write fails, its sets are
/// lost (the collector may have read part of them) and the rest go back to the queue.
async fn send_tcp(
    me: &CollectorShared,
    stream: &mut TcpStream,
    sequence: &mut u32,
    mut batches: VecDeque<Arc<Batch>>,
    domain: u32,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    while !batches.is_empty() {
        buf.clear();
        let export_time = now_secs();
        let mut seq = *sequence;
        let mut n = 0;
        while let Some(batch) = batches.get(n)
            && (n == 0 || buf.len() + MESSAGE_HEADER_LEN + batch.set.len() <= TCP_WRITE)
        {
            let len = (MESSAGE_HEADER_LEN + batch.set.len()) as u16;
            let header = Header {
                export_time,
                sequence_number: seq,
                observation_domain_id: domain,
            };
            buf.extend_from_slice(&encode::message_header(len, header));
            buf.extend_from_slice(&batch.set);
            seq = seq.wrapping_add(batch.records);
            n += 1;
        }
        if let Err(err) = stream.write_all(buf).await {
            me.lose(batches.range(..n));
            me.requeue_front(batches.drain(n..));
            return Err(err);
        }
        for batch in batches.drain(..n) {
            me.counters
                .sent(MESSAGE_HEADER_LEN + batch.set.len(), batch.records);
        }
        *sequence = seq;
    }
    Ok(())
}
