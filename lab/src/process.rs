//! The lab's long-running processes (agents, echo servers, Prometheus): starting
//! them detached with their output in a log file, waiting until they are ready,
//! finding them again, and stopping them.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use lumen_api::client::Client;

use crate::LabError;
use crate::state::Node;
use crate::topology::describe;

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);
/// How many log lines an error quotes.
const TAIL_LINES: usize = 20;

/// The environment variable that marks a process as the lab's: its value is
/// the lab's state directory. Processes in the root namespace cannot be found
/// through the lab's namespaces, so `down` looks for this mark instead.
pub const LAB_DIR_ENV: &str = "LUMEN_LAB_DIR";

/// Mark `cmd` as a process of the lab whose state lives in `state_dir`.
pub fn mark(cmd: &mut Command, state_dir: &Path) {
    cmd.env(LAB_DIR_ENV, state_dir);
}

/// Every running process marked (see [`mark`]) with `state_dir`, with its
/// children, which inherit the mark.
pub fn marked(state_dir: &Path) -> Vec<u32> {
    let mut want = format!("{LAB_DIR_ENV}=").into_bytes();
    want.extend_from_slice(state_dir.as_os_str().as_encoded_bytes());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == want.as_slice()))
        })
        .collect()
}

/// Start `cmd` in its own process group (so the terminal's Ctrl-C for `lumen lab
/// up` does not reach it), stdin from /dev/null, stdout and stderr appended to `log`.
pub fn spawn_detached(cmd: &mut Command, log: &Path) -> Result<Child, LabError> {
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| LabError::Io {
                action: "open log",
                path: log.to_owned(),
                source,
            })
    };
    cmd.stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        .process_group(0);
    cmd.spawn().map_err(|source| LabError::Spawn {
        command: describe(cmd),
        source,
    })
}

