//! `--since`: a duration back from now (`5m`, `2h`, `1h30m`) or an RFC 3339
//! time (`2024-11-23T19:30:00Z`), turned into the query's nanoseconds since the
//! Unix epoch.

use jiff::{SignedDuration, Timestamp};

/// Why a `--since` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinceError {
    #[error(
        "--since {value:?} is neither a duration (5m, 2h, 1h30m) nor an RFC 3339 time \
         (2024-11-23T19:30:00Z)"
    )]
    Invalid { value: String },
    #[error("--since {value:?} is before 1970")]
    BeforeEpoch { value: String },
}

/// The time `value` names, in nanoseconds since the epoch, with `now` as the
/// reference for durations.
pub fn parse_since(value: &str, now: Timestamp) -> Result<u64, SinceError> {
    let value = value.trim();
    let invalid = || SinceError::Invalid {
        value: value.to_owned(),
    };
    let at = if let Ok(ago) = value.parse::<SignedDuration>() {
        // `-5m` reads as "5 minutes ago" to jiff; a future start is a mistake.
        if ago.is_negative() {
            return Err(invalid());
        }
        now.checked_sub(ago).map_err(|_| invalid())?
    } else {
        value.parse::<Timestamp>().map_err(|_| invalid())?
    };
    u64::try_from(at.as_nanosecond()).map_err(|_| SinceError::BeforeEpoch {
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_NS: i128 = 1_732_390_201_123_000_000;

    fn since(value: &str) -> Result<u64, SinceError> {
        parse_since(value, Timestamp::from_nanosecond(NOW_NS).unwrap())
    }

    #[test]
    fn durations_count_back_from_now() {
        let now = u64::try_from(NOW_NS).unwrap();
        let second = 1_000_000_000;
        for (value, ago) in [
            ("5m", 300),
            ("2h", 7200),
            ("1h30m", 5400),
            ("90s", 90),
            (" 10s ", 10),
            ("0s", 0),
        ] {
            assert_eq!(since(value), Ok(now - ago * second), "{value}");
        }
    }

    #[test]
    fn rfc3339_times_are_absolute() {
        assert_eq!(since("2024-11-23T19:30:00Z"), Ok(1_732_390_200_000_000_000));
        assert_eq!(
            since("2024-11-23T20:30:00.5+01:00"),
            Ok(1_732_390_200_500_000_000)
        );
    }

    #[test]
    fn nonsense_is_refused_with_examples() {
        for value in ["", "5", "soon", "-5m", "2024-11-23T19:30:00", "1d"] {
            let err = since(value).unwrap_err();
            assert_eq!(
                err,
                SinceError::Invalid {
                    value: value.trim().to_owned()
                },
                "{value}"
            );
        }
        assert!(since("x").unwrap_err().to_string().contains("1h30m"));
        assert!(matches!(
            since("1969-12-31T23:59:59Z"),
            Err(SinceError::BeforeEpoch { .. })
        ));
    }
}
