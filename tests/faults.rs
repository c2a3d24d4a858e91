//! A fault for every step: each step of the saga, forward or compensation, made to fail in each
//! way it can (`run --fault STEP=KIND`) against the real binaries; the saga's outcome, then what
//! `recover` settles it to, and `audit` clean after every case. README's fault table is this
//! table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use saga_orchestrator::participants::{Participants, Target};
use saga_orchestrator::{OrchestratorSettings, grpc::GrpcParticipants};
use saga_proto::order::v1::OrderStatus;
use saga_proto::payment::v1::PaymentStatus;
use saga_proto::shipping::v1::ShipmentStatus;
use support::{Process, binary, eventually, temp_dir};

/// Where each step runs, for the crash cases.
fn service_of(step: &str) -> usize {
    match step {
        "ProcessPayment" | "RefundPayment" => 1,
        "StartShipping" | "CancelShipping" => 2,
        _ => 0,
    }
}

/// The end state after `recover`: order, payment, shipment (`None`: there is none).
type End = (
    Option<OrderStatus>,
    Option<PaymentStatus>,
    Option<ShipmentStatus>,
);

struct Case {
    step: &'static str,
    kind: &'static str,
    /// The scenario that reaches the step, and any other fault it needs.
    scenario: &'static str,
    also: Option<&'static str>,
    /// Outcomes the saga may end with.
    outcomes: &'static [&'static str],
    /// End states after `recover`.
    ends: &'static [End],
}

use OrderStatus as O;
use PaymentStatus as P;
use ShipmentStatus as S;

const NOTHING: End = (None, None, None);
const VOIDED: End = (Some(O::Cancelled), Some(P::Voided), Some(S::Cancelled));
const DECLINED: End = (Some(O::Cancelled), Some(P::Declined), Some(S::Cancelled));
const REFUNDED: End = (Some(O::Cancelled), Some(P::Refunded), Some(S::Cancelled));
const SHIP_FAILED: End = (Some(O::Cancelled), Some(P::Refunded), Some(S::Failed));
const APPROVED: End = (Some(O::Approved), Some(P::Completed), Some(S::Started));
const DECLINED_ONLY: End = (Some(O::Cancelled), Some(P::Declined), None);

macro_rules! case {
    ($step:literal, $kind:literal, $scenario:literal, $also:expr, [$($outcome:literal),+], [$($end:expr),+]) => {
        Case {
            step: $step,
            kind: $kind,
            scenario: $scenario,
            also: $also,
            outcomes: &[$($outcome),+],
            ends: &[$($end),+],
        }
    };
}

