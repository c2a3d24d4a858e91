//! TLS and mutual TLS between the orchestrator and the real service binaries, with certificates
//! made on the fly: the saga works for a client with a valid certificate, a client without one
//! (or with one from another CA) is refused, plaintext health stays open for probes, and grpcurl
//! works with the right flags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use support::{Process, binary, free_port, temp_dir, tool};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// A leaf certificate signed by `ca`, written as `<name>.crt` and `<name>.key` in `dir`.
fn leaf(ca: &Ca, dir: &Path, name: &str, purpose: ExtendedKeyUsagePurpose) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    stranger: (PathBuf, PathBuf),
}

fn pki() -> Pki {
    let dir = temp_dir("tls");
    let ca_ = ca("order-saga test CA");
    let other = ca("someone else's CA");
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, &ca_.pem).unwrap();
    Pki {
        server: leaf(&ca_, &dir, "server", ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf(&ca_, &dir, "client", ExtendedKeyUsagePurpose::ClientAuth),
        stranger: leaf(
            &other,
            &dir,
            "stranger",
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
        ca: ca_path,
        dir,
    }
}

struct TlsService {
    process: Process,
    health_port: u16,
}

fn start(name: &str, prefix: &str, pki: &Pki) -> TlsService {
    let health_port = free_port();
    let env = [
        (
            format!("{prefix}_TLS__CERT_FILE"),
            pki.server.0.display().to_string(),
        ),
        (
            format!("{prefix}_TLS__KEY_FILE"),
            pki.server.1.display().to_string(),
        ),
        (
            format!("{prefix}_TLS__CLIENT_CA_FILE"),
            pki.ca.display().to_string(),
        ),
        (
            format!("{prefix}_HEALTH_LISTEN_ADDR"),
            format!("127.0.0.1:{health_port}"),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TlsService {
        process: Process::service(name, prefix, &env),
        health_port,
    }
}

/// Plaintext health on the probe port.
async fn probe_serving(port: u16) -> bool {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    support::eventually(Duration::from_secs(20), || async move {
        let Ok(channel) =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
        else {
            return false;
        };
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .is_ok_and(|r| r.get_ref().status == 1)
    })
    .await
}

fn orchestrator(
    services: &[TlsService; 3],
    pki: &Pki,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Command {
    let mut command = Command::new(binary("saga-orchestrator"));
    for (var, service) in ["SAGA_ORDER_URL", "SAGA_PAYMENT_URL", "SAGA_SHIPPING_URL"]
        .iter()
        .zip(services)
    {
        command.env(
            var,
            format!("https://localhost:{}", service.process.addr.port()),
        );
    }
    command
        .env("SAGA_TLS__CA_FILE", &pki.ca)
        .env("SAGA_WAIT_READY_SECS", "3")
        .env("LOG_FORMAT", "json");
    if let Some((cert, key)) = identity {
        command
            .env("SAGA_TLS__CERT_FILE", cert)
            .env("SAGA_TLS__KEY_FILE", key);
    }
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_valid_certificate() {
    let pki = pki();
    let services = [
        start("order-service", "ORDER", &pki),
        start("payment-service", "PAYMENT", &pki),
        start("shipping-service", "SHIPPING", &pki),
    ];
    for service in &services {
        assert!(
            probe_serving(service.health_port).await,
            "plaintext probe port answers"
        );
    }

    // The orchestrator with its client certificate: the three sagas, as ever.
    let output = orchestrator(&services, &pki, Some(&pki.client))
        .args(["run", "--scenario", "all"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with(">>>")).count(),
        3,
        "{stdout}"
    );

    // Without a certificate, or with one from another CA: refused.
    for identity in [None, Some(&pki.stranger)] {
        let output = orchestrator(&services, &pki, identity)
            .args(["run", "--scenario", "success"])
            .output()
            .unwrap();
        assert!(
            !output.status.success(),
            "a client with {identity:?} must be refused"
        );
        assert!(String::from_utf8_lossy(&output.stderr).contains("is not serving"));
    }

    // Plaintext to the TLS port: refused.
    let plaintext = tonic::transport::Endpoint::from_shared(services[0].process.url())
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        assert!(
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_err()
        );
    }

    // grpcurl, with the flags the README gives.
    let addr = format!("localhost:{}", services[0].process.addr.port());
    let grpcurl = |extra: &[&str]| {
        Command::new(tool("grpcurl"))
            .args(["-max-time", "10", "-cacert"])
            .arg(&pki.ca)
            .args(extra)
            .args([addr.as_str(), "list"])
            .output()
            .unwrap()
    };
    let (cert, key) = (
        pki.client.0.to_str().unwrap(),
        pki.client.1.to_str().unwrap(),
    );
    let with = grpcurl(&["-cert", cert, "-key", key]);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(String::from_utf8_lossy(&with.stdout).contains("order.v1.OrderService"));
    assert!(
        !grpcurl(&[]).status.success(),
        "grpcurl without a client certificate is refused"
    );

    drop(services);
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[test]
fn a_bad_tls_file_stops_the_service_before_it_creates_its_database() {
    let dir = temp_dir("tls-before-store");
    let data = dir.join("data");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    for (cert, what) in [
        (dir.join("missing.crt"), "cannot read"),
        (garbage, "certificate"),
    ] {
        let output = Command::new(binary("order-service"))
            .env("ORDER_TLS__CERT_FILE", &cert)
            .env("ORDER_TLS__KEY_FILE", dir.join("garbage.pem"))
            .env("ORDER_STORE__DATA_DIR", &data)
            .env("ORDER_LISTEN_ADDR", "127.0.0.1:0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(what), "{stderr}");
        assert!(
            !data.exists(),
            "the store was opened before TLS was checked"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
