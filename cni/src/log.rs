//! The optional invocation log (`logFile`): one line appended per invocation,
//! so an operator can see what the runtime asked and how long it took without
//! the runtime's own logs.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::CniError;

/// Why the log line could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("appending to log file {path} failed")]
    Append {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One invocation, as logged.
#[derive(Debug)]
pub struct Entry<'a> {
    pub at: SystemTime,
    /// `CNI_COMMAND` as given, even if it is not a command.
    pub command: Option<&'a str>,
    pub container_id: Option<&'a str>,
    pub error: Option<&'a CniError>,
    pub duration: Duration,
}

impl Entry<'_> {
    /// `ts=<unix seconds> command=ADD container=<id> outcome=ok duration_ms=<ms>`,
    /// with `code=` and a quoted `error=` when it failed.
    pub fn line(&self) -> String {
        let ts = self.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut line = format!(
            "ts={}.{:03} command={} container={}",
            ts.as_secs(),
            ts.subsec_millis(),
            token(self.command),
            token(self.container_id),
        );
        match self.error {
            None => line.push_str(" outcome=ok"),
            Some(error) => {
                let (msg, details) = error.msg_and_details();
                let text = if details.is_empty() {
                    msg
                } else {
                    format!("{msg}: {details}")
                };
                // `{:?}` quotes and escapes, keeping the entry on one line.
                let _ = write!(line, " outcome=error code={} error={text:?}", error.code());
            }
        }
        let _ = writeln!(
            line,
            " duration_ms={:.3}",
            self.duration.as_secs_f64() * 1000.0
        );
        line
    }
}

/// A value as it appears after `key=`: bare when that is unambiguous, quoted
/// when it would break the line or the `key=value` split (values come from the
/// runtime unvalidated when the invocation fails early); `-` when absent.
fn token(value: Option<&str>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v)
            if v.is_empty()
                || v.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '=')) =>
        {
            format!("{v:?}")
        }
        Some(v) => v.to_owned(),
    }
}

/// Append the entry in one write, so concurrent invocations (the runtime runs
/// several pods at once) do not interleave within a line.
pub fn append(path: &Path, entry: &Entry<'_>) -> Result<(), LogError> {
    let append = |source| LogError::Append {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(append)?;
    file.write_all(entry.line().as_bytes()).map_err(append)
}

#[cfg(test)]
mod tests {
    use crate::env::EnvError;

    use super::*;

    fn entry(error: Option<&CniError>) -> Entry<'_> {
        Entry {
            at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            command: Some("ADD"),
            container_id: Some("abc123"),
            error,
            duration: Duration::from_micros(3_250),
        }
    }

    #[test]
    fn formats_lines() {
        assert_eq!(
            entry(None).line(),
            "ts=1700000000.250 command=ADD container=abc123 outcome=ok duration_ms=3.250\n"
        );
        let error = CniError::from(EnvError::UnknownCommand {
            command: "ad\nd".into(),
        });
        let mut failed = entry(Some(&error));
        failed.command = Some("ad\nd");
        failed.container_id = None;
        assert_eq!(
            failed.line(),
            "ts=1700000000.250 command=\"ad\\nd\" container=- outcome=error code=4 \
             error=\"CNI_COMMAND \\\"ad\\\\nd\\\" is not a CNI command\" duration_ms=3.250\n"
        );
    }
}
