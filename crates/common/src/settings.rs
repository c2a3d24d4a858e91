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
    /// The plaintext HTTP listener of `GET /metrics` (`<PREFIX>_METRICS_LISTEN_ADDR`): the
    /// service's own metrics port on `0.0.0.0` when unset, none when empty.
    pub metrics_listen_addr: MetricsListen,
}

/// Where the Prometheus exposition listens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MetricsListen {
    /// Unset: `0.0.0.0` and the service's default metrics port.
    #[default]
    Default,
    /// Set to the empty string: no metrics listener.
    Off,
    Addr(SocketAddr),
}

impl MetricsListen {
    /// The address to bind, if any, with `default_port` for [`MetricsListen::Default`].
    pub fn resolve(self, default_port: u16) -> Option<SocketAddr> {
        match self {
            MetricsListen::Default => Some(SocketAddr::from(([0, 0, 0, 0], default_port))),
            MetricsListen::Off => None,
            MetricsListen::Addr(addr) => Some(addr),
        }
    }
}

impl<'de> Deserialize<'de> for MetricsListen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(MetricsListen::Off);
        }
        text.parse().map(MetricsListen::Addr).map_err(|_| {
            serde::de::Error::custom(format!(
                "metrics_listen_addr '{text}' is not an address such as 0.0.0.0:9091 (empty \
                 turns metrics off)"
            ))
        })
    }
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

    type Plain = ServiceSettings<crate::faults::TransientFaults, Empty>;

    #[derive(Debug, Clone, Default, Deserialize, PartialEq)]
    struct Empty {}

    fn metrics_addr(value: Option<&str>) -> Result<MetricsListen, String> {
        let vars = value.map(|v| [("ORDER_METRICS_LISTEN_ADDR".to_owned(), v.to_owned())].into());
        crate::config::load_with::<Plain>("ORDER", None, vars.or(Some(Default::default())))
            .map(|s| s.metrics_listen_addr)
            .map_err(|err| err.to_string())
    }

    #[test]
    fn metrics_listen_addr_unset_empty_or_an_address() {
        assert_eq!(metrics_addr(None), Ok(MetricsListen::Default));
        assert_eq!(metrics_addr(Some("")), Ok(MetricsListen::Off));
        let addr = metrics_addr(Some("127.0.0.1:0")).unwrap();
        assert_eq!(addr, MetricsListen::Addr(([127, 0, 0, 1], 0).into()));
        let bad = metrics_addr(Some("9091")).unwrap_err();
        assert!(bad.contains("metrics_listen_addr"), "{bad}");
        assert_eq!(
            MetricsListen::Default.resolve(9092),
            Some(([0, 0, 0, 0], 9092).into())
        );
        assert_eq!(MetricsListen::Off.resolve(9092), None);
    }
}
