"""The chart with tls.enabled (mutual TLS, its default), run for real.

The three service images start with the env and the certificate volumes the chart's Deployments
give them (the projected Secret items, mode 0440, group-owned like the kubelet writes them), the
orchestrator image with the Job's args, env and volume, against them. The certificates are made
here with openssl as the chart README shows: one CA, one server certificate naming the three
Services, one client certificate. The orchestrator keeps the chart's URLs
(https://order-saga-order:50051, ...): --add-host points those names at 127.0.0.1.

Differences from a cluster, all forced by --network host: each service listens on 127.0.0.1,
and its plaintext health port (tls.healthPort, the same in every pod) is moved to one of its own.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import harness
import pytest
from conftest import service_env, start_services
from harness import without_otlp

SERVER_SECRET = "order-saga-tls"
CLIENT_SECRET = "order-saga-client-tls"
TLS_VALUES = {"tls": {"enabled": True, "secretName": SERVER_SECRET, "clientSecretName": CLIENT_SECRET}}
SEED_LINES = [
    ">>> All steps completed successfully",
    ">>> Payment failed. Order has been cancelled.",
    ">>> Shipping failed. Payment refunded and order cancelled.",
]
ORCHESTRATOR_TIMEOUT_S = 180


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"openssl {' '.join(args)}: {proc.stderr}"


def make_pki(directory: Path, server_names: list[str], name: str = "order-saga") -> dict[str, bytes]:
    """A CA and, signed by it, a server certificate for ``server_names`` and a client
    certificate: {"ca.crt", "server.crt", "server.key", "client.crt", "client.key"}."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-days", "2", "-subj", f"/CN={name} CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=directory)
    leaf = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    sans = ",".join(f"DNS:{n}" for n in server_names)
    (directory / "server.ext").write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n{leaf}")
    (directory / "client.ext").write_text(f"extendedKeyUsage=clientAuth\n{leaf}")
    for who, subject in (("server", f"/CN={name} services"), ("client", "/CN=saga-orchestrator")):
        _openssl("req", "-new", *ec, "-subj", subject, "-keyout", f"{who}.key",
                 "-out", f"{who}.csr", cwd=directory)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{who}.crt",
                 "-extfile", f"{who}.ext", cwd=directory)
    return {f: (directory / f).read_bytes()
            for f in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


@pytest.fixture(scope="module")
def tls_specs() -> dict[str, dict[str, Any]]:
    return harness.service_invocations(TLS_VALUES)


@pytest.fixture(scope="module")
def tls_runtime() -> dict[str, dict[str, Any]]:
    return harness.chart_runtime(TLS_VALUES)


@pytest.fixture(scope="module")
def pki(tmp_path_factory, tls_specs) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("pki")
    files = make_pki(directory, [spec["name"] for spec in tls_specs.values()])
    secrets = {
        SERVER_SECRET: {"tls.crt": files["server.crt"], "tls.key": files["server.key"],
                        "ca.crt": files["ca.crt"]},
        CLIENT_SECRET: {"tls.crt": files["client.crt"], "tls.key": files["client.key"],
                        "ca.crt": files["ca.crt"]},
    }
    (directory / "health.proto").write_text(harness.HEALTH_PROTO)
    return {"dir": directory, "secrets": secrets, "health_proto": directory / "health.proto"}


def _health_port(spec: dict[str, Any]) -> int:
    """The service's own plaintext health port here: the chart's, plus 0, 1 or 2."""
    components = ["order-service", "payment-service", "shipping-service"]
    return spec["health_port"] + components.index(spec["component"])


@pytest.fixture(scope="module")
def tls_services(request, docker_ready, tls_specs, tls_runtime, pki, tmp_path_factory):
    for spec in tls_specs.values():
        assert spec["health_port"] != spec["port"], "under TLS the probes must use the health port"

    def env_of(spec):
        env = service_env(spec)
        (health,) = [name for name in env if name.endswith("_HEALTH_LISTEN_ADDR")]
        env[health] = f"127.0.0.1:{_health_port(spec)}"
        return env

    volumes = tmp_path_factory.mktemp("secret-volumes")
    return start_services(
        request, tls_specs, tls_runtime, tmp_path_factory.mktemp("tls-service-logs"),
        env_of=env_of, health_port_of=_health_port,
        options_of=lambda spec: harness.run_options(
            tls_runtime[spec["component"]], pki["secrets"], volumes),
        health_proto=pki["health_proto"],
    )


def _grpcurl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(harness.GRPCURL), "-max-time", "5", *args],
                          capture_output=True, text=True, timeout=20, check=False)


