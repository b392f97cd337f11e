//! How benchmarks state their results: ratios to the baseline and one verdict line
//! per target.

use std::fmt;

/// Whether one target was met, with the figure that decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub target: String,
    pub met: bool,
    pub detail: String,
}

impl Verdict {
    pub fn new(target: impl Into<String>, met: bool, detail: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            met,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let met = if self.met { "met" } else { "NOT met" };
        write!(f, "verdict: {}: {met} ({})", self.target, self.detail)
    }
}

/// Print the verdicts after a blank line, one per line.
pub fn print_verdicts(verdicts: &[Verdict]) {
    println!();
    for verdict in verdicts {
        println!("{verdict}");
    }
}

/// `value / baseline`; NaN when the baseline is zero, so a broken baseline never
/// passes for a met target.
pub fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline == 0.0 {
        f64::NAN
    } else {
        value / baseline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_lines() {
        let v = Verdict::new("stream lumen/flannel >= 1.05", false, "1.02x");
        assert_eq!(
            v.to_string(),
            "verdict: stream lumen/flannel >= 1.05: NOT met (1.02x)"
        );
        assert!(Verdict::new("x", true, "y").to_string().contains(": met ("));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(3.0, 2.0), 1.5);
        assert!(ratio(1.0, 0.0).is_nan());
    }
}
