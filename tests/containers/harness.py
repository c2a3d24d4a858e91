"""Helpers of the container tests: the docker CLI, the chart's invocations, running services.

Every call is bounded in time. Containers are started with ``--rm`` and the label
``order-saga.test=containers`` (scripts/test-containers removes any that an interrupted run left).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
GRPCURL = REPO / ".tools" / "bin" / "grpcurl"
HADOLINT = REPO / ".tools" / "bin" / "hadolint"
LABEL = "order-saga.test=containers"
BINARIES = ["order-service", "payment-service", "shipping-service", "saga-orchestrator"]

# Variables of the chart that name its Jaeger service, which does not exist here. They are
# dropped, not redirected: without an endpoint the binaries export no traces (trace export is
# tested against a real collector in tests/tracing.rs), and nothing waits on an unreachable one.
OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

# The chart's renderer (tests/chart/render.py) tells how the chart runs each image.
sys.path.insert(0, str(REPO / "tests" / "chart"))
import render  # noqa: E402
from render import (  # noqa: E402
    orchestrator_invocation,
    recovery_invocations,
    service_invocations,
)

__all__ = ["orchestrator_invocation", "recovery_invocations", "service_invocations"]


def chart_runtime(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Binary (= component) -> how the chart's pod runs its container, beyond image, args and
    env: {"securityContext": {...}, "uid", "gid" (None when unset), "mounts": [(mountPath, the
    pod volume it mounts)]}, for the three Deployments and the Job, with ``values`` (default:
    the chart's defaults)."""
    result = {}
    for obj in render.render(values):
        comp = render.component(obj)
        if obj["kind"] not in ("Deployment", "Job") or comp not in BINARIES:
            continue
        pod = render.pod_spec(obj)
        (container,) = pod["containers"]
        volumes = {volume["name"]: volume for volume in pod.get("volumes") or []}
        pod_context = pod.get("securityContext") or {}
        context = container.get("securityContext") or {}
        result[comp] = {
            "securityContext": context,
            # Who the pod's processes run as (container settings win), and so own its volumes.
            "uid": context.get("runAsUser", pod_context.get("runAsUser")),
            "gid": context.get(
                "runAsGroup", pod_context.get("runAsGroup", pod_context.get("fsGroup"))
            ),
            "mounts": [
                (mount["mountPath"], volumes.get(mount["name"], {}))
                for mount in container.get("volumeMounts") or []
            ],
        }
    return result


def run_options(
    runtime: dict[str, Any],
    secrets: dict[str, dict[str, bytes]] | None = None,
    workdir: Path | None = None,
) -> list[str]:
    """``docker run`` options for what chart_runtime() found, as far as docker can mirror it:
    a read-only root filesystem, dropped capabilities, no privilege escalation, a tmpfs for
    each emptyDir or volume claim mount, writable by the pod's user as an emptyDir is (docker
    ignores a tmpfs mode on a path the image has, hence uid/gid), and for each Secret or
    projected Secret volume a read-only bind mount of a directory under ``workdir`` holding
    exactly its items, taken from ``secrets`` (Secret name -> key -> bytes), owned by root and
    the pod's group with the volume's mode, as the kubelet writes them. The user is left to the
    image: its USER is what is tested (and compared with runAsUser)."""
    context = runtime["securityContext"]
    args = []
    if context.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for capability in (context.get("capabilities") or {}).get("drop", []):
        args += ["--cap-drop", capability]
    if context.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if context.get("privileged"):
        args.append("--privileged")
    for path, volume in runtime["mounts"]:
        if {"secret", "projected"} & volume.keys():
            if secrets is None or workdir is None:
                raise AssertionError(f"the chart mounts Secrets at {path}: pass secrets and workdir")
            directory = _secret_volume(volume, secrets, workdir, runtime.get("gid"))
            args += ["--volume", f"{directory}:{path}:ro"]
            continue
        if not {"emptyDir", "persistentVolumeClaim", "ephemeral"} & volume.keys():
            raise AssertionError(f"no docker equivalent for the chart's volume at {path}: {volume}")
        owner = [f"{key}={runtime[key]}" for key in ("uid", "gid") if runtime.get(key) is not None]
        args += ["--tmpfs", ":".join([path, ",".join(owner or ["mode=1777"])])]
    return args


def _secret_volume(
    volume: dict[str, Any], secrets: dict[str, dict[str, bytes]], workdir: Path, gid: int | None
) -> Path:
    """A directory with the files of a ``secret`` or ``projected`` (Secret sources) volume."""
    if "secret" in volume:
        sources = [{"name": volume["secret"]["secretName"], "items": volume["secret"].get("items")}]
        mode = volume["secret"].get("defaultMode", 0o644)
    else:
        sources = []
        for source in volume["projected"]["sources"]:
            if set(source) != {"secret"}:
                raise AssertionError(f"no docker equivalent for projected source {source}")
            sources.append({"name": source["secret"]["name"], "items": source["secret"].get("items")})
        mode = volume["projected"].get("defaultMode", 0o644)
    directory = workdir / f"{volume['name']}-{os.urandom(4).hex()}"
    directory.mkdir(parents=True)
    for source in sources:
        data = secrets.get(source["name"])
        if data is None:
            raise AssertionError(f"the chart mounts Secret {source['name']}, which the test has not")
        items = source["items"] or [{"key": key, "path": key} for key in data]
        for item in items:
            target = directory / item["path"]
            if target.exists():
                raise AssertionError(f"two items of volume {volume['name']} write {item['path']}")
            target.write_bytes(data[item["key"]])
            target.chmod(item.get("mode", mode))
            if gid is not None and os.geteuid() == 0:
                os.chown(target, 0, gid)
    directory.chmod(0o755)
    return directory



