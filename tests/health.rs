//! Health and shutdown over real gRPC: SERVING while up, NOT_SERVING as soon as shutdown begins,
//! and in-flight calls finish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use order_service::OrderApi;
use order_service::orders::Orders;
use saga_common::faults::TransientFaults;
use saga_common::settings::ShutdownSettings;
use saga_proto::order::v1::order_service_client::OrderServiceClient;
use saga_proto::order::v1::order_service_server::OrderServiceServer;
use saga_proto::order::v1::{CreateOrderRequest, LineItem};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A one-line order under `key`.
fn order_request(key: impl Into<String>) -> CreateOrderRequest {
    CreateOrderRequest {
        idempotency_key: key.into(),
        user_id: "alice".into(),
        currency: "EUR".into(),
        items: vec![LineItem {
            sku: "s".into(),
            quantity: 1,
            unit_price_minor: 1,
        }],
    }
}

async fn status(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    Ok(health.check(request).await?.into_inner().status())
}

#[tokio::test]
async fn health_turns_not_serving_when_shutdown_begins_and_calls_in_flight_finish() {
    let slow = TransientFaults {
        latency_ms: 400,
        ..TransientFaults::default()
    };
    let mut server = support::serve_with(
        OrderServiceServer::new(OrderApi::new(Arc::new(Orders::in_memory()))),
        ShutdownSettings {
            drain_delay_ms: 300,
            grace_period_secs: 5,
        },
        saga_common::settings::Limits::default(),
        slow.injected(),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "order.v1.OrderService"] {
        assert_eq!(
            status(&mut health, service).await.unwrap(),
            ServingStatus::Serving
        );
    }
    // A call in flight when the shutdown begins.
    let mut client = OrderServiceClient::new(channel);
    let in_flight =
        tokio::spawn(async move { client.create_order(order_request("in-flight")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.begin_shutdown();
    let turned = support::eventually(Duration::from_secs(2), || {
        let mut health = health.clone();
        async move {
            let overall = status(&mut health, "").await;
            let named = status(&mut health, "order.v1.OrderService").await;
            matches!(
                (overall, named),
                (Ok(ServingStatus::NotServing), Ok(ServingStatus::NotServing))
            )
        }
    })
    .await;
    assert!(
        turned,
        "health should report NOT_SERVING once shutdown begins"
    );
    let finished = in_flight.await.unwrap();
    assert!(
        finished.is_ok(),
        "the in-flight call should finish: {finished:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("the server should stop within its grace period");
}

#[tokio::test]
async fn unknown_services_are_reported_not_found() {
    let server = support::serve(
        OrderServiceServer::new(OrderApi::new(Arc::new(Orders::in_memory()))),
        support::quick_shutdown(),
    )
    .await;
    let mut health = HealthClient::new(support::channel(server.url()).await);
    let err = status(&mut health, "payment.v1.PaymentService")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn overload_is_refused_at_once_and_callers_back_off() {
    let slow = TransientFaults {
        latency_ms: 200,
        ..TransientFaults::default()
    };
    let limits = saga_common::settings::Limits {
        max_concurrent_requests: 2,
        request_timeout_ms: 5_000,
    };
    let server = support::serve_with(
        OrderServiceServer::new(OrderApi::new(Arc::new(Orders::in_memory()))),
        support::quick_shutdown(),
        limits,
        slow.injected(),
    )
    .await;
    let client = OrderServiceClient::new(support::channel(server.url()).await);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..12 {
        let mut client = client.clone();
        calls.spawn(async move {
            client
                .create_order(order_request(format!("overload-{i}")))
                .await
        });
    }
    let mut refused = 0;
    let mut served = 0;
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert!(
        served >= 2 && refused >= 1,
        "served {served}, refused {refused}"
    );

    // The orchestrator's retry policy treats RESOURCE_EXHAUSTED as transient and gets through.
    let policy = saga_orchestrator::retry::RetryPolicy {
        max_attempts: 50,
        call_timeout_ms: 2_000,
        initial_backoff_ms: 20,
        max_backoff_ms: 200,
    };
    let mut results = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (client, policy) = (client.clone(), policy.clone());
        results.spawn(async move {
            policy
                .run(|| {
                    let mut client = client.clone();
                    async move {
                        client
                            .create_order(order_request(format!("patient-{i}")))
                            .await
                    }
                })
                .await
        });
    }
    while let Some(result) = results.join_next().await {
        assert!(result.unwrap().is_ok());
    }
}
