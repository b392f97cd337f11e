//! `cargo xtask`: the project's tasks — deps, build, test, demo, bench, lint.
//!
//! Every task that needs system packages installs them first (`deps`), so the two
//! README commands work on a fresh Debian machine.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// Debian packages the project needs, and why.
const PACKAGES: &[(&str, &str)] = &[
    ("clang", "compiles the C BPF datapath"),
    ("llvm", "BPF object tools"),
    ("libbpf-dev", "bpf_helpers.h for the datapath"),
    ("iproute2", "ip: namespaces and links of the lab"),
    ("nftables", "masquerade inside node namespaces"),
    ("iperf3", "throughput benchmark"),
    ("tcpdump", "underlay captures"),
    ("tshark", "decodes VXLAN tags and IPFIX in tests"),
    ("nfdump", "nfcapd/nfdump: IPFIX peer tests"),
    (
        "pmacct",
        "nfacctd: IPFIX peer tests of the enterprise elements",
    ),
    (
        "libfixbuf-tools",
        "ipfixDump: IPFIX peer tests of the element file",
    ),
    ("python3-venv", "the venv for the PyPI ipfix peer"),
    (
        "containernetworking-plugins",
        "reference CNI plugins for comparison",
    ),
    ("procps", "process inspection"),
    (
        "podman",
        "a real container runtime calling the plugin (CNI backend)",
    ),
    ("runc", "podman's OCI runtime in the podman test"),
    ("busybox-static", "the podman test's container image"),
    ("iputils-ping", "ping from pods in the CNI and IPAM tests"),
    (
        "ethtool",
        "offloads off in pods for exact flow accounting tests",
    ),
    (
        "prometheus",
        "prometheus/promtool: the demo's server, metrics and rules tests",
    ),
];

#[derive(Debug, Parser)]
#[command(about = "Lumen project tasks")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install missing system packages (apt-get, non-interactive, idempotent).
    Deps,
    /// Build every binary (debug).
    Build,
    /// Run all tests: unit, privileged and end-to-end (needs root).
    Test {
        /// Only the unit tests (no root needed).
        #[arg(long)]
        unit: bool,
    },
    /// Bring up the lab with traffic; tear it down on Ctrl-C.
    Demo {
        #[arg(long, default_value_t = 2)]
        nodes: u32,
        #[arg(long, default_value_t = 3)]
        pods: u32,
    },
    /// Run a benchmark: datapath, cni, bpf, export, memory, metrics, policy, policy-tax or trace.
    Bench {
        name: String,
        #[arg(trailing_var_arg = true)]
        rest: Vec<String>,
    },
    /// cargo fmt --check and clippy -D warnings.
    Lint,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(root());
    cmd
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn locked() -> &'static [&'static str] {
    if std::env::var_os("CI").is_some() {
        &["--locked"]
    } else {
        &[]
    }
}

fn run(args: Args) -> Result<()> {
    match args.task {
        Task::Deps => deps(),
        Task::Build => build(false),
        Task::Test { unit } => test(unit),
        Task::Demo { nodes, pods } => demo(nodes, pods),
        Task::Bench { name, rest } => bench(&name, &rest),
        Task::Lint => {
            status(cargo().args(["fmt", "--all", "--check"]))?;
            status(
                cargo()
                    .args(["clippy", "--workspace", "--all-targets"])
                    .args(locked())
                    .args(["--", "-D", "warnings"]),
            )
        }
    }
}

/// PyPI packages of the peer tests, installed into `target/peers-venv` (pinned: the
/// tests assert what this version decodes).
const PYTHON_PACKAGES: &[(&str, &str)] = &[("ipfix==0.9.7", "python-ipfix: IPFIX peer tests")];

fn deps() -> Result<()> {
    system_deps()?;
    rust_deps()?;
    python_deps()
}

/// The Rust target of the static `lumen-cni`, added with rustup.
fn rust_deps() -> Result<()> {
    let installed = Command::new("rustup")
        .current_dir(root())
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup (the static lumen-cni needs the musl target)")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|t| t.trim() == CNI_TARGET)
    {
        println!("deps: Rust target {CNI_TARGET} present");
        return Ok(());
    }
    println!("deps: adding Rust target {CNI_TARGET} (the static lumen-cni)");
    status(
        Command::new("rustup")
            .current_dir(root())
            .args(["target", "add", CNI_TARGET]),
    )
}

/// Cargo's target directory, where the peer venv lives next to the builds.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// A venv of Debian's python3 with the PyPI peers, so the tests never depend on
/// whichever python is first on PATH nor touch the system's site-packages.
fn python_deps() -> Result<()> {
    let venv = target_dir().join("peers-venv");
    let python = venv.join("bin").join("python3");
    if !python.exists() {
        println!("deps: creating {}", venv.display());
        status(
            Command::new("/usr/bin/python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv),
        )?;
    }
    let wanted: Vec<&str> = PYTHON_PACKAGES.iter().map(|(p, _)| *p).collect();
    let frozen = Command::new(&python)
        .args(["-m", "pip", "freeze"])
        .output()
        .with_context(|| format!("running {} -m pip freeze", python.display()))?;
    let frozen = String::from_utf8_lossy(&frozen.stdout);
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !frozen.lines().any(|l| l.trim() == *p))
        .collect();
    if missing.is_empty() {
        println!("deps: all {} python packages present", wanted.len());
        return Ok(());
    }
    for (pkg, why) in PYTHON_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        println!("  {pkg:<30} {why}");
    }
    status(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&missing),
    )
}

