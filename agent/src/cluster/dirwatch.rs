//! Wakes the manifest source when a file of its directory is written, moved
//! or deleted (inotify), so a change is read within milliseconds instead of
//! at the next poll.
//!
//! Only completed writes count (`IN_CLOSE_WRITE`, renames, deletions): a file
//! being written is not read half-way through by this wake-up. [`DirWake`] is
//! what the manifest source and the `Traceflow` objects follow.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// An inotify watch on one directory.
#[derive(Debug)]
pub struct DirWatch {
    fd: AsyncFd<OwnedFd>,
}

impl DirWatch {
    pub fn new(dir: &Path) -> io::Result<Self> {
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: plain inotify_init1(2); the fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by inotify_init1 and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE;
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an `OwnedFd` stays open and returns the same fd until dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Wait until something changed, then take every event queued so far:
    /// one wake-up for a burst of changes.
    pub async fn changed(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        let mut read_any = false;
        loop {
            let mut guard = self.fd.readable().await?;
            let read = guard.try_io(|fd| {
                // SAFETY: reads into a buffer of the length given.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n)
                }
            });
            match read {
                Ok(Ok(_)) => read_any = true,
                Ok(Err(error)) => return Err(error),
                // Drained: the readiness was cleared by `try_io`.
                Err(_) if read_any => return Ok(()),
                Err(_) => {}
            }
        }
    }
}

/// The wake-ups of a loop that follows a directory: inotify's, and a poll's
/// at the latest (alone where inotify is unavailable or has failed).
#[derive(Debug)]
pub struct DirWake {
    inotify: Option<DirWatch>,
    what: &'static str,
}

impl DirWake {
    /// `what` names the follower in the warnings.
    pub fn new(dir: &Path, what: &'static str) -> Self {
        let inotify = DirWatch::new(dir)
            .inspect_err(|error| tracing::warn!(%error, what, "no inotify: polling only"))
            .ok();
        Self { inotify, what }
    }

    /// Until something in the directory changed, or `poll` has passed.
    pub async fn next(&mut self, poll: Duration) {
        let Some(inotify) = self.inotify.as_mut() else {
            return tokio::time::sleep(poll).await;
        };
        tokio::select! {
            woken = inotify.changed() => if let Err(error) = woken {
                tracing::warn!(%error, what = self.what, "inotify failed: polling only");
                self.inotify = None;
            },
            () = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_on_completed_writes_and_deletions() {
        let dir = std::env::temp_dir().join(format!("lumen-dirwatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut watch = DirWatch::new(&dir).expect("inotify");
        let wait = Duration::from_secs(5);
        let file = dir.join("a.yaml");
        std::fs::write(&file, "kind: Namespace\n").expect("write");
        tokio::time::timeout(wait, watch.changed())
            .await
            .expect("woken by the write")
            .expect("read");
        std::fs::remove_file(&file).expect("remove");
        tokio::time::timeout(wait, watch.changed())
            .await
            .expect("woken by the deletion")
            .expect("read");
        // Nothing else happened: no wake-up.
        let idle = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        assert!(idle.is_err(), "woken with nothing changed");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
