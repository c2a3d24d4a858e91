//! `shipping-service`: the ShippingService gRPC server (default port 50053).
use std::process::ExitCode;

use shipping_service::{DEFAULT_PORTS, ShippingApi};

#[tokio::main]
async fn main() -> ExitCode {
    saga_common::server::run_service(
        "shipping-service",
        "SHIPPING",
        DEFAULT_PORTS,
        ShippingApi::server,
    )
    .await
}