fn system_deps() -> Result<()> {
    let missing: Vec<&(&str, &str)> = PACKAGES
        .iter()
        .filter(|(pkg, _)| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        println!("deps: all {} system packages present", PACKAGES.len());
        return Ok(());
    }
    println!("deps: installing missing Debian packages:");
    for (pkg, why) in &missing {
        println!("  {pkg:<30} {why}");
    }
    if !is_root() {
        bail!("installing packages needs root: run as root (the lab needs root too)");
    }
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|(p, _)| *p)),
    )?;
    // Debian starts a Prometheus service on :9090 when systemd runs; the lab
    // starts its own on loopback, and we leave nothing listening behind.
    if missing.iter().any(|(p, _)| *p == "prometheus")
        && Command::new("systemctl")
            .args(["disable", "--now", "prometheus"])
            .status()
            .is_ok_and(|s| s.success())
    {
        println!("deps: stopped and disabled Debian's prometheus service");
    }
    Ok(())
}

/// The target `lumen-cni` is also built for: static, with musl's start-up. A
/// glibc binary spends about 1 ms of every call in the dynamic loader's CPU
/// and cache detection (CPUID, each a VM exit here), and a runtime starts the
/// plugin once per ADD and DEL. Labs run this build
/// (`lumen_lab::config::cni_plugin`); cargo keeps the glibc one beside the
/// other binaries.
///
/// Equal to `lumen_lab::config::CNI_STATIC_TARGET`: xtask depends on no crate
/// of the workspace (it builds before the system packages they need).
const CNI_TARGET: &str = "x86_64-unknown-linux-musl";

/// The static `lumen-cni` that `build(release)` makes.
fn static_cni(release: bool) -> PathBuf {
    target_dir()
        .join(CNI_TARGET)
        .join(if release { "release" } else { "debug" })
        .join("lumen-cni")
}

/// Labs started by `cmd` run the static plugin (cargo re-links the glibc one
/// into `target/<profile>` on every test build, so its age says nothing).
fn with_static_cni(cmd: &mut Command, release: bool) -> &mut Command {
    // `lumen_lab::config::CNI_PLUGIN_ENV`.
    cmd.env("LUMEN_CNI_PLUGIN", static_cni(release))
}

fn build(release: bool) -> Result<()> {
    let profile = |cmd: &mut Command| {
        if release {
            cmd.arg("--release");
        }
    };
    let mut cmd = cargo();
    cmd.args(["build", "--workspace", "--bins"]).args(locked());
    profile(&mut cmd);
    status(&mut cmd)?;
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        "lumen-cni",
        "--bin",
        "lumen-cni",
        "--target",
        CNI_TARGET,
    ])
    .args(locked());
    profile(&mut cmd);
    status(&mut cmd).context("building the static lumen-cni (cargo xtask deps adds the target)")
}

fn test(unit: bool) -> Result<()> {
    if !unit {
        deps()?;
        if !is_root() {
            bail!("the privileged and end-to-end tests need root (use --unit for the rest)");
        }
        build(false)?;
    }
    // Every suite runs to the end (--no-fail-fast), so one failure never hides others.
    let mut tally = Tally::default();
    tally.run(
        with_static_cni(&mut cargo(), false)
            .args([
                "test",
                "--no-fail-fast",
                "--workspace",
                "--exclude",
                "lumen-tests",
            ])
            .args(locked()),
    )?;
    if !unit {
        // End-to-end tests build whole labs: one at a time on a small machine.
        tally.run(
            with_static_cni(&mut cargo(), false)
                .args(["test", "--no-fail-fast", "-p", "lumen-tests", "--tests"])
                .args(locked())
                .args(["--", "--test-threads=1"]),
        )?;
    }
    println!(
        "xtask test: {} passed, {} failed",
        tally.passed, tally.failed
    );
    if tally.failed > 0 {
        bail!("{} tests failed", tally.failed);
    }
    Ok(())
}

/// Test counts summed over every `cargo test` run, from libtest's result lines.
#[derive(Debug, Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Run `cmd`, echoing its output, and add up its "test result:" lines; a run
    /// that fails without a failed test counts as one failure.
    fn run(&mut self, cmd: &mut Command) -> Result<()> {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running {cmd:?}"))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading test output")?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                self.passed += count(rest, " passed");
                self.failed += count(rest, " failed");
            }
        }
        let st = child.wait().context("waiting for cargo test")?;
        if !st.success() && self.failed == 0 {
            // A build failure, or a test binary that crashed before its summary.
            self.failed = 1;
            eprintln!("xtask: {cmd:?} failed with {st}");
        }
        Ok(())
    }
}

