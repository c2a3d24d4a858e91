"""The four order-saga images, checked as built and then run as the Helm chart runs them.

scripts/test-containers builds the images (order-saga/<binary>:<version>) and runs this file.
The services run with the env of the chart's Deployments (service_invocations()), except that
each listens on 127.0.0.1 at its chart port; the orchestrator runs with the args and env of the
chart's Job (orchestrator_invocation()), except that the three service URLs point at those
addresses. The chart's OTLP endpoint (its Jaeger service) is dropped everywhere: see harness.
"""

from __future__ import annotations

import subprocess
import time
import tomllib
import uuid
from pathlib import Path

import harness
import pytest
from harness import BINARIES, without_otlp

SEED_LINES = [
    ">>> All steps completed successfully",
    ">>> Payment failed. Order has been cancelled.",
    ">>> Shipping failed. Payment refunded and order cancelled.",
]
# What gcr.io/distroless/cc-debian12 provides (glibc, libgcc, libstdc++, libgomp, OpenSSL 3).
# The stand-in used here has more, so a binary needing anything else would pass here and fail
# on the real image: this list is the check.
DISTROLESS_CC_LIBS = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1",
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libgcc_s.so.1", "libstdc++.so.6",
    "libgomp.so.1", "libssl.so.3", "libcrypto.so.3",
}
ORCHESTRATOR_TIMEOUT_S = 180


def workspace_package() -> dict:
    with (harness.REPO / "Cargo.toml").open("rb") as f:
        return tomllib.load(f)["workspace"]["package"]


