//! `payment-service`: the PaymentService gRPC server (default port 50052).
use std::process::ExitCode;

use payment_service::{DEFAULT_PORTS, PaymentApi};

#[tokio::main]
async fn main() -> ExitCode {
    saga_common::server::run_service(
        "payment-service",
        "PAYMENT",
        DEFAULT_PORTS,
        PaymentApi::server,
    )
    .await
}
