//! Orchestrator settings (prefix `SAGA_`): endpoints, deadlines and retry policies.
use std::time::Duration;

use saga_common::config::Settings;
use serde::Deserialize;

use crate::retry::RetryPolicy;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorSettings {
    /// OrderService URL (`SAGA_ORDER_URL`).
    pub order_url: String,
    /// PaymentService URL (`SAGA_PAYMENT_URL`).
    pub payment_url: String,
    /// ShippingService URL (`SAGA_SHIPPING_URL`).
    pub shipping_url: String,
    /// Retry policy of forward steps and reads (`SAGA_RETRY__MAX_ATTEMPTS`, …).
    pub retry: RetryPolicy,
    /// Retry policy of compensations: longer, because giving up leaves money behind
    /// (`SAGA_COMPENSATION_RETRY__MAX_ATTEMPTS`, …).
    pub compensation_retry: RetryPolicy,
    /// Seconds to wait for every service to report SERVING before the first saga
    /// (`SAGA_WAIT_READY_SECS`); 0 skips the wait.
    pub wait_ready_secs: u64,
    /// Customer of the demo orders (`SAGA_USER_ID`).
    pub user_id: String,
    /// Delivery address of the demo orders (`SAGA_SHIPPING_ADDRESS`).
    pub shipping_address: String,
    /// Trace UI that the printed trace links point at (`SAGA_JAEGER_UI`).
    pub jaeger_ui: String,
    /// TLS to the services (`SAGA_TLS__*`); used for `https://` URLs.
    pub tls: ClientTls,
}

/// Client TLS: the CA that signed the services' certificates, and this client's own
/// certificate for mutual TLS.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// The name to verify in the services' certificates, when it differs from the URL's host.
    pub domain: Option<String>,
}

impl Default for OrchestratorSettings {
    fn default() -> Self {
        Self {
            order_url: "http://127.0.0.1:50051".into(),
            payment_url: "http://127.0.0.1:50052".into(),
            shipping_url: "http://127.0.0.1:50053".into(),
            retry: RetryPolicy::default(),
            compensation_retry: RetryPolicy {
                max_attempts: 20,
                ..RetryPolicy::default()
            },
            wait_ready_secs: 30,
            user_id: "demo-user".into(),
            shipping_address: "221B Baker Street, London".into(),
            jaeger_ui: "http://localhost:16686".into(),
            tls: ClientTls::default(),
        }
    }
}

impl OrchestratorSettings {
    pub fn wait_ready(&self) -> Duration {
        Duration::from_secs(self.wait_ready_secs)
    }
}

impl Settings for OrchestratorSettings {
    fn check(&self) -> Result<(), String> {
        for (name, url) in [
            ("order_url", &self.order_url),
            ("payment_url", &self.payment_url),
            ("shipping_url", &self.shipping_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "{name} must start with http:// or https://, got '{url}'"
                ));
            }
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err("tls.cert_file and tls.key_file go together".into());
        }
        self.retry.check("retry")?;
        self.compensation_retry.check("compensation_retry")
    }
}
