//! Third-party programs as test peers: finding them (a missing one fails the test
//! with the command that installs it), scratch directories, daemons stopped with
//! SIGTERM as an operator would, and loopback sinks that keep what a collector port
//! received.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness;

/// What a failing test says when a peer is not installed: CI installs them all.
pub const INSTALL_HINT: &str = "install with: cargo xtask deps";

/// The repository's root (where `dashboards/` and `tests/peers/` live).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .expect("the tests crate lives in the repository")
}

/// A file of the repository, which must exist.
#[track_caller]
pub fn repo_file(relative: &str) -> PathBuf {
    let path = repo_root().join(relative);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// The path of the program `name` on PATH (or in the sbin directories, where
/// Debian puts daemons such as nfacctd); panics with the install hint if absent.
#[track_caller]
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{name}` is missing: {INSTALL_HINT}"))
}

/// The interpreter of the venv `cargo xtask deps` makes for the PyPI peers
/// (`target/peers-venv`), checked to import `module`.
#[track_caller]
pub fn python_with(module: &str) -> PathBuf {
    let target = harness::bin_dir()
        .parent()
        .map(Path::to_path_buf)
        .expect("target/<profile> has a parent");
    let python = target.join("peers-venv").join("bin").join("python3");
    assert!(
        python.is_file(),
        "{} is missing: {INSTALL_HINT}",
        python.display()
    );
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python module `{module}` is missing from {}: {INSTALL_HINT}",
        python.display()
    );
    python
}

/// A scratch directory, removed on drop unless `LUMEN_KEEP_TMP` is set (to look at
/// what a failing peer wrote).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(what: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "lumen-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a scratch directory");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("LUMEN_KEEP_TMP").is_some() {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A peer running in the background with stdout and stderr in files, stopped with
/// its stop signal (SIGTERM unless told otherwise), and killed if it does not
/// exit, when dropped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    stop_signal: libc::c_int,
}

impl Daemon {
    /// Start `cmd`; its output goes to `<dir>/<name>.stdout|stderr`.
    #[track_caller]
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Self {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Self {
            name: name.to_owned(),
            child: Some(child),
            stdout,
            stderr,
            stop_signal: libc::SIGTERM,
        }
    }

    /// Stop it with `signal` instead (pmacct ends gracefully on SIGINT only).
    pub fn stop_signal(mut self, signal: libc::c_int) -> Self {
        self.stop_signal = signal;
        self
    }

    /// What it has written to stdout and stderr so far.
    pub fn output(&self) -> (String, String) {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        (read(&self.stdout), read(&self.stderr))
    }

    /// Wait until its stdout or stderr contains `text`; panics with both if it
    /// exits or `timeout` passes first.
    #[track_caller]
    pub fn wait_for_output(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (out, err) = self.output();
            if out.contains(text) || err.contains(text) {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "{} exited ({status}) before printing {text:?}:\n{out}\n{err}",
                    self.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {text:?} within {timeout:?}:\n{out}\n{err}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stop it with its stop signal, as an operator or a service manager would, and
    /// return its output. Killed after 10 s.
    pub fn stop(mut self) -> Output {
        let status = self.terminate();
        let (stdout, stderr) = self.output();
        Output {
            status,
            stdout: stdout.into_bytes(),
            stderr: stderr.into_bytes(),
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("stopped once");
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(pid, self.stop_signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().expect("wait for a killed child");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
    }
}

/// Poll `done` every 50 ms until it holds; panics with `what` after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    assert!(poll_until(timeout, done), "timed out waiting for {what}");
}

/// Whether `done` comes to hold within `timeout`, asked every 50 ms; for a
/// caller that asserts on the state itself, so a failure shows it.
pub fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A loopback port that was free a moment ago, for peers that cannot bind port 0
/// and report theirs. UDP and TCP ports are separate spaces; ask for the one used.
pub fn free_port(tcp: bool) -> u16 {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    if tcp {
        TcpListener::bind(any)
            .and_then(|l| l.local_addr())
            .expect("bind a TCP port")
            .port()
    } else {
        UdpSocket::bind(any)
            .and_then(|s| s.local_addr())
            .expect("bind a UDP port")
            .port()
    }
}

/// A UDP collector that keeps every datagram it receives: each is one IPFIX
/// message. It also keeps the port bound, so nothing answers the exporter with
/// ICMP port unreachable while a capture watches.
#[derive(Debug)]
pub struct UdpSink {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpSink {
    pub fn bind() -> Self {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the UDP sink");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("sink address");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (messages, stop) = (messages.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        messages.lock().expect("sink lock").push(buf[..n].to_vec());
                    }
                }
            })
        };
        Self {
            addr,
            messages,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The datagrams received so far.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.messages.lock().expect("sink lock").clone()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A TCP collector that accepts connections one after another and keeps the bytes
/// of each (an IPFIX message stream).
#[derive(Debug)]
pub struct TcpSink {
    addr: SocketAddr,
    streams: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl TcpSink {
    pub fn bind() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the TCP sink");
        let addr = listener.local_addr().expect("sink address");
        let streams = Arc::new(Mutex::new(Vec::new()));
        let kept = streams.clone();
        // The thread ends with the test process; a blocked accept holds nothing.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let index = {
                    let mut streams = kept.lock().expect("sink lock");
                    streams.push(Vec::new());
                    streams.len() - 1
                };
                let mut buf = [0; 16_384];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    kept.lock().expect("sink lock")[index].extend_from_slice(&buf[..n]);
                }
            }
        });
        Self { addr, streams }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bytes of every connection so far, in order of arrival.
    pub fn streams(&self) -> Vec<Vec<u8>> {
        self.streams.lock().expect("sink lock").clone()
    }
}
