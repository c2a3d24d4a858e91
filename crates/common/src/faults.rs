//! Failures chosen by configuration or per request, never by editing code.
//!
//! Every service can add latency and answer UNAVAILABLE at random. Half of those transient errors
//! strike after the call took effect (a lost reply), which is what makes idempotent retries matter.
//! Payment and shipping can also fail their business step (decline, shipment failure) at a
//! configured rate or, when `allow_injection` is on, when a request carries `x-inject-failure`.
//!
//! Any step, forward or compensation, can be made to fail in a chosen way ([`FaultKind`]): by
//! configuration (`faults.steps`, e.g. `RefundPayment=unavailable@0.5`), or per request with the
//! `x-inject-fault` header (same syntax, several steps at once) when `allow_injection` is on.
//! [`FaultLayer`] applies them around every RPC, so the handlers stay free of them.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use tonic::{Status, metadata::MetadataMap};

/// The request header that asks a service to fail its business step.
pub const INJECT_FAILURE_HEADER: &str = "x-inject-failure";
/// The request header that asks for step faults: `RPC=KIND[,RPC=KIND...]`.
pub const INJECT_FAULT_HEADER: &str = "x-inject-fault";

/// How a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The step's business failure: a declined payment, a failed shipment, a refused order
    /// or approval. Only steps that have one.
    Business,
    /// UNAVAILABLE before anything happens.
    Unavailable,
    /// The call takes effect, then its reply is lost (UNAVAILABLE).
    LostReply,
    /// No answer until past the caller's deadline, and no effect.
    Hang,
    /// The process exits right after the call's effect is committed.
    Crash,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Business,
        FaultKind::Unavailable,
        FaultKind::LostReply,
        FaultKind::Hang,
        FaultKind::Crash,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Business => "business",
            FaultKind::Unavailable => "unavailable",
            FaultKind::LostReply => "lost-reply",
            FaultKind::Hang => "hang",
            FaultKind::Crash => "crash",
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown fault kind '{text}': use one of {}",
                    names.join(", ")
                )
            })
    }
}

/// The steps that have a business failure, and the steps there are.
pub const BUSINESS_STEPS: [&str; 4] = [
    "CreateOrder",
    "ProcessPayment",
    "StartShipping",
    "ApproveOrder",
];
pub const STEPS: [&str; 8] = [
    "CreateOrder",
    "ProcessPayment",
    "StartShipping",
    "ApproveOrder",
    "FailOrder",
    "CancelOrder",
    "RefundPayment",
    "CancelShipping",
];

/// One step's fault: which RPC, how, and how often (0 to 1).
#[derive(Debug, Clone, PartialEq)]
pub struct StepFault {
    pub rpc: String,
    pub kind: FaultKind,
    pub rate: f64,
}

/// Parses `RPC=KIND[@RATE]`, comma-separated (`RefundPayment=unavailable@0.5,ApproveOrder=hang`).
pub fn parse_step_faults(text: &str) -> Result<Vec<StepFault>, String> {
    let mut faults = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (rpc, rest) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' should look like RefundPayment=unavailable"))?;
        let (kind, rate) = match rest.split_once('@') {
            Some((kind, rate)) => {
                let rate: f64 = rate
                    .trim()
                    .parse()
                    .map_err(|_| format!("rate in '{part}' must be a number from 0 to 1"))?;
                (kind, rate)
            }
            None => (rest, 1.0),
        };
        let rpc = rpc.trim();
        if !STEPS.contains(&rpc) {
            return Err(format!(
                "unknown step '{rpc}' in '{part}': use one of {}",
                STEPS.join(", ")
            ));
        }
        let kind = FaultKind::parse(kind.trim())?;
        if kind == FaultKind::Business && !BUSINESS_STEPS.contains(&rpc) {
            return Err(format!(
                "{rpc} has no business failure; it can be made unavailable, lost-reply, hang or crash"
            ));
        }
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("rate in '{part}' must be from 0 to 1"));
        }
        faults.push(StepFault {
            rpc: rpc.to_owned(),
            kind,
            rate,
        });
    }
    Ok(faults)
}

/// What one service injects around its RPCs: latency and random transient errors on every
/// call, and the configured step faults.
#[derive(Debug, Clone, Default)]
pub struct InjectedFaults {
    pub transient: TransientFaults,
    pub steps: Vec<StepFault>,
    /// Honour the `x-inject-fault` header.
    pub allow_injection: bool,
}

/// Marks a request whose business step must fail (the `business` kind), for the handler.
#[derive(Debug, Clone, Copy)]
pub struct BusinessFailure;

/// Applies [`InjectedFaults`] around every RPC of the services it wraps (health checks and
/// reflection excepted).
#[derive(Debug, Clone)]
pub struct FaultLayer {
    faults: Arc<InjectedFaults>,
}

impl FaultLayer {
    pub fn new(faults: InjectedFaults) -> Self {
        Self {
            faults: Arc::new(faults),
        }
    }
}

impl<S> tower_layer::Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner,
            faults: self.faults.clone(),
        }
    }
}

/// The service [`FaultLayer`] wraps.
#[derive(Debug, Clone)]
pub struct FaultService<S> {
    inner: S,
    faults: Arc<InjectedFaults>,
}

