//! `order-service`: the OrderService gRPC server (default port 50051).
use std::process::ExitCode;

use order_service::{DEFAULT_PORTS, OrderApi};

#[tokio::main]
async fn main() -> ExitCode {
    saga_common::server::run_service("order-service", "ORDER", DEFAULT_PORTS, OrderApi::server)
        .await
}
