//! Entering a network namespace from inside a process (`setns(CLONE_NEWNET)`), so a lab
//! tool can run in a pod's or node's namespace without `ip netns exec`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `ip netns add` mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {path}")]
    Setns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The path of the namespace `ip netns add <name>` created.
pub fn path_for(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Moves the calling thread into the network namespace at `netns_path`.
///
/// Only the calling thread moves: threads spawned afterwards inherit its namespace,
/// threads that already exist stay where they were. Call this first thing, before
/// spawning any threads or building an async runtime, so every socket the process
/// opens lives in the target namespace.
pub fn enter(netns_path: &Path) -> Result<(), NetnsError> {
    let file = File::open(netns_path).map_err(|source| NetnsError::Open {
        path: netns_path.to_path_buf(),
        source,
    })?;
    // SAFETY: the descriptor is valid for the duration of the call; `file` owns it and
    // closes it afterwards, which does not undo the namespace switch.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetnsError::Setns {
            path: netns_path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `program` to be run inside the network namespace at `netns_path`, entered
/// between fork and exec: what a container runtime living in that namespace
/// does when it runs a plugin. Unlike `ip netns exec` it leaves the mount
/// namespace alone (no private mount namespace, no `/sys` remount), which costs
/// milliseconds a call and serialises concurrent calls on the kernel's mount lock.
pub fn command_in(
    netns_path: &Path,
    program: impl AsRef<std::ffi::OsStr>,
) -> Result<Command, NetnsError> {
    let file = File::open(netns_path).map_err(|source| NetnsError::Open {
        path: netns_path.to_path_buf(),
        source,
    })?;
    let mut cmd = Command::new(program);
    // SAFETY: between fork and exec the closure makes one async-signal-safe
    // system call on a descriptor the closure owns (open until the Command is
    // dropped) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::mpsc;
    use std::thread;

    fn current_netns_inode() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    }

    #[test]
    fn path_for_uses_run_netns() {
        assert_eq!(path_for("lab-pod-1"), PathBuf::from("/run/netns/lab-pod-1"));
    }

    #[test]
    fn enter_missing_path_is_open_error() {
        let err = enter(Path::new("/run/netns/lumen-no-such-namespace")).unwrap_err();
        assert!(matches!(err, NetnsError::Open { .. }), "{err:?}");
    }

    /// One thread unshares into a fresh namespace (freed when both threads end, so
    /// nothing to clean up); another enters it through its /proc path.
    #[test]
    fn enter_moves_thread_into_other_namespace() {
        let original = current_netns_inode();
        let (path_tx, path_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let holder = thread::spawn(move || {
            // SAFETY: unshare affects only this test thread's namespace membership.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            if rc != 0 {
                path_tx.send(None).unwrap();
                return;
            }
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let path = PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
            path_tx.send(Some((path, current_netns_inode()))).unwrap();
            // Keep the namespace alive until the other thread has entered it.
            done_rx.recv().ok();
        });
        let Some((path, fresh)) = path_rx.recv().unwrap() else {
            println!("skipped: unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN");
            holder.join().unwrap();
            return;
        };
        assert_ne!(fresh, original);
        let entered = thread::spawn(move || {
            enter(&path).unwrap();
            current_netns_inode()
        })
        .join()
        .unwrap();
        done_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(entered, fresh);
        assert_eq!(
            current_netns_inode(),
            original,
            "the test thread must not move"
        );
    }
}