def test_probes_answer_in_plaintext_on_the_health_port(tls_services, pki):
    """What the kubelet's gRPC probes see: SERVING on the plaintext health port, which serves
    grpc.health.v1.Health only (no reflection, no service RPCs)."""
    proto = pki["health_proto"]
    for container in tls_services.values():
        assert harness.health(container.port, container.health_service, proto=proto) == "SERVING"
        assert harness.health(container.port, "", proto=proto) == "SERVING"
        address = f"127.0.0.1:{container.port}"
        assert _grpcurl("-plaintext", address, "list").returncode != 0
    order = tls_services["order"]
    call = _grpcurl("-plaintext", "-import-path", str(harness.REPO / "proto"),
                    "-proto", "order/v1/order.proto", "-d", '{"order_id": "x"}',
                    f"127.0.0.1:{order.port}", "order.v1.OrderService/GetOrder")
    assert "Unimplemented" in call.stdout + call.stderr, call


def test_grpc_port_requires_tls_and_a_client_certificate(tls_services, tls_specs, pki):
    """The README's grpcurl flags work; plaintext, or TLS without a client certificate, do not."""
    d = pki["dir"]
    for key, spec in tls_specs.items():
        address = f"127.0.0.1:{spec['port']}"
        ok = _grpcurl("-cacert", str(d / "ca.crt"), "-cert", str(d / "client.crt"),
                      "-key", str(d / "client.key"), "-servername", spec["name"], address, "list")
        assert ok.returncode == 0, ok.stderr
        assert spec["health_service"] in ok.stdout
        assert _grpcurl("-plaintext", address, "list").returncode != 0, key
        anonymous = _grpcurl("-cacert", str(d / "ca.crt"), "-servername", spec["name"],
                             address, "list")
        assert anonymous.returncode != 0, f"{key} accepted a client without a certificate"


def test_orchestrator_job_runs_every_scenario_over_mutual_tls(
    request, tls_services, tls_specs, tls_runtime, pki, tmp_path
):
    job = harness.orchestrator_invocation(TLS_VALUES)
    env = without_otlp(job["env"])
    hosts = []
    for key, spec in tls_specs.items():
        url = env[f"SAGA_{key.upper()}_URL"]
        assert url == f"https://{spec['name']}:{spec['port']}", url  # the chart's, unchanged
        hosts += ["--add-host", f"{spec['name']}:127.0.0.1"]
    name = f"order-saga-test-orchestrator-tls-{uuid.uuid4().hex[:8]}"
    request.addfinalizer(lambda: harness.docker("rm", "--force", name, check=False))
    options = harness.run_options(tls_runtime["saga-orchestrator"], pki["secrets"], tmp_path)
    argv = [
        harness.DOCKER, "run", "--rm", "--network", "host", "--name", name,
        "--label", harness.LABEL, *hosts, *options, *harness.env_args(env),
        job["image"], *job["args"],
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True,
                              timeout=ORCHESTRATOR_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the orchestrator did not finish within {ORCHESTRATOR_TIMEOUT_S}s")
    logs = "\n".join(f"--- {key} log:\n{c.log_tail(15)}" for key, c in tls_services.items())
    context = (f"exit {proc.returncode} after {time.monotonic() - started:.1f}s\n"
               f"--- stdout:\n{proc.stdout}\n--- stderr (tail):\n{proc.stderr[-3000:]}\n{logs}")
    assert proc.returncode == 0, context
    for line in SEED_LINES:
        assert line in proc.stdout, f"missing {line!r}\n{context}"
    print(proc.stdout)