/// Every step × kind. A declined payment cancels with a voided shipping slot only when
/// `recover` settled it; the saga's own unwinding leaves no shipment at all.
const CASES: &[Case] = &[
    case!(
        "CreateOrder",
        "business",
        "success",
        None,
        ["failed"],
        [NOTHING]
    ),
    case!(
        "CreateOrder",
        "unavailable",
        "success",
        None,
        ["failed"],
        [NOTHING]
    ),
    case!(
        "CreateOrder",
        "lost-reply",
        "success",
        None,
        ["failed"],
        [VOIDED]
    ),
    case!(
        "CreateOrder",
        "hang",
        "success",
        None,
        ["failed"],
        [NOTHING]
    ),
    case!(
        "CreateOrder",
        "crash",
        "success",
        None,
        ["failed"],
        [VOIDED]
    ),
    case!(
        "ProcessPayment",
        "business",
        "success",
        None,
        ["payment_failed"],
        [DECLINED_ONLY]
    ),
    case!(
        "ProcessPayment",
        "unavailable",
        "success",
        None,
        ["payment_failed"],
        [(Some(O::Cancelled), Some(P::Voided), None)]
    ),
    case!(
        "ProcessPayment",
        "lost-reply",
        "success",
        None,
        ["payment_failed"],
        [(Some(O::Cancelled), Some(P::Refunded), None)]
    ),
    case!(
        "ProcessPayment",
        "hang",
        "success",
        None,
        ["payment_failed"],
        [(Some(O::Cancelled), Some(P::Voided), None)]
    ),
    case!(
        "ProcessPayment",
        "crash",
        "success",
        None,
        ["compensation_failed"],
        [REFUNDED]
    ),
    case!(
        "StartShipping",
        "business",
        "success",
        None,
        ["shipping_failed"],
        [SHIP_FAILED]
    ),
    case!(
        "StartShipping",
        "unavailable",
        "success",
        None,
        ["shipping_failed"],
        [REFUNDED]
    ),
    case!(
        "StartShipping",
        "lost-reply",
        "success",
        None,
        ["shipping_failed"],
        [REFUNDED]
    ),
    case!(
        "StartShipping",
        "hang",
        "success",
        None,
        ["shipping_failed"],
        [REFUNDED]
    ),
    case!(
        "StartShipping",
        "crash",
        "success",
        None,
        ["compensation_failed"],
        [REFUNDED]
    ),
    case!(
        "ApproveOrder",
        "business",
        "success",
        None,
        ["approval_failed"],
        [REFUNDED]
    ),
    case!(
        "ApproveOrder",
        "unavailable",
        "success",
        None,
        ["approval_failed"],
        [REFUNDED]
    ),
    case!(
        "ApproveOrder",
        "lost-reply",
        "success",
        None,
        ["completed"],
        [APPROVED]
    ),
    case!(
        "ApproveOrder",
        "hang",
        "success",
        None,
        ["approval_failed"],
        [REFUNDED]
    ),
    case!(
        "ApproveOrder",
        "crash",
        "success",
        None,
        ["compensation_failed"],
        [APPROVED]
    ),
    case!(
        "FailOrder",
        "unavailable",
        "shipping-failure",
        None,
        ["compensation_failed"],
        [SHIP_FAILED]
    ),
    case!(
        "FailOrder",
        "lost-reply",
        "shipping-failure",
        None,
        ["compensation_failed"],
        [SHIP_FAILED]
    ),
    case!(
        "FailOrder",
        "hang",
        "shipping-failure",
        None,
        ["compensation_failed"],
        [SHIP_FAILED]
    ),
    case!(
        "FailOrder",
        "crash",
        "shipping-failure",
        None,
        ["compensation_failed"],
        [SHIP_FAILED]
    ),
    case!(
        "CancelOrder",
        "unavailable",
        "payment-failure",
        None,
        ["compensation_failed"],
        [DECLINED]
    ),
    case!(
        "CancelOrder",
        "lost-reply",
        "payment-failure",
        None,
        ["compensation_failed"],
        [DECLINED_ONLY]
    ),
    case!(
        "CancelOrder",
        "hang",
        "payment-failure",
        None,
        ["compensation_failed"],
        [DECLINED]
    ),
    case!(
        "CancelOrder",
        "crash",
        "payment-failure",
        None,
        ["compensation_failed"],
        [DECLINED_ONLY]
    ),
    case!(
        "RefundPayment",
        "unavailable",
        "shipping-failure",
        None,
        ["compensation_failed"],
        [SHIP_FAILED]
    ),
    case!(
        "RefundPayment",
        "lost-reply",
        "shipping-failure",
        None,
        ["compensation_failed"],
        [SHIP_FAILED]
    ),
    case!(
        "RefundPayment",
        "hang",
        "shipping-failure",
        None,
        ["compensation_failed"],
        [SHIP_FAILED]
    ),
    case!(
        "RefundPayment",
        "crash",
        "shipping-failure",
        None,
        ["compensation_failed"],
        [SHIP_FAILED]
    ),
    case!(
        "CancelShipping",
        "unavailable",
        "success",
        Some("ApproveOrder=business"),
        ["compensation_failed"],
        [REFUNDED]
    ),
    case!(
        "CancelShipping",
        "lost-reply",
        "success",
        Some("ApproveOrder=business"),
        ["compensation_failed"],
        [REFUNDED]
    ),
    case!(
        "CancelShipping",
        "hang",
        "success",
        Some("ApproveOrder=business"),
        ["compensation_failed"],
        [REFUNDED]
    ),
    case!(
        "CancelShipping",
        "crash",
        "success",
        Some("ApproveOrder=business"),
        ["compensation_failed"],
        [REFUNDED]
    ),
];

