//! A real container runtime calls the plugin: podman with its CNI backend runs
//! a busybox container on a lab node's network. The container gets its address
//! from the node's pod CIDR, reaches a pod on the other node over the overlay
//! (the pod's server sees the container's own address), and removing the
//! container releases the address and the veth.
//!
//! Podman keeps everything under a directory of the test's own (storage,
//! run state, network config, plugin directory) and is told so through
//! `CONTAINERS_CONF`; its container namespace is the only thing it makes in
//! the root namespace, and podman removes it.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use lumen_lab::config;
use lumen_tests::harness;
use lumen_tests::peers::wait_until;
use serde_json::json;

const IMAGE: &str = "localhost/lumen-test-busybox";
const NETWORK: &str = "lumen-podman";
const BUSYBOX: &str = "/bin/busybox";

/// Podman confined to `dir`; removes its containers, image and files on drop.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// Podman with a CNI network `NETWORK` whose plugin is Lumen's, talking to
    /// the agent at `agent_socket`.
    fn new(agent_socket: &Path, plugin: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!("lumen-podman-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let podman = Self { dir };
        for sub in ["plugins", "net.d", "root", "runroot", "tmp"] {
            std::fs::create_dir_all(podman.dir.join(sub)).expect("podman dirs");
        }
        // The runtime finds a plugin by its type, as a file of that name.
        std::os::unix::fs::symlink(plugin, podman.dir.join("plugins").join("lumen"))
            .expect("plugin link");
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{ "type": "lumen", "agentSocket": agent_socket }],
        });
        std::fs::write(
            podman.dir.join("net.d").join(format!("{NETWORK}.conflist")),
            conflist.to_string(),
        )
        .expect("conflist");
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{plugins}\"]\n\
             network_config_dir = \"{netd}\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             runtime = \"runc\"\n",
            plugins = podman.dir.join("plugins").display(),
            netd = podman.dir.join("net.d").display(),
        );
        std::fs::write(podman.dir.join("containers.conf"), conf).expect("containers.conf");
        podman
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("TMPDIR", self.dir.join("tmp"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "vfs"]);
        cmd
    }

    #[track_caller]
    fn run(&self, args: &[&str]) -> Output {
        let out = self
            .cmd()
            .args(args)
            .output()
            .expect("podman runs (cargo xtask deps installs it)");
        assert!(
            out.status.success(),
            "podman {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// An image of nothing but static busybox, imported (no registry needed).
    fn import_busybox(&self) {
        let rootfs = self.dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox"))
            .expect("static busybox (cargo xtask deps installs busybox-static)");
        for applet in ["sh", "nc", "ip", "cat", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("applet link");
        }
        let tar = self.dir.join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar runs");
        assert!(status.success(), "tar of the rootfs");
        self.run(&["import", &tar.display().to_string(), IMAGE]);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "--all", "--force"]).output();
        let _ = self.cmd().args(["rmi", "--all", "--force"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The IPv4 address `ip -4 addr show eth0` printed, with its prefix length.
fn eth0_addr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let inet = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    let (addr, len) = inet.split_once('/')?;
    Some((addr.parse().ok()?, len.parse().ok()?))
}

#[test]
fn podman_runs_a_container_on_the_overlay() {
    if !harness::require_root("podman_runs_a_container_on_the_overlay") {
        return;
    }
    let guard = harness::lab("t-podman", 2, 1);
    let lab = guard.lab();
    let node = lab.node("node-1").expect("node-1");
    let target = lab.pod("pod-2-1").expect("pod-2-1");
    let target_ip = target.ip.expect("pod-2-1 has an address");
    let podman = Podman::new(&node.socket, &config::cni_plugin(&harness::bin_dir()));
    podman.import_busybox();
    let before = support::ipam(lab).allocations.len();

    // One container, its own address on eth0 printed, then a request to a pod
    // on node-2 whose answer names the peer it saw.
    let script = format!("ip -4 addr show eth0; echo hello | nc -w 5 {target_ip} 80");
    let out = podman.run(&[
        "run",
        "--rm",
        "--network",
        NETWORK,
        // Podman's defaults are above this machine's hard limits, which root
        // here may not raise.
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let (ip, prefix) = eth0_addr(&text).unwrap_or_else(|| panic!("no address in {text:?}"));
    assert_eq!(prefix, 32, "{text}");
    assert!(node.pod_cidr.contains(ip), "{ip} outside {}", node.pod_cidr);
    assert!(
        text.contains(&format!("lumen-echo name=pod-2-1 peer={ip}:")),
        "pod-2-1 saw the container's own address: {text}"
    );

    // --rm: podman called DEL; the address and the veth are gone.
    let ipam = support::ipam(lab);
    assert_eq!(ipam.allocations.len(), before, "{ipam:?}");
    assert!(!ipam.allocations.iter().any(|a| a.ip == ip), "{ipam:?}");
    wait_until(
        "the container's veth deleted",
        Duration::from_secs(5),
        || support::host_veths(lab).len() == 1,
    );
}
