//! The export benchmark: IPFIX flow records encoded and sent to a UDP sink on
//! loopback, per CPU-second of the exporting process. Three senders over the same
//! realistic flows and the same 1400-byte messages:
//!
//! - Lumen's encoder (`encode::write_message`), one `send` per message;
//! - ipfixrw's writer, one `send` per message: the baseline (it writes the same bytes,
//!   which the exporter's tests check);
//! - the whole `IpfixExporter`: `export()` on the caller's thread, a tokio task
//!   sending with `sendmmsg`. This is the production path, judged against the target.
//!
//! CPU time is the process's (`getrusage(RUSAGE_SELF)`, user + system) minus the sink
//! thread's own (`RUSAGE_THREAD`): encoding, the system calls and loopback delivery
//! count, the receiver's reads do not. Needs no root and creates nothing outside the
//! process.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use lumen_api::Flow;
use lumen_exporter::ipfix::encode::{self, Header, MESSAGE_HEADER_LEN, SET_HEADER_LEN};
use lumen_exporter::ipfix::ie::DEFAULT_LUMEN_PEN;
use lumen_exporter::ipfix::test_util::{ReferenceEncoder, numbered_flow};
use lumen_exporter::{IpfixConfig, IpfixExporter};

use super::report::{Verdict, print_verdicts, ratio};
use super::stats::median;

/// Records per CPU-second the exporter must reach.
const TARGET: f64 = 1_000_000.0;
/// The exporter's default UDP message size.
const MESSAGE_SIZE: usize = 1400;
/// Distinct flows cycled through.
const DISTINCT_FLOWS: u32 = 1000;
/// The exporter's queue is kept below this many records, so none is lost.
const PIPELINE_BACKLOG: u64 = 100_000;
/// ipfixrw is slow: it gets this fraction of the records, for the same rate figure.
const BASELINE_SHARE: u64 = 10;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Records per run for Lumen's senders.
    pub records: u64,
    pub runs: usize,
}

/// One sender's run.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    records: u64,
    cpu: Duration,
    wall: Duration,
    messages: u64,
    received: u64,
}

impl Measurement {
    fn rate(&self) -> f64 {
        self.records as f64 / self.cpu.as_secs_f64()
    }
}

#[derive(Debug)]
enum Writer {
    Lumen,
    Ipfixrw(ReferenceEncoder),
}

pub fn run(options: Options) -> Result<()> {
    if options.runs == 0 || options.records == 0 {
        bail!("--runs and --records must be at least 1");
    }
    let flows: Vec<Flow> = (0..DISTINCT_FLOWS).map(numbered_flow).collect();
    let (per_message, record_len) = records_per_message(&flows)?;
    println!(
        "export: IPFIX records encoded and sent to a UDP sink on loopback, per CPU-second \
         of the process (getrusage; the sink thread's time excluded); {MESSAGE_SIZE}-byte \
         messages of {per_message} records (~{record_len} bytes each), {} distinct pod-to-pod \
         flows, median of {} runs",
        DISTINCT_FLOWS, options.runs
    );
    let reference = Writer::Ipfixrw(ReferenceEncoder::new(DEFAULT_LUMEN_PEN));
    let baseline_records = (options.records / BASELINE_SHARE).max(1);
    let (mut lumen, mut ipfixrw, mut pipeline) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=options.runs {
        lumen.push(send_loop(
            &flows,
            per_message,
            options.records,
            &Writer::Lumen,
        )?);
        ipfixrw.push(send_loop(
            &flows,
            per_message,
            baseline_records,
            &reference,
        )?);
        pipeline.push(exporter_run(&flows, options.records)?);
        println!(
            "run {run}: lumen {:.0}/s, ipfixrw {:.0}/s, exporter {:.0}/s",
            lumen[run - 1].rate(),
            ipfixrw[run - 1].rate(),
            pipeline[run - 1].rate()
        );
    }
    print_report(&lumen, &ipfixrw, &pipeline);
    Ok(())
}