const NAMES: [(&str, &str); 3] = [
    ("order-service", "ORDER"),
    ("payment-service", "PAYMENT"),
    ("shipping-service", "SHIPPING"),
];

/// The three services on fixed ports and directories, so that a crashed one restarts on its
/// own data.
struct Services {
    procs: Vec<Process>,
    dirs: Vec<PathBuf>,
    ports: Vec<u16>,
}

impl Services {
    fn spawn(&self, index: usize) -> Process {
        let (name, prefix) = NAMES[index];
        let listen = format!("127.0.0.1:{}", self.ports[index]);
        let env = [
            (format!("{prefix}_LISTEN_ADDR"), listen),
            (format!("{prefix}_FAULTS__ALLOW_INJECTION"), "true".into()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut process = Process::service_in(name, prefix, &env, self.dirs[index].clone());
        process.addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.ports[index]));
        process
    }

    async fn start() -> Self {
        let mut services = Services {
            procs: Vec::new(),
            dirs: NAMES.iter().map(|(name, _)| temp_dir(name)).collect(),
            ports: (0..3).map(|_| support::free_port()).collect(),
        };
        for index in 0..3 {
            let process = services.spawn(index);
            services.procs.push(process);
        }
        for process in &services.procs {
            assert!(process.wait_serving().await);
        }
        services
    }

    /// Restarts service `index` if it is no longer running (an injected crash). With
    /// `crashing`, waits up to 10 s for the exit: the caller may see the connection drop before
    /// the process is gone (its sockets close before its exit is reported).
    async fn revive(&mut self, index: usize, crashing: bool) -> bool {
        if crashing {
            let child = &mut self.procs[index].child;
            eventually(Duration::from_secs(10), || {
                let exited = matches!(child.try_wait(), Ok(Some(_)));
                async move { exited }
            })
            .await;
        }
        // `try_wait` keeps the status of a child it has reaped.
        let Ok(Some(status)) = self.procs[index].child.try_wait() else {
            return false;
        };
        assert_eq!(status.code(), Some(86), "{} died otherwise", NAMES[index].0);
        let process = self.spawn(index);
        assert!(process.wait_serving().await);
        // Its data directory is the new one's: keep it.
        std::mem::forget(std::mem::replace(&mut self.procs[index], process));
        true
    }

    fn settings(&self) -> OrchestratorSettings {
        let url = |index: usize| format!("http://127.0.0.1:{}", self.ports[index]);
        OrchestratorSettings {
            order_url: url(0),
            payment_url: url(1),
            shipping_url: url(2),
            ..OrchestratorSettings::default()
        }
    }

    /// The orchestrator with short retry budgets, so that every fault outlasts them.
    fn orchestrator(&self, args: &[&str]) -> std::process::Output {
        let settings = self.settings();
        let mut command = Command::new(binary("saga-orchestrator"));
        command
            .env("SAGA_ORDER_URL", &settings.order_url)
            .env("SAGA_PAYMENT_URL", &settings.payment_url)
            .env("SAGA_SHIPPING_URL", &settings.shipping_url)
            .env("SAGA_WAIT_READY_SECS", "0")
            .env("RUST_LOG", "error")
            .env("LOG_FORMAT", "json");
        for policy in ["RETRY", "COMPENSATION_RETRY"] {
            command
                .env(format!("SAGA_{policy}__MAX_ATTEMPTS"), "2")
                .env(format!("SAGA_{policy}__CALL_TIMEOUT_MS"), "400")
                .env(format!("SAGA_{policy}__INITIAL_BACKOFF_MS"), "5")
                .env(format!("SAGA_{policy}__MAX_BACKOFF_MS"), "10");
        }
        command.args(args).output().unwrap()
    }
}

