"""Fixtures of the container tests: docker, how the Helm chart runs each image, the services.

Run through scripts/test-containers, which builds the images first. Run alone, a docker that
does not answer skips these tests, unless CI is set: then they fail.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import harness
import pytest

def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


@pytest.fixture(scope="session")
def docker_ready() -> None:
    reason = harness.docker_unavailable()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"docker is unavailable and CI is set: {reason}")
    pytest.skip(f"docker is unavailable: {reason}")


@pytest.fixture(scope="session")
def service_specs() -> dict[str, dict[str, Any]]:
    """service_invocations() of the chart with default values: "order", "payment", "shipping"."""
    return harness.service_invocations()


@pytest.fixture(scope="session")
def job_spec() -> dict[str, Any]:
    """orchestrator_invocation() of the chart with default values."""
    return harness.orchestrator_invocation()


@pytest.fixture(scope="session")
def chart_runtime() -> dict[str, dict[str, Any]]:
    """Binary name -> its container's securityContext and volume mounts in the chart."""
    found = harness.chart_runtime()
    assert sorted(found) == sorted(harness.BINARIES), f"the chart's containers: {found}"
    return found


@pytest.fixture(scope="session")
def chart_images(service_specs, job_spec) -> dict[str, dict[str, Any]]:
    """Binary name -> {"image", "command", "port" (None for the orchestrator)}, from the chart.

    The binary is the last path part of the image repository (order-saga/<binary>:<tag>).
    """
    found = {
        harness.split_ref(spec["image"])[0]: {
            "image": spec["image"], "command": spec["command"], "port": spec["port"],
        }
        for spec in service_specs.values()
    }
    found[harness.split_ref(job_spec["image"])[0]] = {
        "image": job_spec["image"], "command": job_spec["command"], "port": None,
    }
    assert sorted(found) == sorted(harness.BINARIES), f"the chart's images: {found}"
    return found


def service_env(spec: dict[str, Any]) -> dict[str, str]:
    """The chart's env of a service, listening on 127.0.0.1 at the chart's port, no OTLP. The
    chart gives every pod the same metrics port; on the host's network here, each service gets
    a free one instead."""
    env = harness.without_otlp(spec["env"])
    (listen,) = [name for name in env if name.endswith("_LISTEN_ADDR")
                 and not name.endswith(("_HEALTH_LISTEN_ADDR", "_METRICS_LISTEN_ADDR"))]
    env[listen] = f"127.0.0.1:{spec['port']}"
    for name in env:
        if name.endswith("_METRICS_LISTEN_ADDR") and env[name]:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                env[name] = f"127.0.0.1:{probe.getsockname()[1]}"
    return env


def start_services(
    request,
    specs: dict[str, dict[str, Any]],
    runtime: dict[str, dict[str, Any]],
    logs,
    env_of=service_env,
    health_port_of=lambda spec: spec["port"],
    options_of=None,
    health_proto=None,
) -> dict[str, harness.Container]:
    """Starts the three services (--network host, --rm, -d) with ``env_of(spec)`` and the
    ``docker run`` options ``options_of(spec)`` (default: the chart's securityContext and
    volumes, ``harness.run_options``), and waits until each reports SERVING (plaintext) on
    ``health_port_of(spec)`` (with ``health_proto``, a harness.HEALTH_PROTO file, when that
    port offers no reflection); removed when ``request`` ends."""
    if options_of is None:
        def options_of(spec):
            return harness.run_options(runtime[spec["component"]])
    ports = [port for spec in specs.values() for port in {spec["port"], health_port_of(spec)}]
    taken = [port for port in ports if not harness.port_is_free(port)]
    if taken:
        pytest.fail(
            f"127.0.0.1 ports {taken} are in use; the services listen on the chart's ports"
            " (a demo still running? `docker ps --filter label=order-saga.test=containers`?)"
        )
    suffix = uuid.uuid4().hex[:8]
    started: dict[str, harness.Container] = {}

    def remove() -> None:
        if started:
            harness.docker(
                "rm", "--force", *(c.name for c in started.values()), check=False, timeout=60
            )
        for container in started.values():
            container.close_log()

    request.addfinalizer(remove)
    for key, spec in specs.items():
        assert spec["command"] is None, f"the chart overrides {key}'s entrypoint: {spec['command']}"
        container = harness.Container(
            name=f"order-saga-test-{key}-{suffix}",
            image=spec["image"],
            log_path=logs / f"{key}.log",
            port=health_port_of(spec),
            health_service=spec["health_service"],
            health_proto=health_proto,
        )
        started[key] = container
        container.start(env_of(spec), spec["args"], options_of(spec))
    for container in started.values():
        container.wait_serving(timeout=30)
    return started


@pytest.fixture(scope="module")
def services(request, docker_ready, service_specs, chart_runtime, tmp_path_factory):
    """The three service images running (--network host, --rm, -d) as the chart runs them
    (its env and, as far as docker can, its securityContext and volumes: read-only root
    filesystem, no capabilities, no privilege escalation, a tmpfs per emptyDir or claim),
    each SERVING. Key -> harness.Container. Removed at the end whatever happened."""
    return start_services(
        request, service_specs, chart_runtime, tmp_path_factory.mktemp("service-logs")
    )