/// How many of `flows` always fit in one message, and their mean length.
fn records_per_message(flows: &[Flow]) -> Result<(usize, usize)> {
    let mut longest = 0;
    let mut total = 0;
    let mut buf = Vec::new();
    for flow in flows {
        buf.clear();
        encode::write_record(&mut buf, flow)?;
        longest = longest.max(buf.len());
        total += buf.len();
    }
    let n = (MESSAGE_SIZE - MESSAGE_HEADER_LEN - SET_HEADER_LEN) / longest;
    if n == 0 {
        bail!("a {longest}-byte record does not fit in a {MESSAGE_SIZE}-byte message");
    }
    Ok((n, total / flows.len()))
}

/// Encode messages of `per_message` flows with `writer` and send each with `send`.
fn send_loop(
    flows: &[Flow],
    per_message: usize,
    records: u64,
    writer: &Writer,
) -> Result<Measurement> {
    let sink = Sink::start()?;
    let socket = UdpSocket::bind("127.0.0.1:0").context("binding the sender")?;
    socket.connect(sink.addr).context("connecting the sender")?;
    let mut buf = Vec::with_capacity(MESSAGE_SIZE);
    let mut batch: Vec<&Flow> = Vec::with_capacity(per_message);
    let mut next = 0;
    let (mut sent, mut messages, mut sequence) = (0u64, 0u64, 0u32);

    let start = Usage::now()?;
    while sent < records {
        batch.clear();
        for _ in 0..per_message {
            batch.push(&flows[next]);
            next = (next + 1) % flows.len();
        }
        let header = Header {
            export_time: now_secs(),
            sequence_number: sequence,
            observation_domain_id: 1,
        };
        buf.clear();
        match writer {
            Writer::Lumen => encode::write_message(&mut buf, header, &batch)?,
            Writer::Ipfixrw(reference) => reference.write_message(&mut buf, header, &batch)?,
        }
        socket.send(&buf).context("sending to the sink")?;
        sent += per_message as u64;
        messages += 1;
        sequence = sequence.wrapping_add(per_message as u32);
    }
    let wall = start.wall.elapsed();
    finish(start, sink, sent, messages, wall)
}

/// The whole exporter: `export()` from this thread, one tokio worker sending.
fn exporter_run(flows: &[Flow], records: u64) -> Result<Measurement> {
    let sink = Sink::start()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let config = IpfixConfig {
        collectors: vec![lumen_exporter::Collector {
            addr: sink.addr,
            transport: lumen_exporter::Transport::Udp,
        }],
        max_buffered_records: 2 * PIPELINE_BACKLOG as usize,
        max_message_size: MESSAGE_SIZE,
        ..IpfixConfig::default()
    };
    let exporter = {
        let _runtime = runtime.enter();
        IpfixExporter::start(config)?
    };
    let sent = |e: &IpfixExporter| {
        let c = &e.stats().collectors[0];
        (
            c.records_sent,
            c.records_lost,
            c.records_buffered,
            c.messages_sent,
        )
    };
    // The template message goes out first; count from there.
    wait_for(|| sent(&exporter).3 >= 1)?;

    let start = Usage::now()?;
    for n in 0..records {
        exporter.export(&flows[(n % flows.len() as u64) as usize]);
        if n % 1024 == 1023 {
            while sent(&exporter).2 > PIPELINE_BACKLOG {
                thread::sleep(Duration::from_micros(50));
            }
        }
    }
    wait_for(|| {
        let (done, lost, ..) = sent(&exporter);
        done + lost == records
    })?;
    let wall = start.wall.elapsed();
    let (done, lost, _, messages) = sent(&exporter);
    if lost > 0 {
        bail!("the exporter lost {lost} records; the benchmark keeps its queue short");
    }
    // The template message was sent before the measurement.
    let measurement = finish(start, sink, done, messages - 1, wall)?;
    runtime.block_on(exporter.shutdown());
    Ok(measurement)
}

fn finish(
    start: Usage,
    sink: Sink,
    records: u64,
    messages: u64,
    wall: Duration,
) -> Result<Measurement> {
    // Stop the sink first so the process time covers all of the sink's, then take it off.
    let sink = sink.stop()?;
    let end = Usage::now()?;
    let cpu = end
        .cpu
        .checked_sub(start.cpu)
        .and_then(|d| d.checked_sub(sink.cpu))
        .ok_or_else(|| anyhow!("CPU time went backwards"))?;
    Ok(Measurement {
        records,
        cpu,
        wall,
        messages,
        received: sink.datagrams,
    })
}