def test_dockerfile_is_hadolint_clean():
    assert harness.HADOLINT.exists(), "run scripts/install-tools (it installs hadolint)"
    proc = subprocess.run(
        [str(harness.HADOLINT), "--no-color", "Dockerfile"],
        cwd=harness.REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@pytest.mark.parametrize("binary", BINARIES)
def test_image_config(binary, docker_ready, chart_images, chart_runtime):
    """Non-root user (the one the chart runs it as), the binary as ENTRYPOINT (the chart sets no
    command), the chart's port exposed, OCI labels that agree with Cargo.toml."""
    spec = chart_images[binary]
    config = harness.image_config(spec["image"])

    user = config.get("User") or ""
    uid, _, gid = user.partition(":")
    assert uid not in ("", "0", "root"), f"{spec['image']} runs as root (User={user!r})"
    context = chart_runtime[binary]["securityContext"]
    if "runAsUser" in context:
        assert uid == str(context["runAsUser"]), f"image User {user!r}, chart {context}"
    if "runAsGroup" in context and gid:
        assert gid == str(context["runAsGroup"]), f"image User {user!r}, chart {context}"

    assert spec["command"] is None, "the chart should leave the entrypoint to the image"
    assert config["Entrypoint"] == [f"/usr/local/bin/{binary}"]

    exposed = sorted(config.get("ExposedPorts") or {})
    assert exposed == ([f"{spec['port']}/tcp"] if spec["port"] else [])

    labels = config.get("Labels") or {}
    package = workspace_package()
    assert labels.get("org.opencontainers.image.title") == binary
    assert labels.get("org.opencontainers.image.description")
    assert labels.get("org.opencontainers.image.source")
    assert labels.get("org.opencontainers.image.licenses") == package["license"]
    assert labels.get("org.opencontainers.image.version") == package["version"]
    _, tag = harness.split_ref(spec["image"])
    assert tag in (None, package["version"]), "the chart's image tag is not the crate version"


@pytest.mark.parametrize("binary", BINARIES)
def test_binary_needs_only_what_distroless_cc_has(binary, docker_ready, chart_images, tmp_path):
    """The shared libraries the binary links (readelf's NEEDED) all exist in real distroless cc."""
    readelf = "/usr/bin/readelf"
    if not Path(readelf).exists():
        pytest.skip("readelf (binutils) is not installed")
    name = f"order-saga-test-cp-{binary}-{uuid.uuid4().hex[:8]}"
    harness.docker("create", "--name", name, "--label", harness.LABEL, chart_images[binary]["image"])
    try:
        harness.docker("cp", f"{name}:/usr/local/bin/{binary}", str(tmp_path / binary))
    finally:
        harness.docker("rm", "--force", name, check=False)
    dynamic = subprocess.run(
        [readelf, "--dynamic", str(tmp_path / binary)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    needed = {
        line.split("[", 1)[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line
    }
    assert needed, "no NEEDED entries: not a dynamically linked binary?"
    assert needed <= DISTROLESS_CC_LIBS, f"not in distroless cc: {needed - DISTROLESS_CC_LIBS}"


def test_services_serving(services):
    """Both the named service and the overall "" health say SERVING."""
    for container in services.values():
        assert harness.health(container.port, container.health_service) == "SERVING"
        assert harness.health(container.port, "") == "SERVING"


def test_service_processes_are_not_root(services):
    """The process in each container really runs as the image's non-root user."""
    for container in services.values():
        status = Path(f"/proc/{container.pid()}/status")
        if not status.exists():
            pytest.skip("the docker daemon's processes are not visible in this /proc")
        (uid_line,) = [line for line in status.read_text().splitlines() if line.startswith("Uid:")]
        uids = {int(field) for field in uid_line.split()[1:]}
        user = (harness.image_config(container.image).get("User") or "").split(":")[0]
        assert 0 not in uids, f"{container.name} runs with uid 0: {uid_line}"
        if user.isdigit():
            assert uids == {int(user)}, f"{container.name}: {uid_line}, image User {user}"


def test_orchestrator_job_runs_every_scenario(
    request, services, service_specs, job_spec, chart_runtime
):
    """The orchestrator image with the Job's args, env, securityContext and volumes completes
    or compensates every saga."""
    assert job_spec["command"] is None, "the chart should leave the entrypoint to the image"
    env = without_otlp(job_spec["env"])
    for key, spec in service_specs.items():
        var = f"SAGA_{key.upper()}_URL"
        assert var in env, f"the Job does not set {var}"
        env[var] = f"http://127.0.0.1:{spec['port']}"

    name = f"order-saga-test-orchestrator-{uuid.uuid4().hex[:8]}"
    request.addfinalizer(lambda: harness.docker("rm", "--force", name, check=False))
    argv = [
        harness.DOCKER, "run", "--rm", "--network", "host", "--name", name,
        "--label", harness.LABEL, *harness.run_options(chart_runtime["saga-orchestrator"]),
        *harness.env_args(env), job_spec["image"], *job_spec["args"],
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=ORCHESTRATOR_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the orchestrator did not finish within {ORCHESTRATOR_TIMEOUT_S}s")
    took = time.monotonic() - started

    logs = "\n".join(f"--- {key} log:\n{c.log_tail(15)}" for key, c in services.items())
    context = (
        f"exit {proc.returncode} after {took:.1f}s\n--- stdout:\n{proc.stdout}\n"
        f"--- stderr (tail):\n{proc.stderr[-3000:]}\n{logs}"
    )
    assert proc.returncode == 0, context
    for line in SEED_LINES:
        assert line in proc.stdout, f"missing {line!r}\n{context}"
    print(proc.stdout)


def test_recovery_cronjob_settles_and_audits(request, services, service_specs, chart_runtime):
    """The chart's recovery CronJob, its init container (recover) then its container (audit),
    as the chart runs them, against the chart's services: after the Job's sagas nothing is
    stuck, so both exit 0, and the audit reports the whole store clean."""
    outputs = []
    for step in harness.recovery_invocations():
        assert step["command"] is None, "the chart should leave the entrypoint to the image"
        env = without_otlp(step["env"])
        for key, spec in service_specs.items():
            env[f"SAGA_{key.upper()}_URL"] = f"http://127.0.0.1:{spec['port']}"
        name = f"order-saga-test-{step['name']}-{uuid.uuid4().hex[:8]}"
        request.addfinalizer(lambda name=name: harness.docker("rm", "--force", name, check=False))
        argv = [
            harness.DOCKER, "run", "--rm", "--network", "host", "--name", name,
            "--label", harness.LABEL, *harness.run_options(chart_runtime["saga-orchestrator"]),
            *harness.env_args(env), step["image"], *step["args"],
        ]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=ORCHESTRATOR_TIMEOUT_S, check=False
        )
        context = f"{step['name']}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-2000:]}"
        assert proc.returncode == 0, context
        outputs.append(proc.stdout)
    recovered, audited = outputs
    assert recovered.strip().splitlines()[-1].startswith("recover: "), recovered
    assert "0 stuck" in recovered, recovered
    assert "0 violations" in audited and "0 pending past the grace period" in audited, audited
    print(recovered, audited)


def test_services_stop_on_sigterm(services):
    """docker stop (SIGTERM) ends each service with exit 0 within its drain and grace period."""
    waits = {
        key: subprocess.Popen(
            [harness.DOCKER, "wait", c.name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for key, c in services.items()
    }
    time.sleep(0.5)  # let `docker wait` attach before the containers exit (and --rm removes them)
    started = time.monotonic()
    harness.docker("stop", "--time", "30", *(c.name for c in services.values()), timeout=90)
    took = time.monotonic() - started
    codes = {}
    for key, wait in waits.items():
        try:
            out, err = wait.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            wait.kill()
            out, err = wait.communicate()
        codes[key] = out.strip() or err.strip()
    for container in services.values():
        container.close_log()
    logs = "\n".join(f"--- {key} log:\n{c.log_tail(10)}" for key, c in services.items())
    assert codes == {key: "0" for key in services}, f"exit codes {codes}\n{logs}"
    print(f"three services stopped with exit 0 in {took:.1f}s")
