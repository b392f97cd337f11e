//! One reachability probe between lab members by name ("pod-1-1 → pod-2-3 on
//! 80/tcp"): resolving the names, running `netio::probe` from inside the source's
//! namespace, and the outcome as a line or as JSON.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::LabError;
use crate::config;
use crate::lab::Lab;
use crate::netio::{self, probe::Proto};

/// The outcome of one probe, as `lumen lab probe -o json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub ok: bool,
    pub from: String,
    pub to: String,
    pub ip: Ipv4Addr,
    pub proto: Proto,
    /// 0 for ICMP.
    pub port: u16,
    pub rtt_us: Option<u64>,
    pub reply: Option<String>,
    pub error: Option<String>,
}

impl ProbeReport {
    /// "80/tcp", or "icmp".
    pub fn port_proto(&self) -> String {
        port_proto(self.port, self.proto)
    }
}

/// "80/tcp", or "icmp".
pub fn port_proto(port: u16, proto: Proto) -> String {
    match proto {
        Proto::Icmp => proto.to_string(),
        _ => format!("{port}/{proto}"),
    }
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = format!(
            "{} {} -> {} ({})",
            self.port_proto(),
            self.from,
            self.to,
            self.ip
        );
        if self.ok {
            write!(f, "ok {head}")?;
            if let Some(us) = self.rtt_us {
                // Microseconds as milliseconds with two decimals.
                write!(f, " rtt={}.{:02}ms", us / 1000, (us % 1000) / 10)?;
            }
            if let Some(reply) = &self.reply {
                write!(f, " reply={reply:?}")?;
            }
            Ok(())
        } else {
            write!(
                f,
                "FAIL {head}: {}",
                self.error.as_deref().unwrap_or("unknown error")
            )
        }
    }
}

impl Lab {
    /// Probe `to` (a pod, node, `external` or an IPv4 address) from `from`'s
    /// namespace with `spec` ("80/tcp", "81/udp", "icmp"…).
    ///
    /// The probe runs on a fresh thread that enters the namespace, so the caller's
    /// threads never change namespace. A probe that gets no answer is a report with
    /// `ok: false`; unknown names or an unusable namespace are errors.
    pub fn probe(
        &self,
        from: &str,
        to: &str,
        spec: &str,
        timeout: Duration,
    ) -> Result<ProbeReport, LabError> {
        let (port, proto) =
            netio::probe::parse_port_proto(spec).map_err(|source| LabError::ProbeSpec {
                spec: spec.to_owned(),
                source,
            })?;
        let netns = self.require_netns(from)?;
        let ip = self.require_address(to)?;
        let path = config::netns_path(&netns);
        let outcome = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    netio::netns::enter(&path)?;
                    Ok(netio::probe::probe(ip, proto, port, timeout))
                })
                .join()
        });
        let result = match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(source)) => return Err(LabError::Netns { netns, source }),
            Err(_) => {
                return Err(LabError::ProbePanicked {
                    from: from.to_owned(),
                    to: to.to_owned(),
                });
            }
        };
        let mut report = ProbeReport {
            ok: result.is_ok(),
            from: from.to_owned(),
            to: to.to_owned(),
            ip,
            proto,
            port,
            rtt_us: None,
            reply: None,
            error: None,
        };
        match result {
            Ok(reply) => {
                report.rtt_us = Some(u64::try_from(reply.rtt.as_micros()).unwrap_or(u64::MAX));
                report.reply = Some(reply.reply);
            }
            Err(err) => report.error = Some(error_chain(&err)),
        }
        Ok(report)
    }
}

/// An error and its sources, joined by ": ".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::state::LabState;
    use crate::state::tests::config;

    fn report(ok: bool) -> ProbeReport {
        ProbeReport {
            ok,
            from: "pod-1-1".into(),
            to: "pod-2-3".into(),
            ip: Ipv4Addr::new(10, 244, 2, 3),
            proto: Proto::Tcp,
            port: 80,
            rtt_us: ok.then_some(310),
            reply: ok.then(|| "lumen-echo name=pod-2-3".into()),
            error: (!ok).then(|| "tcp to 10.244.2.3:80: refused".into()),
        }
    }

    #[test]
    fn renders_lines_and_json() {
        assert_eq!(
            report(true).to_string(),
            r#"ok 80/tcp pod-1-1 -> pod-2-3 (10.244.2.3) rtt=0.31ms reply="lumen-echo name=pod-2-3""#
        );
        assert_eq!(
            report(false).to_string(),
            "FAIL 80/tcp pod-1-1 -> pod-2-3 (10.244.2.3): tcp to 10.244.2.3:80: refused"
        );
        let json = serde_json::to_value(report(true)).unwrap();
        for key in [
            "ok", "from", "to", "ip", "proto", "port", "rtt_us", "reply", "error",
        ] {
            assert!(json.get(key).is_some(), "{key} missing: {json}");
        }
        assert_eq!(json["proto"], "tcp");
        let back: ProbeReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report(true));
        assert_eq!(port_proto(0, Proto::Icmp), "icmp");
    }

    #[test]
    fn refuses_unknown_names_and_specs() {
        let lab = Lab::from_state(LabState::plan(&config(Path::new("/r"))));
        let ms = Duration::from_millis(10);
        assert!(matches!(
            lab.probe("pod-1-1", "10.0.0.1", "80/xyz", ms).unwrap_err(),
            LabError::ProbeSpec { .. }
        ));
        assert!(matches!(
            lab.probe("nobody", "10.0.0.1", "icmp", ms).unwrap_err(),
            LabError::UnknownTarget { .. }
        ));
        // A pod without an IP yet cannot be a destination.
        assert!(matches!(
            lab.probe("pod-1-1", "pod-1-2", "icmp", ms).unwrap_err(),
            LabError::NoAddress { .. }
        ));
        assert!(matches!(
            lab.probe("pod-1-1", "10.0.0.1", "icmp", ms).unwrap_err(),
            LabError::Netns { .. }
        ));
    }
}
