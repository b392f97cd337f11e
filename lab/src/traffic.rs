//! Steady background traffic for demos: every ordered pod pair in turn, TCP, UDP
//! and ICMP alternating, each probe a child `lumen lab probe … -o json` so the
//! generator itself never changes namespace; a running tally until SIGINT/SIGTERM.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::LabError;
use crate::lab::Lab;
use crate::reach::ProbeReport;
use crate::state::Pod;
use crate::topology::describe;

/// The probes cycled through, so every protocol and port sees traffic.
const SPECS: [&str; 6] = ["80/tcp", "81/udp", "icmp", "81/tcp", "80/udp", "icmp"];
/// Granularity of sleeps, so a stop request is noticed quickly.
const TICK: Duration = Duration::from_millis(50);

/// How to generate traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficConfig {
    /// The `lumen` binary that runs each probe.
    pub exe: PathBuf,
    /// Pause between probes.
    pub interval: Duration,
    /// How often `report` is called.
    pub report_every: Duration,
    /// Timeout of each probe.
    pub probe_timeout: Duration,
}

/// Probes sent so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficSummary {
    pub probes: u64,
    pub ok: u64,
    pub failed: u64,
}

impl fmt::Display for TrafficSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "traffic: {} probes, {} ok, {} failed",
            self.probes, self.ok, self.failed
        )
    }
}

/// Every ordered pair of distinct pods, source-major.
pub fn pod_pairs(lab: &Lab) -> Vec<(String, String)> {
    let names: Vec<String> = lab.pods().iter().map(Pod::lab_name).collect();
    names
        .iter()
        .flat_map(|from| {
            names
                .iter()
                .filter(move |to| *to != from)
                .map(move |to| ((*from).to_owned(), (*to).to_owned()))
        })
        .collect()
}

/// Probe pod pairs round robin until `stop` is set; `report` gets the tally every
/// `report_every` and once more at the end, which is also returned.
pub fn run(
    lab: &Lab,
    config: &TrafficConfig,
    stop: &AtomicBool,
    report: &mut dyn FnMut(&TrafficSummary),
) -> Result<TrafficSummary, LabError> {
    let pairs = pod_pairs(lab);
    if pairs.is_empty() {
        return Err(LabError::Config {
            reason: format!("lab {} needs at least two pods for traffic", lab.name()),
        });
    }
    let mut summary = TrafficSummary::default();
    let mut last_report = Instant::now();
    for (n, (from, to)) in pairs.iter().cycle().enumerate() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let spec = SPECS[n % SPECS.len()];
        let ok = probe_child(lab, config, from, to, spec)?;
        // A probe cut short by the stop signal says nothing about the datapath.
        if stop.load(Ordering::SeqCst) {
            break;
        }
        summary.probes += 1;
        if ok {
            summary.ok += 1;
        } else {
            summary.failed += 1;
        }
        if last_report.elapsed() >= config.report_every {
            report(&summary);
            last_report = Instant::now();
        }
        sleep_unless_stopped(config.interval, stop);
    }
    report(&summary);
    Ok(summary)
}

/// Run one `lumen lab probe` child; true if it reported success.
fn probe_child(
    lab: &Lab,
    config: &TrafficConfig,
    from: &str,
    to: &str,
    spec: &str,
) -> Result<bool, LabError> {
    let mut cmd = probe_command(
        &config.exe,
        lab.name(),
        lab.state_root(),
        from,
        to,
        spec,
        config.probe_timeout,
    );
    let out = cmd.output().map_err(|source| LabError::Spawn {
        command: describe(&cmd),
        source,
    })?;
    let report: Option<ProbeReport> = serde_json::from_slice(&out.stdout).ok();
    Ok(out.status.success() && report.is_some_and(|r| r.ok))
}

/// `lumen lab probe --name L --state-root R FROM TO SPEC -o json --timeout-ms T`.
pub fn probe_command(
    exe: &Path,
    lab: &str,
    state_root: &Path,
    from: &str,
    to: &str,
    spec: &str,
    timeout: Duration,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["lab", "probe", "--name", lab, "--state-root"])
        .arg(state_root)
        .args([from, to, spec, "-o", "json", "--timeout-ms"])
        .arg(timeout.as_millis().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let end = Instant::now() + total;
    while !stop.load(Ordering::SeqCst) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(TICK));
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    // Only an atomic store: the one kind of work that is async-signal-safe here.
    STOP.store(true, Ordering::SeqCst);
}

/// A flag set by SIGINT or SIGTERM, for [`run`]'s `stop`.
pub fn stop_on_signals() -> Result<&'static AtomicBool, LabError> {
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let handler = request_stop as extern "C" fn(libc::c_int);
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe,
        // and it stays valid for the life of the process (it is a plain fn).
        let previous = unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            return Err(LabError::Signal {
                signal: name,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(&STOP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LabState;
    use crate::state::tests::{TempDir, config};

    #[test]
    fn pairs_cover_every_ordered_pair() {
        let lab = Lab::from_state(LabState::plan(&config(Path::new("/r"))));
        let pairs = pod_pairs(&lab);
        assert_eq!(pairs.len(), 4 * 3);
        assert_eq!(pairs[0], ("pod-1-1".to_owned(), "pod-1-2".to_owned()));
        assert!(pairs.iter().all(|(a, b)| a != b));
    }

    #[test]
    fn probe_command_line() {
        let cmd = probe_command(
            Path::new("/bin/lumen"),
            "t",
            Path::new("/run/lumen-lab"),
            "pod-1-1",
            "pod-2-1",
            "80/tcp",
            Duration::from_millis(500),
        );
        assert_eq!(
            describe(&cmd),
            "/bin/lumen lab probe --name t --state-root /run/lumen-lab pod-1-1 pod-2-1 80/tcp -o json --timeout-ms 500"
        );
    }

    /// A stand-in `lumen` that answers ok for tcp and fails otherwise.
    #[test]
    fn counts_probe_outcomes_until_stopped() {
        let dir = TempDir::new("traffic");
        let exe = dir.0.join("fake-lumen");
        std::fs::write(
            &exe,
            "#!/bin/sh\ncase \"$*\" in *tcp*) echo '{\"ok\":true,\"from\":\"a\",\"to\":\"b\",\"ip\":\"10.0.0.1\",\"proto\":\"tcp\",\"port\":80,\"rtt_us\":1,\"reply\":\"x\",\"error\":null}';; *) exit 1;; esac\n",
        )
        .unwrap();
        let mut perms = std::fs::metadata(&exe).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&exe, perms).unwrap();

        let lab = Lab::from_state(LabState::plan(&config(Path::new("/r"))));
        let cfg = TrafficConfig {
            exe,
            interval: Duration::ZERO,
            report_every: Duration::ZERO,
            probe_timeout: Duration::from_millis(100),
        };
        let stop = AtomicBool::new(false);
        let mut reports = 0;
        let summary = run(&lab, &cfg, &stop, &mut |s| {
            reports += 1;
            if s.probes == 6 {
                stop.store(true, Ordering::SeqCst);
            }
        })
        .unwrap();
        assert_eq!(summary.probes, 6);
        assert_eq!(summary.ok, 2, "80/tcp and 81/tcp of the six specs");
        assert_eq!(summary.failed, 4);
        assert!(reports >= 6);
        assert_eq!(summary.to_string(), "traffic: 6 probes, 2 ok, 4 failed");
    }
}
