//! The settings of a service binary (`<PREFIX>_*`): address, drain, faults, store, limits, TLS.
use std::future::Future;
use std::net::SocketAddr;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::Settings;

/// How a service drains on SIGTERM.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Time between turning health NOT_SERVING and refusing new calls, in milliseconds, so that
    /// load balancers and probes see the change first.
    pub drain_delay_ms: u64,
    /// How long in-flight calls may still run after that, in seconds.
    pub grace_period_secs: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_delay_ms: 500,
            grace_period_secs: 10,
        }
    }
}

/// The settings of a service binary, `F` being its kind of faults and `St` its store's settings.
/// Variables: `<PREFIX>_LISTEN_ADDR`, `<PREFIX>_SHUTDOWN__DRAIN_DELAY_MS`,
/// `<PREFIX>_SHUTDOWN__GRACE_PERIOD_SECS`, `<PREFIX>_FAULTS__<FIELD>`, `<PREFIX>_STORE__<FIELD>`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings<F, St> {
    /// Address to listen on; `0.0.0.0` and the service's own port when unset.
    pub listen_addr: Option<SocketAddr>,
    /// Drain and grace periods.
    pub shutdown: ShutdownSettings,
    /// Injected latency, transient errors and (payment, shipping) business failures.
    pub faults: F,
    /// Where the service keeps its records.
    pub store: St,
    /// Bounds on concurrency and time per request.
    pub limits: Limits,
    /// TLS, and mutual TLS when a client CA is given.
    pub tls: ServerTls,
    /// A second, plaintext listener serving only `grpc.health.v1.Health`: kubelet gRPC probes
    /// cannot speak TLS.
    pub health_listen_addr: Option<SocketAddr>,
}

/// Settings that open a service's store: `saga_store::StoreSettings`, which keeps the database
/// drivers out of this crate (every binary links it).
pub trait OpenStore<T>: DeserializeOwned + Default {
    type Error: std::fmt::Display;
    /// Opens (and migrates) the store of `service`.
    fn open_store(&self, service: &str) -> impl Future<Output = Result<T, Self::Error>> + Send;
}

/// Server TLS (`<PREFIX>_TLS__*`): PEM files; a client CA turns on mutual TLS.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTls {
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// Clients must present a certificate signed by this CA.
    pub client_ca_file: Option<std::path::PathBuf>,
}

fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| format!("cannot read {what} {}: {err}", path.display()))
}

impl ServerTls {
    /// The tonic TLS configuration, or `None` for plaintext. The files are read and parsed here,
    /// so that a bad path or a broken PEM stops the service before it touches its store.
    pub fn config(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let (cert, key) = match (&self.cert_file, &self.key_file) {
            (None, None) if self.client_ca_file.is_none() => return Ok(None),
            (Some(cert), Some(key)) => (read_pem("tls.cert_file", cert)?, read_pem("tls.key_file", key)?),
            _ => return Err("TLS needs both tls.cert_file and tls.key_file (and tls.client_ca_file for mutual TLS)".into()),
        };
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.client_ca_file {
            config =
                config.client_ca_root(Certificate::from_pem(read_pem("tls.client_ca_file", ca)?));
        }
        // Building the acceptor parses the certificates and the key.
        tonic::transport::Server::builder()
            .tls_config(config.clone())
            .map_err(|err| {
                // tonic's own message is just "transport error"; the cause names the problem.
                let cause = std::error::Error::source(&err)
                    .map_or_else(|| err.to_string(), ToString::to_string);
                format!("cannot use the TLS certificate or key: {cause}")
            })?;
        Ok(Some(config))
    }
}

/// Overload protection: beyond `max_concurrent_requests` calls in flight on a connection, new
/// calls are refused at once with RESOURCE_EXHAUSTED (callers back off and retry) instead of
/// queueing without bound; a handler running longer than `request_timeout_ms` is cut off.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_concurrent_requests: usize,
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 1024,
            request_timeout_ms: 10_000,
        }
    }
}

impl<F: FaultSettings, St: DeserializeOwned + Default> Settings for ServiceSettings<F, St> {
    fn check(&self) -> Result<(), String> {
        self.faults.check()
    }
}

/// Fault settings that can check themselves, and say what the server injects.
pub trait FaultSettings: DeserializeOwned + Default {
    fn check(&self) -> Result<(), String>;
    fn injected(&self) -> crate::faults::InjectedFaults;
}

impl FaultSettings for crate::faults::TransientFaults {
    fn check(&self) -> Result<(), String> {
        crate::faults::TransientFaults::check(self)
    }
    fn injected(&self) -> crate::faults::InjectedFaults {
        crate::faults::TransientFaults::injected(self)
    }
}

impl FaultSettings for crate::faults::BusinessFaults {
    fn check(&self) -> Result<(), String> {
        crate::faults::BusinessFaults::check(self)
    }
    fn injected(&self) -> crate::faults::InjectedFaults {
        self.transient().injected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_read_and_parsed_when_checked() {
        let dir = std::env::temp_dir().join(format!("saga-settings-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let tls = |cert: std::path::PathBuf| ServerTls {
            cert_file: Some(cert),
            key_file: Some(garbage.clone()),
            client_ca_file: None,
        };
        let missing = tls(dir.join("missing.crt")).config().unwrap_err();
        assert!(missing.contains("cannot read tls.cert_file"), "{missing}");
        let unparsable = tls(garbage.clone()).config().unwrap_err();
        assert!(unparsable.contains("certificate or key"), "{unparsable}");
        assert!(ServerTls::default().config().unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
