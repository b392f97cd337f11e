//! Compiles the C datapath with clang (`-O2 -g -target bpf`) and measures the
//! layout of every struct in `bpf/maps.h` with the host compiler, so a test can
//! hold the Rust mirrors to the header.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpf = Path::new("bpf");
    for entry in std::fs::read_dir(bpf).expect("agent/bpf exists") {
        let path = entry.expect("readable agent/bpf").path();
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    run(Command::new(&clang)
        .args([
            "-O2",
            "-g",
            "-Wall",
            "-Werror",
            "-target",
            "bpf",
            // v3: 32-bit atomics (flow counters, TCP flags).
            "-mcpu=v3",
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
            "bpf/datapath.bpf.c",
            "-o",
        ])
        .arg(out.join("datapath.bpf.o")));

    let probe = out.join("layout_probe");
    run(Command::new(&clang)
        .args([
            "-O0",
            "-I/usr/include/x86_64-linux-gnu",
            "bpf/layout_probe.c",
            "-o",
        ])
        .arg(&probe));
    let output = Command::new(&probe).output().expect("layout probe runs");
    assert!(output.status.success(), "layout probe failed");
    std::fs::write(out.join("layout.rs"), output.stdout).expect("OUT_DIR is writable");
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} (install clang and libbpf-dev: cargo xtask deps): {e}")
    });
    assert!(status.success(), "{cmd:?} failed");
}
