//! `lumen-cni`: the CNI plugin executable. The runtime passes the command in
//! `CNI_*` variables and the network configuration on stdin; the answer goes to
//! stdout and the exit status says whether it is a result or an error.

use std::io::IsTerminal;
use std::process::ExitCode;

use lumen_cni::CniEnv;

fn main() -> ExitCode {
    let env = CniEnv::from_vars(std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    }));
    let stdin = std::io::stdin();
    // Someone typing `CNI_COMMAND=VERSION lumen-cni` at a shell should not have
    // to press ctrl-D: a terminal is no configuration.
    let invocation = if stdin.is_terminal() {
        lumen_cni::invoke(&env, &mut std::io::empty())
    } else {
        lumen_cni::invoke(&env, &mut stdin.lock())
    };
    if let Some(error) = &invocation.log_error {
        eprintln!("lumen-cni: {error}: {}", source_of(error));
    }
    if let Some(stdout) = &invocation.stdout {
        println!("{stdout}");
    }
    if invocation.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn source_of(error: &lumen_cni::log::LogError) -> String {
    std::error::Error::source(error)
        .map(ToString::to_string)
        .unwrap_or_default()
}
