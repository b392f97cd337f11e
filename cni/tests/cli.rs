//! Runs the built `lumen-cni` binary the way a container runtime does: a clean
//! environment of `CNI_*` variables, the configuration on stdin.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a broken harness should fail the test loudly"
)]
fn invoke(vars: &[(&str, &str)], stdin: Option<&str>) -> (Option<i32>, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lumen-cni"))
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout {stdout:?} is not JSON: {e}"));
    (output.status.code(), json)
}

const ADD: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "abc123"),
    ("CNI_NETNS", "/var/run/netns/pod"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/opt/cni/bin"),
];

#[test]
fn version() {
    let (status, out) = invoke(&[("CNI_COMMAND", "VERSION")], None);
    assert_eq!(status, Some(0));
    assert_eq!(
        out.to_string(),
        r#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
    );
    let (status, out) = invoke(
        &[("CNI_COMMAND", "VERSION")],
        Some(r#"{"cniVersion":"1.0.0"}"#),
    );
    assert_eq!(status, Some(0));
    assert_eq!(out["cniVersion"], "1.0.0");
}

#[test]
fn malformed_configuration_is_code_6() {
    let (status, out) = invoke(ADD, Some("{\"cniVersion\": \"1.0.0\", "));
    assert_eq!(status, Some(1));
    assert_eq!(out["cniVersion"], "1.1.0");
    assert_eq!(out["code"], 6);
    assert!(
        out["msg"].as_str().unwrap().contains("not valid JSON"),
        "{out}"
    );
}

#[test]
fn missing_command_is_code_4() {
    let (status, out) = invoke(&[], Some("{}"));
    assert_eq!(status, Some(1));
    assert_eq!(out["code"], 4);
}

#[test]
fn unreachable_agent_is_code_11() {
    let conf = r#"{"cniVersion":"0.4.0","name":"lumen-net","type":"lumen",
        "agentSocket":"/nonexistent/lumen/agent.sock","timeoutMs":100}"#;
    let (status, out) = invoke(ADD, Some(conf));
    assert_eq!(status, Some(1));
    assert_eq!(out["cniVersion"], "0.4.0");
    assert_eq!(out["code"], 11);
}
