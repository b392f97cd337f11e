//! The CNI spec versions this plugin speaks and the `VERSION` answer.

use std::fmt;

use serde_json::{Value, json};

/// A CNI spec version the plugin supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, oldest first, as `VERSION` lists them.
    pub const SUPPORTED: [CniVersion; 3] = [Self::V0_4_0, Self::V1_0_0, Self::V1_1_0];

    /// The newest supported version: what the plugin answers in when the
    /// runtime did not say (or said something it cannot speak).
    pub const LATEST: CniVersion = Self::V1_1_0;

    /// The version named by a `cniVersion` string, if supported.
    pub fn parse(s: &str) -> Option<Self> {
        Self::SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// `STATUS` and `GC` arrived in spec 1.1.0; older runtimes never send them.
    pub fn has_status_and_gc(self) -> bool {
        self >= Self::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `VERSION` answer, echoing the runtime's `cniVersion` when it is one we
/// speak so the runtime decodes the answer in the version it asked in.
pub fn version_info(requested: Option<CniVersion>) -> Value {
    let supported: Vec<&str> = CniVersion::SUPPORTED.iter().map(|v| v.as_str()).collect();
    json!({
        "cniVersion": requested.unwrap_or(CniVersion::LATEST).as_str(),
        "supportedVersions": supported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_supported_versions() {
        for v in CniVersion::SUPPORTED {
            assert_eq!(CniVersion::parse(v.as_str()), Some(v));
        }
        for s in ["0.1.0", "0.3.1", "1.2.0", "2.0.0", "", "1.1"] {
            assert_eq!(CniVersion::parse(s), None, "{s}");
        }
    }

    #[test]
    fn status_and_gc_only_from_1_1_0() {
        assert!(!CniVersion::V0_4_0.has_status_and_gc());
        assert!(!CniVersion::V1_0_0.has_status_and_gc());
        assert!(CniVersion::V1_1_0.has_status_and_gc());
    }

    #[test]
    fn version_info_defaults_to_latest() {
        assert_eq!(
            version_info(None).to_string(),
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
        );
        assert_eq!(
            version_info(Some(CniVersion::V0_4_0))["cniVersion"],
            "0.4.0"
        );
    }
}
