//! Servers a benchmark runs inside a namespace (iperf3, the RR echo server): started,
//! waited for until they listen, and killed on drop.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lumen_lab::process::{TCP_LISTEN, bound_ports};
use lumen_lab::topology::describe;

/// How long a server gets to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

/// A server process, killed and reaped when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    command: String,
}

impl Server {
    /// Start `cmd` (which must exec the server itself, as `ip netns exec` does, so
    /// the child's pid is the server's) and wait until it listens on TCP `port`.
    pub fn start(cmd: &mut Command, port: u16) -> Result<Self> {
        let command = describe(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting `{command}`"))?;
        let mut server = Self { child, command };
        server.wait_listening(port)?;
        Ok(server)
    }

    /// Polls `/proc/<pid>/net/tcp{,6}`, which list the sockets of the process's own
    /// namespace, so no namespace switch is needed.
    fn wait_listening(&mut self, port: u16) -> Result<()> {
        let pid = self.child.id();
        let start = Instant::now();
        loop {
            let tables = ["tcp", "tcp6"].map(|t| {
                std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).unwrap_or_default()
            });
            if tables.iter().any(|t| listens(t, port)) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "`{}` exited ({status}) before listening on {port}",
                    self.command
                );
            }
            if start.elapsed() >= READY_TIMEOUT {
                bail!(
                    "`{}` is not listening on {port} after {READY_TIMEOUT:?}",
                    self.command
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Already gone is fine (iperf3 -1 exits by itself); wait reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a `/proc/net/tcp` table has a listening socket on `port`.
fn listens(table: &str, port: u16) -> bool {
    bound_ports(table, Some(TCP_LISTEN)).contains(&port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_ports() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n\
           0: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
           1: 0100007F:1B58 0100007F:9C40 01 00000000:00000000 00:00000000 00000000\n";
        assert!(listens(tcp, 5201));
        assert!(!listens(tcp, 7000), "established, not listening");
        assert!(!listens(tcp, 80));
    }
}