def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``docker ARGS``; raises AssertionError with its stderr when it fails and ``check``."""
    proc = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc


def docker_unavailable() -> str | None:
    """Why docker cannot be used here, or None when it answers."""
    if not os.access(DOCKER, os.X_OK):
        return f"{DOCKER} not found"
    try:
        proc = docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    return None if proc.returncode == 0 else f"docker info failed: {proc.stderr.strip()}"


def without_otlp(env: dict[str, str]) -> dict[str, str]:
    """The env without the OTLP endpoint variables (see OTLP_ENDPOINT_VARS)."""
    return {name: value for name, value in env.items() if name not in OTLP_ENDPOINT_VARS}


def image_config(ref: str) -> dict[str, Any]:
    """``Config`` of a local image (User, Entrypoint, Cmd, ExposedPorts, Labels, ...)."""
    proc = docker("image", "inspect", ref, check=False)
    if proc.returncode != 0:
        raise AssertionError(
            f"image {ref} is not built here: run scripts/test-containers (or `just images`)"
        )
    return json.loads(proc.stdout)[0]["Config"]


def split_ref(ref: str) -> tuple[str, str | None]:
    """``repo/name:tag`` -> (``name``, ``tag``); a digest reference has no tag."""
    if "@" in ref:
        return ref.split("@", 1)[0].rsplit("/", 1)[-1], None
    name, _, tag = ref.rsplit("/", 1)[-1].partition(":")
    return name, tag or None


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:PORT can be bound (SO_REUSEADDR, as tokio's listener sets it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# grpc.health.v1 for grpcurl where the server offers no reflection (the plaintext health port
# of a service under TLS serves Health only, as the kubelet's probes need).
HEALTH_PROTO = """syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
"""


def health(port: int, service: str, timeout: float = 5, proto: Path | None = None) -> str | None:
    """The status a gRPC health Check answers for ``service`` (e.g. "SERVING"), or None.
    ``proto``: a file holding HEALTH_PROTO, for a server without reflection."""
    schema = ["-import-path", str(proto.parent), "-proto", proto.name] if proto else []
    try:
        proc = subprocess.run(
            [
                str(GRPCURL), "-plaintext", "-max-time", "2", *schema,
                "-d", json.dumps({"service": service}),
                f"127.0.0.1:{port}", "grpc.health.v1.Health/Check",
            ],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout).get("status")


def env_args(env: dict[str, str]) -> list[str]:
    """``-e NAME=VALUE`` for each variable (argv, no shell: values need no quoting)."""
    return [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]


@dataclass
class Container:
    """A detached ``docker run --rm`` container whose log is followed into a file."""

    name: str
    image: str
    log_path: Path
    port: int | None = None
    health_service: str | None = None
    health_proto: Path | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)
    _log_proc: subprocess.Popen | None = field(default=None, repr=False)
    _run: list[str] = field(default_factory=list, repr=False)

    def start(
        self, env: dict[str, str], args: list[str] | None = None, options: list[str] | None = None
    ) -> None:
        self._run = [
            "--rm", "--network", "host", "--label", LABEL,
            *(options or []), *env_args(env), self.image, *(args or []),
        ]
        docker("run", "--detach", "--name", self.name, *self._run)
        # Follow the log at once: with --rm it is gone when the container exits.
        self._log_file = self.log_path.open("wb")
        self._log_proc = subprocess.Popen(
            [DOCKER, "logs", "--follow", self.name],
            stdout=self._log_file, stderr=subprocess.STDOUT,
        )

    def running(self) -> bool:
        proc = docker("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "true"

    def pid(self) -> int:
        return int(docker("inspect", "--format", "{{.State.Pid}}", self.name).stdout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def exit_report(self) -> str:
        """Its log; when the container was gone (--rm) before the log could be read, the
        output and exit code of the same `docker run` again in the foreground (15 s at most)."""
        self.close_log()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if text.strip() and "can not get logs" not in text and "No such container" not in text:
            return f"log:\n{self.log_tail()}"
        name = f"{self.name}-rerun"
        try:
            proc = subprocess.run(
                [DOCKER, "run", "--name", name, *self._run],
                capture_output=True, text=True, timeout=15, check=False,
            )
        except subprocess.TimeoutExpired:
            docker("rm", "--force", name, check=False)
            return "the log was gone; run again in the foreground, it kept running for 15 s"
        output = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        return f"the log was gone; run again in the foreground it exited {proc.returncode}:\n{output}"

    def wait_serving(self, timeout: float = 30) -> None:
        """Until health says SERVING for the named service; fails early if the container exits."""
        assert self.port is not None and self.health_service is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if health(self.port, self.health_service, proto=self.health_proto) == "SERVING":
                return
            if not self.running():
                raise AssertionError(
                    f"{self.name} ({self.image}) exited before SERVING; {self.exit_report()}"
                )
            time.sleep(0.25)
        raise AssertionError(
            f"{self.name} did not report {self.health_service} SERVING on 127.0.0.1:{self.port}"
            f" within {timeout:.0f}s; log:\n{self.log_tail()}"
        )

    def close_log(self) -> None:
        if self._log_proc is not None:
            try:
                self._log_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._log_proc.kill()
                self._log_proc.wait(timeout=10)
            self._log_proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
