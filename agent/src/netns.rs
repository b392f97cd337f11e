//! Network namespaces: entering one for the whole process at start-up, and running
//! a piece of netlink work inside a pod's namespace on a thread of its own.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why entering or working in a namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} cannot be opened")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path} failed")]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting a runtime inside {path} failed")]
    Runtime {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the worker thread for {path} panicked")]
    Panicked { path: PathBuf },
}

/// Move the calling thread into the namespace at `path`. Threads spawned later
/// inherit it, so the agent calls this before building its runtime.
pub fn enter(path: &Path) -> Result<(), NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    // SAFETY: setns on a valid, open namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetnsError::Enter {
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Run `work` on a fresh thread inside the namespace at `path`, with a
/// single-threaded runtime of its own; the thread ends with the work, so no
/// thread of the agent's runtime ever changes namespace.
pub async fn run_in<F, Fut, T, E>(path: &Path, work: F) -> Result<Result<T, E>, NetnsError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>>,
    T: Send + 'static,
    E: Send + 'static,
{
    let shown = path.to_owned();
    let owned = path.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let outcome = enter(&owned).and_then(|()| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| NetnsError::Runtime {
                    path: owned,
                    source,
                })?;
            Ok(rt.block_on(work()))
        });
        // The receiver only goes away if the request was abandoned.
        let _ = tx.send(outcome);
    });
    rx.await.map_err(|_| NetnsError::Panicked { path: shown })?
}

/// Open a namespace file, e.g. to move a link into it.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })
}
