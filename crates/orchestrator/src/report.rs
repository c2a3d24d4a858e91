//! What a saga did: its outcome, ids, each step, and how it reads as text or JSON.
use serde::Serialize;

use crate::saga::Scenario;

/// How a saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every step succeeded; the order is APPROVED.
    Completed,
    /// The payment failed; the order was cancelled.
    PaymentFailed,
    /// Shipping failed; the payment was refunded and the order cancelled.
    ShippingFailed,
    /// The order could not be approved; everything was compensated.
    ApprovalFailed,
    /// The saga could not start (no order was made, or its creation stayed unknown).
    Failed,
    /// A compensation ran out of attempts: something may be left charged or shipping.
    CompensationFailed,
}

impl Outcome {
    /// Its name in JSON and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::PaymentFailed => "payment_failed",
            Outcome::ShippingFailed => "shipping_failed",
            Outcome::ApprovalFailed => "approval_failed",
            Outcome::Failed => "failed",
            Outcome::CompensationFailed => "compensation_failed",
        }
    }

    /// The line printed for the saga.
    pub fn headline(self) -> &'static str {
        match self {
            Outcome::Completed => ">>> All steps completed successfully",
            Outcome::PaymentFailed => ">>> Payment failed. Order has been cancelled.",
            Outcome::ShippingFailed => ">>> Shipping failed. Payment refunded and order cancelled.",
            Outcome::ApprovalFailed => {
                ">>> Order approval failed. Shipment cancelled, payment refunded and order cancelled."
            }
            Outcome::Failed => ">>> Saga failed before anything needed compensating.",
            Outcome::CompensationFailed => ">>> Compensation failed. The saga needs attention.",
        }
    }

    /// Completed or fully compensated: the system did its job.
    pub fn is_settled(self) -> bool {
        !matches!(self, Outcome::Failed | Outcome::CompensationFailed)
    }

    pub fn is_compensated(self) -> bool {
        matches!(
            self,
            Outcome::PaymentFailed | Outcome::ShippingFailed | Outcome::ApprovalFailed
        )
    }
}

/// One call of the saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// RPC name, e.g. `ProcessPayment`.
    pub step: &'static str,
    pub compensation: bool,
    /// `ok` or `error`.
    pub result: &'static str,
    /// The resource's state after the call, or the error's code and message.
    pub detail: String,
    pub attempts: u32,
    pub duration_ms: u64,
}

/// The read-back check after a saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consistency {
    pub consistent: bool,
    pub violations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaReport {
    pub saga_id: String,
    /// What the saga was asked to play; none for a saga settled by `recover`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scenario: Option<Scenario>,
    pub outcome: Outcome,
    /// Why the saga did not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub order_id: Option<String>,
    pub payment_id: Option<String>,
    pub shipping_id: Option<String>,
    pub steps: Vec<StepReport>,
    pub duration_ms: u64,
    pub duration_us: u64,
    /// The saga's trace, when traces are exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
}

impl SagaReport {
    pub fn new(saga_id: String, scenario: impl Into<Option<Scenario>>) -> Self {
        Self {
            saga_id,
            scenario: scenario.into(),
            outcome: Outcome::Failed,
            reason: None,
            order_id: None,
            payment_id: None,
            shipping_id: None,
            steps: Vec::new(),
            duration_ms: 0,
            duration_us: 0,
            trace_id: None,
            consistency: None,
        }
    }

    /// Ended as it should have: settled, and the participants agree.
    pub fn is_ok(&self) -> bool {
        self.outcome.is_settled() && self.consistency.as_ref().is_none_or(|c| c.consistent)
    }

    /// Human-readable lines: the headline, then the ids, the trace (linked in the UI at
    /// `trace_ui`) and anything that went wrong.
    pub fn to_text(&self, trace_ui: &str) -> String {
        let mut text = format!("{}\n", self.outcome.headline());
        let id = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        text.push_str(&format!(
            "    saga {} | order {} | payment {} | shipment {} | {} ms\n",
            self.saga_id,
            id(&self.order_id),
            id(&self.payment_id),
            id(&self.shipping_id),
            self.duration_ms
        ));
        if let Some(reason) = &self.reason {
            text.push_str(&format!("    reason: {reason}\n"));
        }
        if let Some(trace_id) = &self.trace_id {
            let ui = trace_ui.trim_end_matches('/');
            text.push_str(&format!("    trace {trace_id} {ui}/trace/{trace_id}\n"));
        }
        if let Some(consistency) = self.consistency.as_ref().filter(|c| !c.consistent) {
            for violation in &consistency.violations {
                text.push_str(&format!("    INCONSISTENT: {violation}\n"));
            }
        }
        text
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lines_are_exact() {
        assert_eq!(
            Outcome::Completed.headline(),
            ">>> All steps completed successfully"
        );
        assert_eq!(
            Outcome::PaymentFailed.headline(),
            ">>> Payment failed. Order has been cancelled."
        );
        assert_eq!(
            Outcome::ShippingFailed.headline(),
            ">>> Shipping failed. Payment refunded and order cancelled."
        );
    }

    #[test]
    fn json_names_the_outcome() {
        let mut report = SagaReport::new("s-1".into(), Scenario::Success);
        report.outcome = Outcome::PaymentFailed;
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["outcome"], "payment_failed");
        assert_eq!(json["scenario"], "success");
        let text = report.to_text("http://ui");
        assert!(text.starts_with(Outcome::PaymentFailed.headline()));
        assert!(!text.contains("trace"));
        report.trace_id = Some("abc".into());
        assert!(
            report
                .to_text("http://ui/")
                .contains("trace abc http://ui/trace/abc")
        );
    }
}