/// The number before `label` in "ok. 12 passed; 0 failed; ...".
fn count(result: &str, label: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok.")
                .trim_start_matches("FAILED.")
                .trim()
                .strip_suffix(label.trim())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn bin_dir(release: bool) -> PathBuf {
    target_dir().join(if release { "release" } else { "debug" })
}

fn demo(nodes: u32, pods: u32) -> Result<()> {
    deps()?;
    if !is_root() {
        bail!("the lab needs root");
    }
    build(false)?;
    let lumen = bin_dir(false).join("lumen");
    let n = nodes.to_string();
    let p = pods.to_string();
    status(Command::new(&lumen).args(["lab", "down", "--name", "demo"]))?;
    // Prometheus is a convenience of the demo: without it the rest still runs.
    let with_prometheus = Path::new(PROMETHEUS).is_file();
    let mut up = Command::new(&lumen);
    with_static_cni(&mut up, false);
    up.args([
        "lab",
        "up",
        "--name",
        "demo",
        "--nodes",
        &n,
        "--pods",
        &p,
        "--ipfix-collector",
    ]);
    if with_prometheus {
        up.arg("--prometheus");
    }
    status(&mut up)?;
    let prometheus_url = if with_prometheus {
        Some(demo_prometheus_url(&lumen)?)
    } else {
        None
    };
    let traffic = Command::new(&lumen)
        .args(["lab", "traffic", "--name", "demo"])
        .spawn()
        .context("starting the traffic generator")?;
    println!();
    println!(
        "Lumen demo is running: {nodes} nodes x {pods} pods, steady TCP/UDP/ICMP traffic between all pods."
    );
    println!("Every node exports IPFIX to nfcapd on udp://192.0.2.1:4739 (in demo-underlay).");
    println!("Look at it from another terminal:");
    println!(
        "  {} observe --lab demo -f                      # every flow, live",
        lumen.display()
    );
    println!(
        "  {} observe --lab demo --verdict DROPPED -o table",
        lumen.display()
    );
    println!(
        "  nfdump -R /run/lumen-lab/demo/ipfix -o long    # what the collector got (a file a minute)"
    );
    match &prometheus_url {
        Some(url) => println!(
            "  {url}                     # Prometheus: every node agent, scraped every 5 s"
        ),
        None => println!("  (install prometheus for a Prometheus server: cargo xtask deps)"),
    }
    println!(
        "  {} trace --lab demo pod-1-1 pod-2-1          # one packet's path, hop by hop",
        lumen.display()
    );
    println!(
        "  {} trace --lab demo pod-1-1 203.0.113.10 --live   # the next real connection; open one with:",
        lumen.display()
    );
    println!(
        "  {} lab probe --name demo pod-1-1 external 80/tcp",
        lumen.display()
    );
    println!("  {} lab status --name demo", lumen.display());
    println!(
        "  {} lab probe --name demo pod-1-1 pod-2-1 80/tcp",
        lumen.display()
    );
    println!(
        "  {} lab exec --name demo pod-1-1 -- ping -c3 <ip of pod-2-1>",
        lumen.display()
    );
    println!(
        "  ip netns exec demo-underlay tshark -i br0 -d udp.port==4789,vxlan -T fields -e ip.src -e ip.dst -e vxlan.vni"
    );
    println!("Press Ctrl-C to stop and tear everything down.");
    wait_for_ctrl_c();
    let mut traffic = traffic;
    let _ = traffic.kill();
    let _ = traffic.wait();
    status(Command::new(&lumen).args(["lab", "down", "--name", "demo"]))
}

/// Where Debian's prometheus package puts the server.
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// The demo lab's Prometheus URL, from `lumen lab status -o json`.
fn demo_prometheus_url(lumen: &Path) -> Result<String> {
    let out = Command::new(lumen)
        .args(["lab", "status", "--name", "demo", "-o", "json"])
        .output()
        .context("running lumen lab status")?;
    if !out.status.success() {
        bail!(
            "lumen lab status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("lumen lab status -o json")?;
    status["prometheus"]["url"]
        .as_str()
        .map(str::to_owned)
        .context("the demo lab has no Prometheus URL in its status")
}

/// Block until SIGINT or SIGTERM, which then no longer kill xtask itself: the
/// teardown after it must run. Children get a fresh signal mask from std.
fn wait_for_ctrl_c() {
    // SAFETY: plain libc signal-set manipulation on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}

fn bench(name: &str, rest: &[String]) -> Result<()> {
    deps()?;
    if !is_root() {
        bail!("benchmarks build labs and load BPF: run as root");
    }
    build(true)?;
    status(
        with_static_cni(&mut cargo(), true)
            .args([
                "run",
                "--release",
                "-p",
                "lumen-tests",
                "--bin",
                "lumen-bench",
                "--",
            ])
            .args(locked())
            .arg(name)
            .args(rest),
    )
}