/// The gRPC deadline a request carries (`grpc-timeout`: digits and a unit).
fn deadline(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl InjectedFaults {
    /// The fault this call of `rpc` suffers, if any: the request's own first, then the
    /// configured ones, each drawn at its rate. A request asking for faults that this service
    /// does not allow is refused rather than silently served.
    fn draw(&self, rpc: &str, headers: &http::HeaderMap) -> Result<Option<FaultKind>, Status> {
        if let Some(value) = headers.get(INJECT_FAULT_HEADER) {
            if !self.allow_injection {
                return Err(Status::failed_precondition(format!(
                    "this service does not accept the '{INJECT_FAULT_HEADER}' header; \
                     enable faults.allow_injection to use it"
                )));
            }
            let text = value.to_str().unwrap_or_default();
            let requested = parse_step_faults(text)
                .map_err(|err| Status::invalid_argument(format!("{INJECT_FAULT_HEADER}: {err}")))?;
            if let Some(fault) = requested.iter().find(|f| f.rpc == rpc && draw(f.rate)) {
                return Ok(Some(fault.kind));
            }
        }
        Ok(self
            .steps
            .iter()
            .find(|f| f.rpc == rpc && draw(f.rate))
            .map(|f| f.kind))
    }
}

impl<S, B, R> tower_service::Service<http::Request<B>> for FaultService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().trim_start_matches('/');
        if path.starts_with("grpc.health.") || path.starts_with("grpc.reflection.") {
            return Box::pin(self.inner.call(request));
        }
        let rpc = path.rsplit('/').next().unwrap_or_default().to_owned();
        let faults = self.faults.clone();
        let fault = faults.draw(&rpc, request.headers());
        let hang = deadline(request.headers()).unwrap_or(Duration::from_secs(30));
        if let Ok(Some(FaultKind::Business)) = fault {
            request.extensions_mut().insert(BusinessFailure);
        }
        // The ready service handles this request; a clone takes its place for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let fault = match fault {
                Ok(fault) => fault,
                Err(status) => return Ok(status.into_http()),
            };
            let transient = match faults.transient.enter().await {
                Ok(transient) => transient,
                Err(status) => return Ok(status.into_http()),
            };
            match fault {
                Some(FaultKind::Unavailable) => return Ok(unavailable().into_http()),
                Some(FaultKind::Business)
                    if !matches!(rpc.as_str(), "ProcessPayment" | "StartShipping") =>
                {
                    let refused = format!("injected business failure: {rpc} refused");
                    return Ok(Status::failed_precondition(refused).into_http());
                }
                Some(FaultKind::Hang) => {
                    // Stuck before doing anything: the call never takes effect.
                    tracing::warn!(rpc, "injected fault: hanging past the caller's deadline");
                    tokio::time::sleep(hang + Duration::from_millis(500)).await;
                    return Ok(
                        Status::unavailable("injected fault: hung past the deadline").into_http(),
                    );
                }
                _ => {}
            }
            let response = inner.call(request).await?;
            let failed = crate::telemetry::grpc_status(response.headers()).0 != 0;
            match fault {
                Some(FaultKind::LostReply) if !failed => {
                    return Ok(Status::unavailable(
                        "injected fault: the reply was lost after the call took effect",
                    )
                    .into_http());
                }
                Some(FaultKind::Crash) if !failed => {
                    tracing::error!(
                        rpc,
                        "injected fault: crashing after the call's effect was committed"
                    );
                    crate::telemetry::flush_logs();
                    std::process::exit(CRASH_EXIT_CODE);
                }
                _ => {}
            }
            if transient == Transient::After && !failed {
                return Ok(unavailable().into_http());
            }
            Ok(response)
        })
    }
}

/// The exit code of an injected crash.
pub const CRASH_EXIT_CODE: i32 = 86;

/// Faults every service can inject.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TransientFaults {
    /// Probability (0 to 1) that a call answers UNAVAILABLE.
    pub transient_error_rate: f64,
    /// Latency added to every call, in milliseconds.
    pub latency_ms: u64,
    /// Step faults, `RPC=KIND[@RATE]` comma-separated (see [`parse_step_faults`]).
    pub steps: String,
    /// Honour the `x-inject-fault` request header. Off by default; on for demos and tests.
    pub allow_injection: bool,
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
    /// Step faults, `RPC=KIND[@RATE]` comma-separated (see [`parse_step_faults`]).
    pub steps: String,
    /// Honour the `x-inject-failure` and `x-inject-fault` request headers. Off by default; on
    /// for demos and tests.
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
        parse_step_faults(&self.steps).map_err(|err| format!("faults.steps: {err}"))?;
        rate("transient_error_rate", self.transient_error_rate)
    }

    /// What the service's [`FaultLayer`] injects.
    pub fn injected(&self) -> InjectedFaults {
        InjectedFaults {
            transient: self.clone(),
            // Checked at start-up; a bad list injects nothing rather than failing later.
            steps: parse_step_faults(&self.steps).unwrap_or_default(),
            allow_injection: self.allow_injection,
        }
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

    /// The part every service has.
    pub fn transient(&self) -> TransientFaults {
        TransientFaults {
            transient_error_rate: self.transient_error_rate,
            latency_ms: self.latency_ms,
            steps: self.steps.clone(),
            allow_injection: self.allow_injection,
        }
    }

    /// Whether this request's business step must fail, and why: asked by a `business` step
    /// fault, the `x-inject-failure` header, or the configured rate.
    pub fn business_failure_of<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<Option<String>, Status> {
        if request.extensions().get::<BusinessFailure>().is_some() {
            return Ok(Some("injected failure (business step fault)".to_owned()));
        }
        self.business_failure(request.metadata())
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
