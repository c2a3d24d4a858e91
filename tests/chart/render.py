"""Render the order-saga Helm chart offline, with the Helm v4 Go SDK (helm-python-sdk).

No helm binary and no cluster: ``helm_python.Chart.render`` runs Helm's own template engine
(and values.schema.json validation) in-process. Run everything here with the tools venv
(``scripts/install-tools`` installs helm-python-sdk and PyYAML into ``.tools/venv``).

Used by tests/chart/test_chart.py, by scripts/render-k8s (which writes k8s/order-saga.yaml),
and by any test that needs to run what the chart runs. For example a container test that
starts the orchestrator image exactly as the chart's Job would::

    sys.path.insert(0, str(REPO / "tests" / "chart"))   # or put tests/chart on PYTHONPATH
    from render import orchestrator_invocation, service_invocations

    job = orchestrator_invocation()          # default values, release "order-saga"
    job["image"]    # "order-saga/saga-orchestrator:0.1.0"
    job["command"]  # None: the chart sets no command, so the image's ENTRYPOINT runs
    job["args"]     # ["run", "--scenario", "all", "--count", "3", ...]
    job["env"]      # {"SAGA_ORDER_URL": "http://order-saga-order:50051", ...,
                    #  "OTEL_EXPORTER_OTLP_ENDPOINT": "http://order-saga-jaeger:4317"}
    # docker run --rm $(for k, v: -e k=v) job["image"] *job["args"]

    for key, svc in service_invocations().items():   # "order", "payment", "shipping"
        svc["image"], svc["env"], svc["port"], svc["health_service"], svc["health_port"]

``env`` is a plain dict of the literal values: entries from a Secret (``valueFrom``, such as
DATABASE_URL with a PostgreSQL store; none with the defaults) are left out. Both functions
take the same ``values`` overrides as :func:`render` (e.g.
``orchestrator_invocation({"job": {"scenario": "success", "count": 1}})``); a container
test will usually replace the service URLs and the OTLP endpoint with its own addresses.

Command line (what scripts/render-k8s runs)::

    .tools/venv/bin/python tests/chart/render.py --write k8s/order-saga.yaml
    .tools/venv/bin/python tests/chart/render.py --check k8s/order-saga.yaml
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "order-saga"
K8S_MANIFEST = REPO_ROOT / "k8s" / "order-saga.yaml"
RELEASE = "order-saga"
NAMESPACE = "default"

# Helm's install order (pkg/release/util/kind_sorter.go), used to order k8s/order-saga.yaml.
_INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
    "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
    "APIService",
]

_DOC_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)


@functools.lru_cache(maxsize=1)
def load_chart() -> helm.Chart:
    """The chart, loaded once per process (charts are immutable and thread-safe)."""
    return helm.Chart.load(CHART_DIR)


def render_templates(
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    revision: int = 1,
) -> dict[str, str]:
    """Template path -> rendered text, NOTES.txt included, like ``helm template``.

    Raises helm_python.HelmValuesError when ``values`` break values.schema.json, and
    helm_python.HelmRenderError when a template fails (e.g. the chart's own ``fail``).
    """
    return load_chart().render(
        values=values, name=release, namespace=namespace, revision=revision, is_install=True
    )


def documents(
    values: dict[str, Any] | None = None, **render_args: Any
) -> list[tuple[str, str, dict[str, Any]]]:
    """Every Kubernetes object rendered, as (template path, YAML text, parsed object).

    NOTES.txt and empty documents are left out; helm test hooks are kept.
    """
    docs = []
    for source, text in sorted(render_templates(values, **render_args).items()):
        if source.endswith("NOTES.txt"):
            continue
        for part in _DOC_SEPARATOR.split(text):
            obj = yaml.safe_load(part)
            if obj is None:
                continue
            if not isinstance(obj, dict) or "kind" not in obj:
                raise ValueError(f"{source}: not a Kubernetes object: {part!r}")
            docs.append((source, part.strip("\n"), obj))
    return docs


def render(values: dict[str, Any] | None = None, **render_args: Any) -> list[dict[str, Any]]:
    """The rendered objects (helm test hooks included), parsed."""
    return [obj for _, _, obj in documents(values, **render_args)]


def notes(values: dict[str, Any] | None = None, **render_args: Any) -> str:
    """The rendered NOTES.txt."""
    rendered = render_templates(values, **render_args)
    return next(text for source, text in rendered.items() if source.endswith("NOTES.txt"))


def is_test_hook(obj: dict[str, Any]) -> bool:
    """Whether the object is a ``helm test`` hook (left out of the plain manifests)."""
    hooks = (obj.get("metadata", {}).get("annotations") or {}).get("helm.sh/hook", "")
    return "test" in [hook.strip() for hook in hooks.split(",")]


def component(obj: dict[str, Any]) -> str | None:
    """The object's app.kubernetes.io/component label."""
    return (obj.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/component")


def find(objs: list[dict[str, Any]], kind: str, component_name: str | None = None) -> list[dict]:
    """Objects of ``kind`` (and of that component, when given)."""
    return [
        obj
        for obj in objs
        if obj["kind"] == kind and (component_name is None or component(obj) == component_name)
    ]


def find_one(objs: list[dict[str, Any]], kind: str, component_name: str | None = None) -> dict:
    """The single object of ``kind`` (and component); fails if there are none or several."""
    found = find(objs, kind, component_name)
    if len(found) != 1:
        raise LookupError(f"expected one {kind} {component_name or ''}, found {len(found)}")
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Pod, Deployment, StatefulSet, Job or CronJob."""
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def env_dict(container: dict[str, Any]) -> dict[str, str]:
    """A container's env as {name: value}; entries with valueFrom are left out."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


# The uid the API server would give the Job: the chart's default run id is
# "<job name>-<job uid>" (the kubelet expands $(JOB_UID) from the pod's controller-uid label).
JOB_UID = "00000000-0000-4000-8000-000000000001"

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """$(VAR) expansion as the kubelet does it in env values and args (unknown names stay)."""
    return _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def orchestrator_invocation(
    values: dict[str, Any] | None = None, *, job_uid: str = JOB_UID, **render_args: Any
) -> dict[str, Any]:
    """How the chart's Job runs saga-orchestrator, as its pod would see it.

    Returns {"name": Job name, "image", "command" (None: the image's ENTRYPOINT),
    "args": [...], "env": {name: value}}: JOB_UID (from the pod's controller-uid label) is
    ``job_uid``, and $(VAR) references in env and args are expanded as the kubelet does.
    """
    job = find_one(render(values, **render_args), "Job", "saga-orchestrator")
    (container,) = pod_spec(job)["containers"]
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        field = (entry.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath", "")
        if "value" in entry:
            env[entry["name"]] = expand(entry["value"], env)
        elif "controller-uid" in field:
            env[entry["name"]] = job_uid
    return {
        "name": job["metadata"]["name"],
        "image": container["image"],
        "command": container.get("command"),
        "args": [expand(a, env) for a in container.get("args", [])],
        "env": env,
    }


def recovery_invocations(
    values: dict[str, Any] | None = None, **render_args: Any
) -> list[dict[str, Any]]:
    """How the chart's recovery CronJob runs saga-orchestrator: its init container (recover)
    then its container (audit), each {"name", "image", "command", "args", "env"}."""
    cron = find_one(render(values, **render_args), "CronJob", "saga-orchestrator")
    spec = pod_spec(cron)
    return [
        {
            "name": container["name"],
            "image": container["image"],
            "command": container.get("command"),
            "args": list(container.get("args", [])),
            "env": env_dict(container),
        }
        for container in spec.get("initContainers", []) + spec["containers"]
    ]


def service_invocations(
    values: dict[str, Any] | None = None, **render_args: Any
) -> dict[str, dict[str, Any]]:
    """How the chart runs each service, keyed "order", "payment", "shipping".

    Each entry: {"name": Deployment/Service name, "component": e.g. "order-service",
    "image", "command" (None: ENTRYPOINT), "args", "env": {name: value}, "port": gRPC port,
    "health_service": the gRPC health service name its probes ask for, "health_port": the
    port they ask on (the gRPC port, or tls.healthPort with TLS)}.
    """
    result = {}
    for deployment in find(render(values, **render_args), "Deployment"):
        comp = component(deployment)
        if not comp or not comp.endswith("-service"):
            continue
        (container,) = pod_spec(deployment)["containers"]
        (port,) = [p for p in container["ports"] if p["name"] == "grpc"]
        result[comp.removesuffix("-service")] = {
            "name": deployment["metadata"]["name"],
            "component": comp,
            "image": container["image"],
            "command": container.get("command"),
            "args": container.get("args"),
            "env": env_dict(container),
            "port": port["containerPort"],
            "health_service": container["readinessProbe"]["grpc"]["service"],
            "health_port": container["readinessProbe"]["grpc"]["port"],
        }
    return result


def k8s_manifest(values: dict[str, Any] | None = None) -> str:
    """The text of k8s/order-saga.yaml: the chart with ``values`` (default: the chart's
    defaults), release "order-saga", namespace "default", helm test hooks left out, in
    Helm's install order."""
    docs = [(src, text, obj) for src, text, obj in documents(values) if not is_test_hook(obj)]
    order = {kind: i for i, kind in enumerate(_INSTALL_ORDER)}
    docs.sort(key=lambda d: (order.get(d[2]["kind"], len(order)), d[2]["metadata"]["name"]))
    chart = load_chart().metadata
    header = (
        "# GENERATED FILE - do not edit. Made by scripts/render-k8s from helm/order-saga\n"
        f"# (chart {chart['name']} {chart['version']}, app {chart['appVersion']}) with its default"
        f' values, release "{RELEASE}",\n'
        f'# namespace "{NAMESPACE}", rendered by the Helm v4 SDK (helm-python-sdk'
        f" {helm.__version__}, Helm {helm.helm_sdk_version()}).\n"
        "# helm test hooks are left out. Change the chart, then run scripts/render-k8s;\n"
        "# tests/chart checks that this file matches a fresh render.\n"
    )
    body = "".join(f"---\n# Source: {src}\n{_helm_owned(text)}\n" for src, text, _ in docs)
    return header + body


# Helm's ownership annotations (what `helm install` itself writes on every object). The
# objects carry app.kubernetes.io/managed-by: Helm, and with these a later
# `helm install order-saga` into the same namespace adopts them instead of failing its
# ownership check ("exists and cannot be imported into the current release").
_OWNERSHIP = {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE}


def _helm_owned(text: str) -> str:
    """A rendered document with Helm's ownership annotations added to its metadata."""
    lines = text.split("\n")
    start = lines.index("metadata:")
    end = start + 1
    while end < len(lines) and (lines[end].startswith("  ") or lines[end].startswith("#")):
        end += 1
    added = [f"    {k}: {v}" for k, v in _OWNERSHIP.items()]
    if "  annotations:" in lines[start:end]:
        at = lines.index("  annotations:", start, end) + 1
        lines[at:at] = added
    else:
        lines[end:end] = ["  annotations:", *added]
    out = "\n".join(lines)
    obj = yaml.safe_load(out)
    assert obj["metadata"]["annotations"].items() >= _OWNERSHIP.items(), obj["metadata"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, metavar="FILE", help="write the manifest to FILE")
    mode.add_argument("--check", type=Path, metavar="FILE", help="fail if FILE is stale")
    mode.add_argument("--stdout", action="store_true", help="print the manifest")
    args = parser.parse_args(argv)
    text = k8s_manifest()
    if args.stdout:
        sys.stdout.write(text)
    elif args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
        print(f"wrote {args.write}", file=sys.stderr)
    else:
        current = args.check.read_text() if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is stale: run scripts/render-k8s", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
