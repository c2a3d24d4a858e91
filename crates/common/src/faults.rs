//! Failures chosen by configuration or per request, never by editing code.
//!
//! Every service can add latency and answer UNAVAILABLE at random. Half of those transient errors
//! strike after the call took effect (a lost reply), which is what makes idempotent retries matter.
//! Payment and shipping can also fail their business step (decline, shipment failure) at a
//! configured rate or, when `allow_injection` is on, when a request carries `x-inject-failure`.
use std::time::Duration;

use serde::Deserialize;
use tonic::{Status, metadata::MetadataMap};

/// The request header that asks a service to fail its business step.
pub const INJECT_FAILURE_HEADER: &str = "x-inject-failure";

/// Faults every service can inject.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TransientFaults {
    /// Probability (0 to 1) that a call answers UNAVAILABLE.
    pub transient_error_rate: f64,
    /// Latency added to every call, in milliseconds.
    pub latency_ms: u64,
}

/// Faults of a service with a business step that can fail. (Fields are repeated rather than
/// flattened: serde cannot deny unknown fields through `flatten`, and typos must fail.)
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BusinessFaults {
    /// Probability (0 to 1) that a call answers UNAVAILABLE.
    pub transient_error_rate: f64,
    /// Latency added to every call, in milliseconds.
    pub latency_ms: u64,
    /// Probability (0 to 1) that the business step fails (payment declined, shipment failed).
    pub failure_rate: f64,
    /// Honour the `x-inject-failure` request header. Off by default; on for demos and tests.
    pub allow_injection: bool,
}

/// When an injected transient error strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    None,
    /// Fail before touching state.
    Before,
    /// Apply the call, then lose the reply.
    After,
}

impl TransientFaults {
    pub fn check(&self) -> Result<(), String> {
        rate("transient_error_rate", self.transient_error_rate)
    }

    /// Sleeps the configured latency and draws this call's transient fault.
    pub async fn enter(&self) -> Result<Transient, Status> {
        if self.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.latency_ms)).await;
        }
        if !draw(self.transient_error_rate) {
            return Ok(Transient::None);
        }
        if fastrand::bool() {
            Err(unavailable())
        } else {
            Ok(Transient::After)
        }
    }
}

/// Runs one call under `faults`: latency, a transient error before, or a lost reply after.
pub async fn guarded<T>(
    faults: &TransientFaults,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<tonic::Response<T>, Status> {
    // `call` is lazy: nothing of it runs before the latency and the first draw.
    let transient = faults.enter().await?;
    transient.exit(call.await).map(tonic::Response::new)
}

/// The error an injected transient fault answers with.
pub fn unavailable() -> Status {
    Status::unavailable("injected transient fault; retry the call")
}

impl Transient {
    /// Hands back `result`, unless this call's reply is to be lost.
    pub fn exit<T>(self, result: Result<T, Status>) -> Result<T, Status> {
        match (self, result) {
            (Transient::After, Ok(_)) => Err(unavailable()),
            (_, result) => result,
        }
    }
}

impl BusinessFaults {
    pub fn check(&self) -> Result<(), String> {
        self.transient().check()?;
        rate("failure_rate", self.failure_rate)
    }

    /// The transient part, shared with every service.
    pub fn transient(&self) -> TransientFaults {
        TransientFaults {
            transient_error_rate: self.transient_error_rate,
            latency_ms: self.latency_ms,
        }
    }

    /// Whether this call's business step must fail, and why. A request asking for a failure
    /// that this service does not allow is refused rather than silently served.
    pub fn business_failure(&self, metadata: &MetadataMap) -> Result<Option<String>, Status> {
        if let Some(value) = metadata.get(INJECT_FAILURE_HEADER) {
            if !self.allow_injection {
                return Err(Status::failed_precondition(format!(
                    "this service does not accept the '{INJECT_FAILURE_HEADER}' header; \
                     enable faults.allow_injection to use it"
                )));
            }
            let why = value.to_str().unwrap_or("").trim();
            let why = if why.is_empty() || why == "true" {
                "requested"
            } else {
                why
            };
            return Ok(Some(format!(
                "injected failure ({})",
                crate::validate::shorten(why)
            )));
        }
        Ok(draw(self.failure_rate).then(|| "simulated failure (faults.failure_rate)".to_owned()))
    }
}

fn rate(name: &str, value: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "faults.{name} must be between 0 and 1, got {value}"
        ))
    }
}

fn draw(probability: f64) -> bool {
    probability > 0.0 && fastrand::f64() < probability
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        let mut faults = BusinessFaults::default();
        assert!(faults.check().is_ok());
        faults.failure_rate = 1.5;
        assert!(faults.check().is_err());
        faults.failure_rate = 0.0;
        faults.transient_error_rate = -0.1;
        assert!(faults.check().is_err());
    }

    #[test]
    fn header_is_refused_unless_allowed() {
        let mut metadata = MetadataMap::new();
        metadata.insert(INJECT_FAILURE_HEADER, "true".parse().unwrap());
        let mut faults = BusinessFaults::default();
        let err = faults.business_failure(&metadata).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        faults.allow_injection = true;
        assert!(faults.business_failure(&metadata).unwrap().is_some());
        assert!(
            faults
                .business_failure(&MetadataMap::new())
                .unwrap()
                .is_none()
        );
        faults.failure_rate = 1.0;
        assert!(
            faults
                .business_failure(&MetadataMap::new())
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn lost_reply_turns_success_into_unavailable() {
        assert_eq!(
            Transient::After.exit(Ok(1)).unwrap_err().code(),
            tonic::Code::Unavailable
        );
        assert_eq!(Transient::None.exit(Ok(1)).unwrap(), 1);
    }
}