/// Wait until the agent of `node` answers `GET /healthz` with 200.
pub fn wait_agent_ready(child: &mut Child, node: &Node, timeout: Duration) -> Result<(), LabError> {
    let client = Client::new(&node.socket, Duration::from_millis(500));
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = client.request("GET", lumen_api::paths::HEALTHZ, None) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::AgentExited {
                node: node.name.clone(),
                status: status.to_string(),
                log: node.agent_log.clone(),
                log_tail: log_tail(&node.agent_log, TAIL_LINES),
            });
        }
        if start.elapsed() >= timeout {
            return Err(LabError::AgentNotReady {
                node: node.name.clone(),
                socket: node.socket.clone(),
                waited: start.elapsed(),
                log: node.agent_log.clone(),
                log_tail: log_tail(&node.agent_log, TAIL_LINES),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Wait until process `child` listens on every port in `ports`, both TCP and UDP.
///
/// Reads `/proc/<pid>/net/*`, which shows the sockets of the process's own network
/// namespace, so no namespace switch is needed.
pub fn wait_listening(
    child: &mut Child,
    name: &str,
    ports: &[u16],
    log: &Path,
    timeout: Duration,
) -> Result<(), LabError> {
    let pid = child.id();
    let start = Instant::now();
    loop {
        let read = |file: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default()
        };
        let tcp = format!("{}{}", read("tcp"), read("tcp6"));
        let udp = format!("{}{}", read("udp"), read("udp6"));
        let ready = ports.iter().all(|&p| {
            bound_ports(&tcp, Some(TCP_LISTEN)).contains(&p) && bound_ports(&udp, None).contains(&p)
        });
        if ready {
            return Ok(());
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || start.elapsed() >= timeout {
            return Err(LabError::ServerNotReady {
                name: name.to_owned(),
                ports: ports.to_vec(),
                waited: start.elapsed(),
                log: log.to_owned(),
                log_tail: log_tail(log, TAIL_LINES),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// The `st` column of a listening TCP socket in `/proc/net/tcp`.
pub const TCP_LISTEN: &str = "0A";

/// Local ports in a `/proc/net/{tcp,udp}[6]` table, optionally only in state `state`.
pub fn bound_ports(table: &str, state: Option<&str>) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let st = cols.nth(1)?;
            if state.is_some_and(|want| want != st) {
                return None;
            }
            let port = local.rsplit(':').next()?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// Whether `pid` is a live process (zombies count as gone).
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Send `signal` to `pid`; a process that is already gone is not an error.
fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Collect the exit status of `pid` if it is our child, so it does not linger as a
/// zombie (tests start labs from their own process).
fn reap(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    let mut status = 0;
    // SAFETY: `status` is a valid, writable c_int for the duration of the call;
    // WNOHANG keeps the call from blocking, and for a pid that is not our child the
    // call just fails with ECHILD.
    unsafe {
        libc::waitpid(pid, &mut status, libc::WNOHANG);
    }
}

/// Stop `pids`: SIGTERM, wait up to `grace`, then SIGKILL whatever is left.
/// Returns the pids that were alive when asked to stop.
pub fn terminate(pids: &[u32], grace: Duration) -> Vec<u32> {
    let alive: Vec<u32> = pids.iter().copied().filter(|&p| is_alive(p)).collect();
    for &pid in &alive {
        signal(pid, libc::SIGTERM);
    }
    let all_gone = |deadline: Instant| loop {
        alive.iter().for_each(|&p| reap(p));
        if alive.iter().all(|&p| !is_alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    };
    if !all_gone(Instant::now() + grace) {
        for &pid in alive.iter().filter(|&&p| is_alive(p)) {
            signal(pid, libc::SIGKILL);
        }
        all_gone(Instant::now() + Duration::from_secs(1));
    }
    alive
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::TempDir;

    #[test]
    fn parses_proc_net_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n\
           0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
           1: 0100007F:0051 0100007F:9C40 01 00000000:00000000 00:00000000 00000000\n";
        assert_eq!(bound_ports(tcp, Some(TCP_LISTEN)), vec![80]);
        assert_eq!(bound_ports(tcp, None), vec![80, 81]);
        let udp6 = "  sl  local_address                         remote_address                        st\n\
           0: 00000000000000000000000000000000:0051 00000000000000000000000000000000:0000 07\n";
        assert_eq!(bound_ports(udp6, None), vec![81]);
    }

    #[test]
    fn detached_process_lifecycle() {
        let dir = TempDir::new("proc");
        let log = dir.0.join("x.log");
        let mut child = spawn_detached(
            Command::new("sh").args(["-c", "echo started; exec sleep 30"]),
            &log,
        )
        .unwrap();
        let pid = child.id();
        assert!(is_alive(pid));
        while log_tail(&log, 1).is_empty() {
            std::thread::sleep(POLL);
        }
        assert!(cmdline(pid).is_some());
        let stopped = terminate(&[pid], Duration::from_secs(2));
        assert_eq!(stopped, vec![pid]);
        assert!(!is_alive(pid));
        // terminate reaped our child already.
        assert!(child.try_wait().is_err());
        assert_eq!(log_tail(&log, 5), "started");
        assert!(terminate(&[pid], Duration::from_millis(10)).is_empty());
    }

    #[test]
    fn marked_processes_are_found_by_state_dir() {
        let dir = TempDir::new("mark");
        let lab_dir = dir.0.join("lab");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        mark(&mut cmd, &lab_dir);
        let mut child = spawn_detached(&mut cmd, &dir.0.join("sleep.log")).unwrap();
        let pid = child.id();
        assert_eq!(marked(&lab_dir), vec![pid]);
        // Another lab's directory, and a prefix of this one, are not this lab.
        assert!(marked(&dir.0.join("other")).is_empty());
        assert!(marked(&dir.0.join("la")).is_empty());
        assert!(!marked(&dir.0.join("lab")).contains(&std::process::id()));
        terminate(&[pid], Duration::from_secs(2));
        // terminate reaped it.
        assert!(child.try_wait().is_err());
        assert!(marked(&lab_dir).is_empty());
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let dir = TempDir::new("tail");
        let log = dir.0.join("a.log");
        std::fs::write(&log, "1\n2\n3\n4\n").unwrap();
        assert_eq!(log_tail(&log, 2), "3\n4");
        assert_eq!(log_tail(&dir.0.join("missing"), 2), "");
    }
}