fn wait_for(mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        if Instant::now() > deadline {
            bail!("the exporter did not finish within a minute");
        }
        thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

fn print_report(lumen: &[Measurement], ipfixrw: &[Measurement], pipeline: &[Measurement]) {
    let rate = |m: &[Measurement]| median(&m.iter().map(Measurement::rate).collect::<Vec<_>>());
    let baseline = rate(ipfixrw);
    println!();
    println!(
        "{:<44} {:>10} {:>8} {:>8} {:>14} {:>10} {:>9}",
        "median", "records", "CPU s", "wall s", "records/core-s", "x ipfixrw", "received"
    );
    for (name, runs) in [
        ("lumen encoder, send per message", lumen),
        ("ipfixrw writer, send per message (baseline)", ipfixrw),
        ("IpfixExporter: export() -> sendmmsg task", pipeline),
    ] {
        let r = rate(runs);
        let last = runs[runs.len() - 1];
        let cpu = median(&runs.iter().map(|m| m.cpu.as_secs_f64()).collect::<Vec<_>>());
        let wall = median(
            &runs
                .iter()
                .map(|m| m.wall.as_secs_f64())
                .collect::<Vec<_>>(),
        );
        println!(
            "{name:<44} {:>10} {cpu:>8.3} {wall:>8.3} {r:>14.0} {:>9.2}x {:>8.1}%",
            last.records,
            ratio(r, baseline),
            100.0 * ratio(last.received as f64, last.messages as f64)
        );
    }
    println!(
        "note: 'received' is the share of messages the sink read; loopback drops when the \
         sink falls behind do not change the sender's cost"
    );
    let exporter = rate(pipeline);
    let encoder = rate(lumen);
    print_verdicts(&[
        Verdict::new(
            format!("IpfixExporter >= {TARGET:.0} records/core-s"),
            exporter >= TARGET,
            format!(
                "{exporter:.0} records/core-s, {:.2}x ipfixrw",
                ratio(exporter, baseline)
            ),
        ),
        Verdict::new(
            format!("lumen encoder + send >= {TARGET:.0} records/core-s"),
            encoder >= TARGET,
            format!(
                "{encoder:.0} records/core-s, {:.2}x ipfixrw",
                ratio(encoder, baseline)
            ),
        ),
    ]);
}

fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

// === CPU time ===

#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu: Duration,
    wall: Instant,
}

impl Usage {
    fn now() -> Result<Self> {
        Ok(Self {
            cpu: cpu_time(libc::RUSAGE_SELF).context("getrusage(RUSAGE_SELF)")?,
            wall: Instant::now(),
        })
    }
}

/// User + system time of the process or the calling thread.
fn cpu_time(who: libc::c_int) -> io::Result<Duration> {
    // SAFETY: rusage is plain data, valid when zeroed; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}

// === The sink ===

/// A UDP socket on loopback read by a thread of its own.
#[derive(Debug)]
struct Sink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<SinkReport>>,
}

#[derive(Debug, Clone, Copy)]
struct SinkReport {
    datagrams: u64,
    /// The reading thread's own CPU time.
    cpu: Duration,
}

impl Sink {
    fn start() -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").context("binding the sink")?;
        grow_receive_buffer(&socket);
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .context("sink read timeout")?;
        let addr = socket.local_addr().context("sink address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut buf = vec![0; 65536];
            let mut datagrams = 0;
            loop {
                match socket.recv(&mut buf) {
                    Ok(_) => datagrams += 1,
                    Err(err)
                        if matches!(
                            err.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        // Quiet for a while: drained, if the sender is done.
                        if stopped.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    Err(err) => return Err(err),
                }
            }
            Ok(SinkReport {
                datagrams,
                cpu: cpu_time(libc::RUSAGE_THREAD)?,
            })
        });
        Ok(Self { addr, stop, thread })
    }

    /// Wait until the sink has read everything, and stop it.
    fn stop(self) -> Result<SinkReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("the sink thread panicked"))?
            .context("reading the sink")
    }
}

/// A bigger receive buffer makes the sink drop less when it falls behind. Best
/// effort: `SO_RCVBUFFORCE` needs CAP_NET_ADMIN, `SO_RCVBUF` is capped by rmem_max.
fn grow_receive_buffer(socket: &UdpSocket) {
    let size: libc::c_int = 32 << 20;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket and a pointer to a c_int of the length given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}