async fn end_state(participants: &GrpcParticipants, saga_id: &str) -> End {
    let Ok(order) = participants.find_order(saga_id).await else {
        return NOTHING;
    };
    let by = Target::OrderId(order.order_id.clone());
    let payment = participants.get_payment(&by).await.ok();
    let shipment = participants.get_shipment(&by).await.ok();
    (
        Some(order.status()),
        payment.map(|p| p.status()),
        shipment.map(|s| s.status()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_fails_every_way_and_recover_settles_it() {
    let mut services = Services::start().await;
    let participants = GrpcParticipants::new(&services.settings()).unwrap();
    let mut failures = Vec::new();
    for case in CASES {
        let label = format!("{}={}", case.step, case.kind);
        let run_id = format!("fault-{}-{}", case.step, case.kind).to_lowercase();
        let saga_id = format!("{run_id}-0");
        let fault = format!("{}={}", case.step, case.kind);
        let mut args = vec![
            "run",
            "--run-id",
            &run_id,
            "--scenario",
            case.scenario,
            "--output",
            "json",
            "--fault",
            &fault,
        ];
        if let Some(also) = case.also {
            args.extend(["--fault", also]);
        }
        let output = services.orchestrator(&args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: serde_json::Value = stdout
            .lines()
            .find_map(|line| serde_json::from_str(line).ok())
            .unwrap_or_default();
        let outcome = report["outcome"].as_str().unwrap_or("none").to_owned();

        let crashed = services
            .revive(service_of(case.step), case.kind == "crash")
            .await;
        let recovered = services.orchestrator(&["recover", "--older-than", "0s"]);
        let audited = services.orchestrator(&["audit", "--older-than", "0s"]);
        let end = end_state(&participants, &saga_id).await;
        let text = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();
        println!("{label:32} saga {outcome:20} crashed {crashed:5} after recover {end:?}");
        if !case.outcomes.contains(&outcome.as_str()) {
            failures.push(format!(
                "{label}: saga ended {outcome}, expected {:?}: {stdout}",
                case.outcomes
            ));
        }
        if case.kind == "crash" && !crashed {
            failures.push(format!("{label}: the service did not crash"));
        }
        if !recovered.status.success() {
            failures.push(format!("{label}: recover failed: {}", text(&recovered)));
        }
        if !audited.status.success() {
            failures.push(format!("{label}: audit failed: {}", text(&audited)));
        }
        if !case.ends.contains(&end) {
            failures.push(format!(
                "{label}: ended {end:?}, expected one of {:?}",
                case.ends
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let (steps, kinds): (std::collections::BTreeSet<_>, std::collections::BTreeSet<_>) =
        CASES.iter().map(|c| (c.step, c.kind)).unzip();
    assert_eq!(
        (steps.len(), kinds.len()),
        (8, 5),
        "every step and kind is covered"
    );
}

#[test]
fn a_fault_the_service_does_not_allow_is_refused() {
    // The order service without allow_injection.
    let order = Process::service("order-service", "ORDER", &[]);
    let payment = Process::service("payment-service", "PAYMENT", &[]);
    let shipping = Process::service("shipping-service", "SHIPPING", &[]);
    let output = Command::new(binary("saga-orchestrator"))
        .env("SAGA_ORDER_URL", order.url())
        .env("SAGA_PAYMENT_URL", payment.url())
        .env("SAGA_SHIPPING_URL", shipping.url())
        .env("SAGA_WAIT_READY_SECS", "20")
        .args([
            "run",
            "--scenario",
            "success",
            "--fault",
            "CreateOrder=unavailable",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains("x-inject-fault"), "{stdout}");

    let bad = Command::new(binary("saga-orchestrator"))
        .args(["run", "--fault", "RefundPayment=business"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("RefundPayment has no business failure"),
        "{stderr}"
    );
}
