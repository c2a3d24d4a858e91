//! Record times: microseconds since the Unix epoch in the stores, `google.protobuf.Timestamp`
//! on the wire.
use std::time::{SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

use crate::validate::ValidationError;

/// Now, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// A stored time on the wire; `None` for 0, a record written before times were kept.
pub fn timestamp(micros: i64) -> Option<Timestamp> {
    (micros != 0).then(|| Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).unwrap_or(0),
    })
}

/// The first second of year 1 and the last of year 9999: the range a Timestamp may hold.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// A request's time in microseconds; out of Timestamp's range is an error naming `field`.
pub fn micros(field: &'static str, time: &Timestamp) -> Result<i64, ValidationError> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&time.seconds) {
        return Err(ValidationError::new(
            field,
            format!(
                "seconds must be within years 1 to 9999, got {}",
                time.seconds
            ),
        ));
    }
    if !(0..1_000_000_000).contains(&time.nanos) {
        return Err(ValidationError::new(
            field,
            format!("nanos must be from 0 to 999999999, got {}", time.nanos),
        ));
    }
    Ok(time.seconds * 1_000_000 + i64::from(time.nanos / 1_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_out_of_range_is_refused() {
        let now = now_micros();
        let wire = timestamp(now).unwrap();
        assert_eq!(micros("t", &wire), Ok(now));
        assert_eq!(timestamp(0), None);
        let before_epoch = timestamp(-1_500_000).unwrap();
        assert_eq!(
            (before_epoch.seconds, before_epoch.nanos),
            (-2, 500_000_000)
        );
        let too_late = Timestamp {
            seconds: MAX_SECONDS + 1,
            nanos: 0,
        };
        assert_eq!(
            micros("updated_before", &too_late).unwrap_err().field,
            "updated_before"
        );
        let bad_nanos = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert!(micros("t", &bad_nanos).is_err());
    }
}
