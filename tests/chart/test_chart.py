"""Tests of the Helm chart in helm/order-saga and of the manifests rendered from it.

Run from the repository root with the tools venv (scripts/install-tools sets it up):

    .tools/venv/bin/python -m pytest tests/chart -q

Everything is offline: the Helm v4 Go SDK (helm-python-sdk) lints, validates values and
renders in-process; kubernetes-validate checks objects against the API schemas it ships;
checkov runs once per session on the default render and on a hardened one.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate.utils as kv
import pytest
import yaml

import render
from render import CHART_DIR, REPO_ROOT, env_dict, find, find_one, pod_spec

VENV_BIN = Path(sys.executable).parent
OLDEST_KUBERNETES = "1.29.0"
NEWEST_KUBERNETES = kv.latest_version()

SERVICES = {
    # key: (component, env prefix, port, gRPC health service)
    "order": ("order-service", "ORDER", 50051, "order.v1.OrderService"),
    "payment": ("payment-service", "PAYMENT", 50052, "payment.v1.PaymentService"),
    "shipping": ("shipping-service", "SHIPPING", 50053, "shipping.v1.ShippingService"),
}
DIGEST = "sha256:" + "0123456789abcdef" * 4

# Each documented option switched; every one must render, validate and stay secure.
VARIANTS: dict[str, dict[str, Any] | None] = {
    "defaults": None,
    "external-collector": {
        "jaeger": {"enabled": False},
        "otel": {"endpoint": "http://otel-collector.observability:4317"},
    },
    "no-tracing": {"jaeger": {"enabled": False}},
    "network-policy": {"networkPolicy": {"enabled": True}},
    "network-policy-no-jaeger": {"networkPolicy": {"enabled": True}, "jaeger": {"enabled": False}},
    "pdb-count": {"podDisruptionBudget": {"enabled": True, "maxUnavailable": 0}},
    "pdb-percent": {"podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"}},
    "scenario-success": {"job": {"scenario": "success", "count": 10, "concurrency": 4}},
    "scenario-payment-failure": {"job": {"scenario": "payment-failure", "count": 1}},
    "scenario-shipping-failure": {"job": {"scenario": "shipping-failure", "count": 2}},
    "run-options": {
        "job": {"output": "json", "runId": "ci-42", "verify": False},
        "orchestrator": {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    },
    "faults": {
        "services": {
            "order": {"faults": {"transientErrorRate": 0.1, "latencyMs": 600000}},
            "payment": {"faults": {"transientErrorRate": 0.2, "latencyMs": 5, "failureRate": 0.3}},
            "shipping": {"faults": {"failureRate": 1, "allowInjection": False}},
        },
        "job": {"scenario": "payment-failure"},
    },
    "sharded-job": {"job": {"parallelism": 3, "completions": 6, "ttlSecondsAfterFinished": 1000000}},
    "no-job": {"job": {"enabled": False}},
    "shutdown": {"shutdown": {"drainDelayMs": 2500, "gracePeriodSecs": 30}},
    "ratio-sampler": {
        "otel": {"sampler": "parentbased_traceidratio", "samplerArg": 0.25,
                 "resourceAttributes": "deployment.environment=ci,team=saga"},
    },
    "digests-and-registry": {
        "image": {"tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "services": {"order": {"image": {"repository": "ghcr.io/acme/order", "digest": DIGEST}}},
        "orchestrator": {"image": {"tag": "1.2.4"}},
        "jaeger": {"image": {"digest": DIGEST}},
    },
    "replicas-and-ports": {
        "services": {
            "order": {"replicaCount": 2, "port": 9001,
                      "store": {"backend": "postgres", "existingSecret": "order-db"}},
            "payment": {"port": 9002},
        },
    },
    "long-name": {"fullnameOverride": "o" * 63, "postgresql": {"enabled": True, "auth": {"password": "pw"}},
                  "services": {"order": {"store": {"backend": "postgres"}}}},
    # Stores.
    "persistence-off": {"services": {k: {"persistence": {"enabled": False}} for k in SERVICES}},
    "storage-options": {
        "services": {
            "order": {"store": {"sqliteSynchronous": "normal"},
                      "persistence": {"size": "5Gi", "storageClass": "fast-ssd",
                                      "accessModes": ["ReadWriteOncePod"]}},
            "payment": {"persistence": {"storageClass": "-"}},
            "shipping": {"store": {"backend": "memory"}},
        },
    },
    "postgres-in-chart": {
        "postgresql": {"enabled": True, "auth": {"password": "p@ss/w:rd%"},
                       "persistence": {"size": "20Gi", "storageClass": "fast-ssd"}},
        "services": {k: {"store": {"backend": "postgres"}, "replicaCount": 3} for k in SERVICES},
    },
    "postgres-existing-secret": {
        "postgresql": {"enabled": True,
                       "auth": {"existingSecret": "saga-pg", "secretKey": "pg-password"}},
        "services": {"order": {"store": {"backend": "postgres"}},
                     "payment": {"store": {"backend": "postgres"}}},
    },
    "postgres-external": {
        "services": {
            "order": {"store": {"backend": "postgres", "existingSecret": "order-db"}},
            "payment": {"store": {"backend": "postgres", "existingSecret": "saga-db",
                                  "existingSecretKey": "payment-url"}, "replicaCount": 2},
        },
    },
    "limits": {"services": {"payment": {"limits": {"maxConcurrentRequests": 64,
                                                   "requestTimeoutMs": 2500}}}},
    # TLS.
    "tls": {"tls": {"enabled": True, "secretName": "saga-tls", "clientSecretName": "saga-client"}},
    "tls-server-only": {
        "tls": {"enabled": True, "secretName": "saga-tls", "mutual": False,
                "domain": "saga.example.internal", "healthPort": 9086},
    },
    "everything": {
        "networkPolicy": {"enabled": True},
        "podDisruptionBudget": {"enabled": True},
        "tls": {"enabled": True, "secretName": "saga-tls", "clientSecretName": "saga-client"},
        "postgresql": {"enabled": True, "auth": {"password": "secret"}},
        "services": {"order": {"store": {"backend": "postgres"}, "replicaCount": 2},
                     "payment": {"store": {"backend": "postgres", "existingSecret": "pay-db"}}},
    },
}


def values_of(variant: str) -> dict[str, Any]:
    """The values a variant renders with: the chart's defaults merged with its overrides."""
    return render.load_chart().merge_values(VARIANTS[variant])


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec["containers"]


def workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kinds = ("Deployment", "StatefulSet", "Job", "CronJob", "Pod")
    return [o for o in objs if o["kind"] in kinds]


# The UID each container runs as: its image's user.
CONTAINER_UIDS = {"jaeger": 10001, "postgresql": 999}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render.render(VARIANTS[request.param])


@pytest.fixture(scope="module")
def objs() -> list[dict[str, Any]]:
    return render.render()


# --- helm lint ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_lint_has_no_errors_or_warnings(name: str) -> None:
    for kube_version in (None, f"v{OLDEST_KUBERNETES}"):
        report = helm.lint(CHART_DIR, VARIANTS[name], strict=True, kube_version=kube_version)
        assert report["errors"] == [], report
        serious = [m for m in report["messages"] if m["severity"] >= 2]
        assert serious == [], serious


def test_chart_metadata() -> None:
    meta = render.load_chart().metadata
    assert meta["apiVersion"] == "v2"
    assert (meta["name"], meta["version"], meta["appVersion"]) == ("order-saga", "0.1.0", "0.1.0")
    assert meta["kubeVersion"] == ">=1.29.0-0"


# --- every variant: valid Kubernetes, secure pods -----------------------------------------


# Objects already found valid, by (version, canonical JSON): most variants change one or two
# objects, and validating the same object again would only cost time.
_VALID_OBJECTS: set[tuple[str, str]] = set()


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
def test_render_passes_kubernetes_validate_strict(variant, version: str) -> None:
    name, rendered = variant
    assert rendered, name
    for obj in rendered:
        seen = (version, json.dumps(obj, sort_keys=True))
        if seen in _VALID_OBJECTS:
            continue
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as err:  # pragma: no cover - the message is the point
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} on {version}: {err}")
        _VALID_OBJECTS.add(seen)


def test_every_pod_is_locked_down(variant) -> None:
    name, rendered = variant
    for obj in workloads(rendered):
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        assert spec["enableServiceLinks"] is False, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in containers(obj):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            expected_uid = CONTAINER_UIDS.get(container["name"], 65532)
            assert sc["runAsUser"] == expected_uid, where
            assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"], where
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, where


def test_names_fit_kubernetes_limits(variant) -> None:
    name, rendered = variant
    dns_label = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
    for obj in rendered:
        obj_name = obj["metadata"]["name"]
        assert dns_label.match(obj_name), f"{name}: {obj['kind']} {obj_name!r}"
        for value in (obj["metadata"].get("labels") or {}).values():
            assert len(value) <= 63, f"{name}: label {value!r}"
    names = [(o["kind"], o["metadata"]["name"]) for o in rendered]
    assert len(names) == len(set(names)), f"{name}: duplicate objects"


def test_selectors_match_their_pods(variant) -> None:
    name, rendered = variant
    for obj in rendered:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            selector = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert set(selector) == {
                "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"
            }, name
            assert selector.items() <= labels.items(), name
        if obj["kind"] == "Service":
            targets = [
                d for d in find(rendered, "Deployment") + find(rendered, "StatefulSet")
                if obj["spec"]["selector"].items()
                <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert len(targets) == 1, f"{name}: Service {obj['metadata']['name']} selects {targets}"


def test_all_objects_carry_the_common_labels(variant) -> None:
    name, rendered = variant
    for obj in rendered:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "order-saga", name
        assert labels["app.kubernetes.io/managed-by"] == "Helm", name
        assert labels["helm.sh/chart"] == "order-saga-0.1.0", name
        assert labels["app.kubernetes.io/component"], name


# --- the services ------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(SERVICES))
def test_service_deployment_and_service(objs, key: str) -> None:
    comp, prefix, port, health = SERVICES[key]
    deployment = find_one(objs, "Deployment", comp)
    (container,) = pod_spec(deployment)["containers"]
    assert container["name"] == comp
    assert container["image"] == f"order-saga/{comp}:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["ports"] == [
        {"name": "grpc", "containerPort": port, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": port, "service": health}, probe
    env = env_dict(container)
    assert env[f"{prefix}_LISTEN_ADDR"] == f"0.0.0.0:{port}"
    assert env[f"{prefix}_METRICS_LISTEN_ADDR"] == "0.0.0.0:9090"
    assert env[f"{prefix}_SHUTDOWN__DRAIN_DELAY_MS"] == "3000"
    assert env[f"{prefix}_SHUTDOWN__GRACE_PERIOD_SECS"] == "10"
    assert env[f"{prefix}_FAULTS__TRANSIENT_ERROR_RATE"] == "0"
    assert env[f"{prefix}_FAULTS__LATENCY_MS"] == "0"
    if key == "order":
        assert f"{prefix}_FAULTS__FAILURE_RATE" not in env
        assert f"{prefix}_FAULTS__ALLOW_INJECTION" not in env
    else:
        assert env[f"{prefix}_FAULTS__FAILURE_RATE"] == "0"
        assert env[f"{prefix}_FAULTS__ALLOW_INJECTION"] == "true"
    assert env["OTEL_SERVICE_NAME"] == comp
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://order-saga-jaeger:4317"
    assert env["RUST_LOG"] == "info"

    service = find_one(objs, "Service", comp)
    assert service["metadata"]["name"] == f"order-saga-{key}"
    assert service["spec"]["ports"] == [
        {"name": "grpc", "port": port, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP", "appProtocol": "http"},
    ]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "9090", "prometheus.io/path": "/metrics",
    }


def test_service_env_is_only_its_own_settings(variant) -> None:
    """Settings deny unknown fields: a service must get no variable with its prefix that
    is not one of its settings, and nothing but its settings, RUST_LOG and OTEL_*."""
    name, rendered = variant
    values = values_of(name)
    known = {"LISTEN_ADDR", "METRICS_LISTEN_ADDR", "SHUTDOWN__DRAIN_DELAY_MS", "SHUTDOWN__GRACE_PERIOD_SECS",
             "FAULTS__TRANSIENT_ERROR_RATE", "FAULTS__LATENCY_MS", "STORE__BACKEND",
             "LIMITS__MAX_CONCURRENT_REQUESTS", "LIMITS__REQUEST_TIMEOUT_MS"}
    business = {"FAULTS__FAILURE_RATE", "FAULTS__ALLOW_INJECTION"}
    sqlite = {"STORE__DATA_DIR", "STORE__SQLITE_SYNCHRONOUS"}
    tls = {"HEALTH_LISTEN_ADDR", "TLS__CERT_FILE", "TLS__KEY_FILE"}
    for key, (comp, prefix, _, _) in SERVICES.items():
        (container,) = pod_spec(find_one(rendered, "Deployment", comp))["containers"]
        names = [e["name"] for e in container["env"]]
        assert len(names) == len(set(names)), (name, names)
        own = {n.removeprefix(prefix + "_") for n in names if n.startswith(prefix + "_")}
        expected = known | (business if key != "order" else set())
        backend = values["services"][key]["store"]["backend"]
        if backend == "sqlite":
            expected |= sqlite
        if values["tls"]["enabled"]:
            expected |= tls | ({"TLS__CLIENT_CA_FILE"} if values["tls"]["mutual"] else set())
        assert own == expected, name
        others = set(names) - {f"{prefix}_{n}" for n in own}
        database = {"DATABASE_URL"} if backend == "postgres" else set()
        if backend == "postgres" and not values["services"][key]["store"]["existingSecret"] \
                and values["postgresql"]["auth"]["existingSecret"]:
            database.add("DATABASE_PASSWORD")
        assert {n for n in others if n.startswith("DATABASE_")} == database, name
        assert all(n == "RUST_LOG" or n.startswith(("OTEL_", "DATABASE_")) for n in others), (name, others)


def test_faults_reach_the_services() -> None:
    services = render.service_invocations(VARIANTS["faults"])
    assert services["order"]["env"]["ORDER_FAULTS__TRANSIENT_ERROR_RATE"] == "0.1"
    assert services["order"]["env"]["ORDER_FAULTS__LATENCY_MS"] == "600000"
    assert services["payment"]["env"]["PAYMENT_FAULTS__TRANSIENT_ERROR_RATE"] == "0.2"
    assert services["payment"]["env"]["PAYMENT_FAULTS__LATENCY_MS"] == "5"
    assert services["payment"]["env"]["PAYMENT_FAULTS__FAILURE_RATE"] == "0.3"
    assert services["payment"]["env"]["PAYMENT_FAULTS__ALLOW_INJECTION"] == "true"
    assert services["shipping"]["env"]["SHIPPING_FAULTS__FAILURE_RATE"] == "1"
    assert services["shipping"]["env"]["SHIPPING_FAULTS__ALLOW_INJECTION"] == "false"


@pytest.mark.parametrize("name", ["defaults", "shutdown"])
def test_termination_grace_outlasts_drain_and_grace(name: str) -> None:
    shutdown = values_of(name)["shutdown"]
    for key, (comp, prefix, _, _) in SERVICES.items():
        deployment = find_one(render.render(VARIANTS[name]), "Deployment", comp)
        env = env_dict(pod_spec(deployment)["containers"][0])
        assert env[f"{prefix}_SHUTDOWN__DRAIN_DELAY_MS"] == str(shutdown["drainDelayMs"])
        assert env[f"{prefix}_SHUTDOWN__GRACE_PERIOD_SECS"] == str(shutdown["gracePeriodSecs"])
        needed = shutdown["drainDelayMs"] / 1000 + shutdown["gracePeriodSecs"]
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > needed


def test_replicas_and_ports_follow_values() -> None:
    rendered = render.render(VARIANTS["replicas-and-ports"])  # order on PostgreSQL: 2 pods
    order = find_one(rendered, "Deployment", "order-service")
    assert order["spec"]["replicas"] == 2
    (container,) = pod_spec(order)["containers"]
    assert container["readinessProbe"]["grpc"]["port"] == 9001
    assert env_dict(container)["ORDER_LISTEN_ADDR"] == "0.0.0.0:9001"
    assert find_one(rendered, "Service", "payment-service")["spec"]["ports"][0]["port"] == 9002
    env = render.orchestrator_invocation(VARIANTS["replicas-and-ports"])["env"]
    assert env["SAGA_ORDER_URL"] == "http://order-saga-order:9001"
    assert env["SAGA_PAYMENT_URL"] == "http://order-saga-payment:9002"
    assert env["SAGA_SHIPPING_URL"] == "http://order-saga-shipping:50053"


def test_images_tags_digests_and_pull_secrets() -> None:
    rendered = render.render(VARIANTS["digests-and-registry"])
    images = {c["name"]: c for o in workloads(rendered) for c in containers(o)}
    assert images["order-service"]["image"] == f"ghcr.io/acme/order@{DIGEST}"
    assert images["payment-service"]["image"] == "order-saga/payment-service:1.2.3"
    assert images["saga-orchestrator"]["image"] == "order-saga/saga-orchestrator:1.2.4"
    assert images["jaeger"]["image"] == f"jaegertracing/jaeger@{DIGEST}"
    assert images["order-service"]["imagePullPolicy"] == "Always"
    for obj in workloads(rendered):
        assert pod_spec(obj)["imagePullSecrets"] == [{"name": "regcred"}]


def test_pod_disruption_budgets() -> None:
    assert find(render.render(), "PodDisruptionBudget") == []
    for name, expected in (("pdb-count", 0), ("pdb-percent", "50%")):
        rendered = render.render(VARIANTS[name])
        pdbs = find(rendered, "PodDisruptionBudget")
        assert len(pdbs) == 3
        for pdb in pdbs:
            assert pdb["spec"]["maxUnavailable"] == expected
            deployment = find_one(rendered, "Deployment", render.component(pdb))
            assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


# --- the orchestrator Job ----------------------------------------------------------------


def test_job_defaults(objs) -> None:
    job = find_one(objs, "Job", "saga-orchestrator")
    assert job["metadata"]["name"] == "order-saga-orchestrator-1"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 600
    assert spec["ttlSecondsAfterFinished"] == 86400
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 1, 1)
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    (container,) = spec["template"]["spec"]["containers"]
    assert "command" not in container  # the image's ENTRYPOINT is saga-orchestrator
    assert container["args"] == [
        "run", "--scenario", "all", "--count", "3", "--concurrency", "2", "--output", "text",
        "--run-id", "$(RUN_ID)",
    ]
    # One run id per Job object (a rollback or a reinstall that creates the Job again runs
    # new sagas): its name and uid, put together by the kubelet.
    uid, run_id = container["env"][0], container["env"][1]
    assert uid == {"name": "JOB_UID", "valueFrom": {"fieldRef": {"apiVersion": "v1",
        "fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}}}
    assert run_id == {"name": "RUN_ID", "value": "order-saga-orchestrator-1-$(JOB_UID)"}
    assert render.orchestrator_invocation()["args"][-1] == "order-saga-orchestrator-1-" + render.JOB_UID
    # Helm deletes no Job: an upgrade or rollback never cuts a run short (TTL removes it).
    assert job["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    env = env_dict(container)
    assert env["SAGA_ORDER_URL"] == "http://order-saga-order:50051"
    assert env["SAGA_PAYMENT_URL"] == "http://order-saga-payment:50052"
    assert env["SAGA_SHIPPING_URL"] == "http://order-saga-shipping:50053"
    assert env["SAGA_WAIT_READY_SECS"] == "120"
    assert env["SAGA_RETRY__MAX_ATTEMPTS"] == "8"
    assert env["SAGA_RETRY__CALL_TIMEOUT_MS"] == "2000"
    assert env["SAGA_COMPENSATION_RETRY__MAX_ATTEMPTS"] == "20"
    assert env["SAGA_USER_ID"] == "demo-user"
    assert env["SAGA_SHIPPING_ADDRESS"] == "221B Baker Street, London"
    assert env["SAGA_JAEGER_UI"] == "http://localhost:16686"
    assert env["OTEL_SERVICE_NAME"] == "saga-orchestrator"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://order-saga-jaeger:4317"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_always_on"
    assert "OTEL_TRACES_SAMPLER_ARG" not in env
    assert "TRACEPARENT" not in env
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == (
        "service.namespace=order-saga,service.version=0.1.0,k8s.namespace.name=default"
    )


# --- the recovery CronJob -------------------------------------------------------------------


def test_recovery_cronjob_defaults(objs) -> None:
    cron = find_one(objs, "CronJob", "saga-orchestrator")
    assert cron["metadata"]["name"] == "order-saga-recovery"
    spec = cron["spec"]
    assert (spec["schedule"], spec["concurrencyPolicy"]) == ("*/5 * * * *", "Forbid")
    job = spec["jobTemplate"]["spec"]
    assert (job["backoffLimit"], job["activeDeadlineSeconds"]) == (0, 600)
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (recover,) = pod["initContainers"]
    (audit,) = pod["containers"]
    assert recover["args"] == ["recover", "--older-than", "30s"]
    assert audit["args"] == ["audit", "--older-than", "30s"]
    # The same image, settings, trace export and lock-down as the Job (but for the Job's own
    # run id).
    job_container = render.orchestrator_invocation()
    job_env = {k: v for k, v in job_container["env"].items() if k not in ("JOB_UID", "RUN_ID")}
    for container in (recover, audit):
        assert container["image"] == job_container["image"]
        assert "command" not in container
        env = env_dict(container)
        assert env == job_env, container["name"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://order-saga-jaeger:4317"


def test_recovery_cronjob_values() -> None:
    values = {"recovery": {"schedule": "0 * * * *", "olderThanSeconds": 600}}
    invocations = render.recovery_invocations(values)
    assert [i["args"] for i in invocations] == [
        ["recover", "--older-than", "600s"], ["audit", "--older-than", "600s"],
    ]
    cron = find_one(render.render(values), "CronJob", "saga-orchestrator")
    assert cron["spec"]["schedule"] == "0 * * * *"
    off = render.render({"recovery": {"enabled": False}})
    assert not find(off, "CronJob")
    under_tls = render.recovery_invocations(VARIANTS["tls"])
    assert all(i["env"]["SAGA_ORDER_URL"].startswith("https://") for i in under_tls)


@pytest.mark.parametrize(
    "name, scenario, count, concurrency",
    [
        ("scenario-success", "success", "10", "4"),
        ("scenario-payment-failure", "payment-failure", "1", "2"),
        ("scenario-shipping-failure", "shipping-failure", "2", "2"),
    ],
)
def test_job_scenarios(name: str, scenario: str, count: str, concurrency: str) -> None:
    args = render.orchestrator_invocation(VARIANTS[name])["args"]
    assert args == ["run", "--scenario", scenario, "--count", count,
                    "--concurrency", concurrency, "--output", "text",
                    "--run-id", "order-saga-orchestrator-1-" + render.JOB_UID]


def test_job_run_options_and_traceparent() -> None:
    job = render.orchestrator_invocation(VARIANTS["run-options"])
    assert job["args"] == ["run", "--scenario", "all", "--count", "3", "--concurrency", "2",
                           "--output", "json", "--run-id", "ci-42", "--no-verify"]
    assert job["env"]["TRACEPARENT"] == "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


def test_job_sharding_values() -> None:
    job = find_one(render.render(VARIANTS["sharded-job"]), "Job")
    assert (job["spec"]["parallelism"], job["spec"]["completions"]) == (3, 6)
    # Every pod runs its shard (JOB_COMPLETION_INDEX) of the same run.
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"][-4:] == ["--run-id", "$(RUN_ID)", "--shard-count", "6"]
    # Helm holds numbers as float64: a large integer must not come out as 1e+06.
    assert job["spec"]["ttlSecondsAfterFinished"] == 1000000
    assert job["spec"]["completionMode"] == "Indexed"


def test_job_mix() -> None:
    values = {"job": {"mix": "success=80,payment-failure=10,shipping-failure=10", "count": 1000}}
    args = render.orchestrator_invocation(values)["args"]
    assert args[:5] == ["run", "--mix", "success=80,payment-failure=10,shipping-failure=10", "--count", "1000"]
    assert "--scenario" not in args
    # A mix with failures needs injection; a success-only mix does not.
    off = {"services": {"payment": {"faults": {"allowInjection": False}}}}
    with pytest.raises(Exception, match="allowInjection"):
        render.render({**off, **values})
    render.render({**off, "job": {"mix": "success=1", "count": 5}})


def test_job_reruns_on_upgrade() -> None:
    """Each release revision has its own Job, so `helm upgrade` runs the sagas again."""
    assert render.orchestrator_invocation(revision=1)["name"] == "order-saga-orchestrator-1"
    assert render.orchestrator_invocation(revision=7)["name"] == "order-saga-orchestrator-7"
    job = find_one(render.render(), "Job")
    assert "helm.sh/hook" not in (job["metadata"].get("annotations") or {})


def test_job_can_be_disabled() -> None:
    assert find(render.render(VARIANTS["no-job"]), "Job") == []


@pytest.mark.parametrize(
    "scenario, service",
    [("payment-failure", "payment"), ("shipping-failure", "shipping"), ("all", "payment"),
     ("all", "shipping")],
)
def test_failure_scenarios_need_injection(scenario: str, service: str) -> None:
    values = {"job": {"scenario": scenario},
              "services": {service: {"faults": {"allowInjection": False}}}}
    with pytest.raises(helm.HelmRenderError, match=f"services.{service}.faults.allowInjection"):
        render.render(values)
    # Without injection the success scenario is fine.
    values["job"]["scenario"] = "success"
    assert find(render.render(values), "Job")


# --- tracing -----------------------------------------------------------------------------


def _otel(rendered: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, str]]:
    """The env of every app container, by (kind, container name)."""
    return {(o["kind"], c["name"]): env_dict(c) for o in workloads(rendered)
            for c in containers(o) if c["name"] != "jaeger" and not c["name"].startswith("wait-for-")}


def test_tracing_to_bundled_jaeger(objs) -> None:
    jaeger = find_one(objs, "Deployment", "jaeger")
    (container,) = pod_spec(jaeger)["containers"]
    assert container["image"] == "jaegertracing/jaeger:2.17.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["otlp-grpc"] == 4317 and ports["ui"] == 16686
    assert container["readinessProbe"]["httpGet"] == {"path": "/status", "port": "health"}
    service = find_one(objs, "Service", "jaeger")
    assert service["metadata"]["name"] == "order-saga-jaeger"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "otlp-grpc": 4317, "otlp-http": 4318, "ui": 16686, "health": 13133}
    # The Job starts once Jaeger is healthy, so that no span of the run is dropped.
    job = find_one(objs, "Job", "saga-orchestrator")
    (wait,) = pod_spec(job)["initContainers"]
    assert wait["name"] == "wait-for-jaeger" and wait["image"] == container["image"]
    assert "http://$JAEGER_HOST:13133/status" in wait["command"][-1]
    assert env_dict(wait) == {"JAEGER_HOST": "order-saga-jaeger"}
    envs = _otel(objs)
    assert len(envs) == 7  # three services, the Job, recover and audit, the test pod
    for env in envs.values():
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://order-saga-jaeger:4317"
        # Jaeger takes traces only; metrics are scraped.
        assert env["OTEL_METRICS_EXPORTER"] == "none"


def test_tracing_to_an_existing_collector() -> None:
    rendered = render.render(VARIANTS["external-collector"])
    assert find(rendered, "Deployment", "jaeger") == [] and find(rendered, "Service", "jaeger") == []
    for env in _otel(rendered).values():
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
        assert "OTEL_METRICS_EXPORTER" not in env  # a collector takes metrics too


def test_no_endpoint_without_jaeger_or_collector() -> None:
    rendered = render.render(VARIANTS["no-tracing"])
    for (kind, name), env in _otel(rendered).items():
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env, (kind, name)
        # The recovery CronJob's containers are named for their step; the binary is the same.
        binary = "saga-orchestrator" if kind == "CronJob" else name
        assert env["OTEL_SERVICE_NAME"] == binary


def test_sampler_and_resource_attributes() -> None:
    for env in _otel(render.render(VARIANTS["ratio-sampler"])).values():
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
        assert env["OTEL_RESOURCE_ATTRIBUTES"].endswith(",deployment.environment=ci,team=saga")


# --- stores ------------------------------------------------------------------------------


def _service(rendered: list[dict[str, Any]], key: str) -> tuple[dict, dict, dict[str, Any]]:
    """(Deployment, its container, its env entries by name) of a service."""
    deployment = find_one(rendered, "Deployment", SERVICES[key][0])
    (container,) = pod_spec(deployment)["containers"]
    return deployment, container, {e["name"]: e for e in container["env"]}


def _volumes(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(deployment).get("volumes", [])}


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def _secret_value(obj: dict[str, Any], key: str) -> str:
    return base64.b64decode(obj["data"][key]).decode()


@pytest.mark.parametrize("key", sorted(SERVICES))
def test_sqlite_on_a_claim_by_default(objs, key: str) -> None:
    """SQLite under /data on the service's own ReadWriteOnce claim; Recreate, so that two
    pods never hold the file; a writable /tmp; volumes group-owned by the pod's user."""
    comp, prefix, _, _ = SERVICES[key]
    deployment, container, env = _service(objs, key)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert env[f"{prefix}_STORE__BACKEND"]["value"] == "sqlite"
    assert env[f"{prefix}_STORE__DATA_DIR"]["value"] == "/data"
    assert env[f"{prefix}_STORE__SQLITE_SYNCHRONOUS"]["value"] == "full"
    assert "DATABASE_URL" not in env
    assert set(_mounts(container)) == {"/data", "/tmp"}
    volumes = _volumes(deployment)
    claim_name = f"order-saga-{key}-data"
    assert volumes[_mounts(container)["/data"]["name"]] == {
        "name": "data", "persistentVolumeClaim": {"claimName": claim_name}}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "64Mi"}
    assert pod_spec(deployment)["securityContext"]["fsGroup"] == 65532
    claims = {c["metadata"]["name"]: c for c in find(objs, "PersistentVolumeClaim")}
    claim = claims[claim_name]
    assert render.component(claim) == comp
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "1Gi"}}}
    assert "initContainers" not in pod_spec(deployment)


def test_persistence_off_keeps_sqlite_in_an_emptydir() -> None:
    rendered = render.render(VARIANTS["persistence-off"])
    assert find(rendered, "PersistentVolumeClaim") == []
    for key in SERVICES:
        deployment, container, env = _service(rendered, key)
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        data = _volumes(deployment)[_mounts(container)["/data"]["name"]]
        assert data["emptyDir"] == {"sizeLimit": "1Gi"}
        assert env[f"{SERVICES[key][1]}_STORE__BACKEND"]["value"] == "sqlite"


def test_storage_options() -> None:
    rendered = render.render(VARIANTS["storage-options"])
    claims = {c["metadata"]["name"]: c["spec"] for c in find(rendered, "PersistentVolumeClaim")}
    assert claims == {
        "order-saga-order-data": {"accessModes": ["ReadWriteOncePod"], "storageClassName": "fast-ssd",
                                  "resources": {"requests": {"storage": "5Gi"}}},
        # "-": no dynamic provisioning, storageClassName "".
        "order-saga-payment-data": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                                    "resources": {"requests": {"storage": "1Gi"}}},
    }
    _, _, env = _service(rendered, "order")
    assert env["ORDER_STORE__SQLITE_SYNCHRONOUS"]["value"] == "normal"
    # Memory: no volume for records, rolling updates.
    deployment, container, env = _service(rendered, "shipping")
    assert env["SHIPPING_STORE__BACKEND"]["value"] == "memory"
    assert "SHIPPING_STORE__DATA_DIR" not in env and "DATABASE_URL" not in env
    assert set(_mounts(container)) == {"/tmp"}
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"


def test_limits_reach_the_services(objs) -> None:
    for key, (_, prefix, _, _) in SERVICES.items():
        env = _service(objs, key)[2]
        assert env[f"{prefix}_LIMITS__MAX_CONCURRENT_REQUESTS"]["value"] == "1024"
        assert env[f"{prefix}_LIMITS__REQUEST_TIMEOUT_MS"]["value"] == "10000"
    env = _service(render.render(VARIANTS["limits"]), "payment")[2]
    assert env["PAYMENT_LIMITS__MAX_CONCURRENT_REQUESTS"]["value"] == "64"
    assert env["PAYMENT_LIMITS__REQUEST_TIMEOUT_MS"]["value"] == "2500"


def test_in_chart_postgresql() -> None:
    """A StatefulSet on a claim; one database per service made by the init script; each
    service gets DATABASE_URL (password URL-encoded) from its own Secret, no claim, and
    rolls with several replicas."""
    rendered = render.render(VARIANTS["postgres-in-chart"])
    sts = find_one(rendered, "StatefulSet", "postgresql")
    assert sts["metadata"]["name"] == "order-saga-postgresql"
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == "order-saga-postgresql-hl"
    spec = pod_spec(sts)
    assert spec["securityContext"]["runAsUser"] == spec["securityContext"]["fsGroup"] == 999
    (container,) = spec["containers"]
    assert container["image"] == "docker.io/library/postgres:16.4-bookworm"
    env = env_dict(container)
    assert env == {"POSTGRES_USER": "order_saga",
                   "POSTGRES_PASSWORD_FILE": "/etc/order-saga/postgresql/password",
                   "PGDATA": "/var/lib/postgresql/data/pgdata"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/var/lib/postgresql/data": "data", "/var/run/postgresql": "run",
                      "/tmp": "tmp", "/docker-entrypoint-initdb.d": "initdb",
                      "/etc/order-saga/postgresql": "password"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["password"]["secret"] == {
        "secretName": "order-saga-postgresql", "defaultMode": 0o440,
        "items": [{"key": "password", "path": "password"}]}
    assert volumes["initdb"]["configMap"]["name"] == "order-saga-postgresql-initdb"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[0] == "pg_isready" and "127.0.0.1" in command and "order_saga" in command
    (template,) = sts["spec"]["volumeClaimTemplates"]
    assert template["metadata"]["name"] == "data"
    assert set(template["metadata"]["labels"]) == {  # immutable: no version labels
        "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
    assert template["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast-ssd",
                                "resources": {"requests": {"storage": "20Gi"}}}

    secrets = {o["metadata"]["name"]: o for o in find(rendered, "Secret")}
    assert _secret_value(secrets["order-saga-postgresql"], "password") == "p@ss/w:rd%"
    sql = find_one(rendered, "ConfigMap", "postgresql")["data"]["01-databases.sql"]
    assert sql.split("\n") == ["CREATE DATABASE order_service;", "CREATE DATABASE payment_service;",
                               "CREATE DATABASE shipping_service;", ""]
    services = {s["metadata"]["name"]: s for s in find(rendered, "Service", "postgresql")}
    assert services["order-saga-postgresql-hl"]["spec"]["clusterIP"] == "None"
    assert services["order-saga-postgresql"]["spec"]["ports"][0]["port"] == 5432

    assert find(rendered, "PersistentVolumeClaim") == []
    for key, (comp, prefix, _, _) in SERVICES.items():
        deployment, container, env = _service(rendered, key)
        assert deployment["spec"]["replicas"] == 3
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        assert env[f"{prefix}_STORE__BACKEND"]["value"] == "postgres"
        ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"order-saga-{key}-database", "key": "DATABASE_URL"}
        url = _secret_value(secrets[ref["name"]], "DATABASE_URL")
        assert url == (f"postgres://order_saga:p%40ss%2Fw%3Ard%25@order-saga-postgresql:5432/"
                       f"{key}_service")
        assert set(_mounts(container)) == {"/tmp"}
        (wait,) = pod_spec(deployment)["initContainers"]
        assert wait["name"] == "wait-for-postgresql"
        assert wait["image"] == "docker.io/library/postgres:16.4-bookworm"
        assert env_dict(wait) == {"PGHOST": "order-saga-postgresql", "PGUSER": "order_saga"}


def test_in_chart_postgresql_with_an_existing_secret() -> None:
    """The chart never sees the password: no Secret of its own, PostgreSQL reads the given
    one, and the services' DATABASE_URL is expanded by the kubelet from DATABASE_PASSWORD."""
    rendered = render.render(VARIANTS["postgres-existing-secret"])
    assert find(rendered, "Secret") == []
    sts = find_one(rendered, "StatefulSet", "postgresql")
    volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}
    assert volumes["password"]["secret"]["secretName"] == "saga-pg"
    assert volumes["password"]["secret"]["items"] == [{"key": "pg-password", "path": "password"}]
    for key in ("order", "payment"):
        _, container, env = _service(rendered, key)
        names = [e["name"] for e in container["env"]]
        assert names.index("DATABASE_PASSWORD") < names.index("DATABASE_URL")  # $(VAR) order
        assert env["DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "saga-pg", "key": "pg-password"}
        assert env["DATABASE_URL"]["value"] == (
            f"postgres://order_saga:$(DATABASE_PASSWORD)@order-saga-postgresql:5432/{key}_service")
    # shipping stays on SQLite.
    assert [c["metadata"]["name"] for c in find(rendered, "PersistentVolumeClaim")] == [
        "order-saga-shipping-data"]


def test_external_postgresql_from_a_secret() -> None:
    rendered = render.render(VARIANTS["postgres-external"])
    assert find(rendered, "StatefulSet") == [] and find(rendered, "Secret") == []
    for key, name, secret_key in (("order", "order-db", "DATABASE_URL"),
                                  ("payment", "saga-db", "payment-url")):
        deployment, container, env = _service(rendered, key)
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": secret_key}
        assert "initContainers" not in pod_spec(deployment)
        assert set(_mounts(container)) == {"/tmp"}
    assert _service(rendered, "payment")[0]["spec"]["replicas"] == 2


def test_postgres_store_needs_a_database() -> None:
    with pytest.raises(helm.HelmRenderError, match="postgresql.enabled=true"):
        render.render({"services": {"order": {"store": {"backend": "postgres"}}}})


def test_network_policy_admits_the_services_to_postgresql() -> None:
    rendered = render.render(VARIANTS["everything"])
    policy = find_one(rendered, "NetworkPolicy", "postgresql")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "postgresql", "protocol": "TCP"}]
    (source,) = rule["from"]
    (expression,) = source["podSelector"]["matchExpressions"]
    # The services, and the Job's wait-for-postgresql (pg_isready).
    assert sorted(expression["values"]) == sorted(
        [c for c, _, _, _ in SERVICES.values()] + ["saga-orchestrator"])
    job = find_one(rendered, "Job")
    assert [c["name"] for c in pod_spec(job)["initContainers"]] == ["wait-for-postgresql", "wait-for-jaeger"]
    for key in SERVICES:
        labels = _service(rendered, key)[0]["spec"]["template"]["metadata"]["labels"]
        assert source["podSelector"]["matchLabels"].items() <= labels.items()
    sts_labels = find_one(rendered, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= sts_labels.items()


# --- TLS ---------------------------------------------------------------------------------


def test_tls_is_off_by_default(objs) -> None:
    for key, (_, prefix, port, _) in SERVICES.items():
        _, container, env = _service(objs, key)
        assert not [n for n in env if "TLS" in n or n.endswith("HEALTH_LISTEN_ADDR")]
        assert [p["name"] for p in container["ports"]] == ["grpc", "metrics"]
        assert container["readinessProbe"]["grpc"]["port"] == port
    for obj in find(objs, "Job") + find(objs, "Pod"):
        (container,) = pod_spec(obj)["containers"]
        env = env_dict(container)
        assert not [n for n in env if n.startswith("SAGA_TLS__")]
        assert env["SAGA_ORDER_URL"].startswith("http://")
        assert "volumeMounts" not in container and "volumes" not in pod_spec(obj)


def _tls_volume(obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(Secret, key, path) of every item of the pod's projected "tls" volume."""
    (volume,) = [v for v in pod_spec(obj)["volumes"] if v["name"] == "tls"]
    assert volume["projected"]["defaultMode"] == 0o440
    return [(source["secret"]["name"], item["key"], item["path"])
            for source in volume["projected"]["sources"] for item in source["secret"]["items"]]


def test_mutual_tls() -> None:
    """Services serve TLS with the server certificate and verify clients against the client
    Secret's CA; probes use the plaintext health port; the orchestrator (Job and helm test)
    calls https:// with the servers' CA and presents its client certificate. No pod mounts
    a private key that is not its own."""
    rendered = render.render(VARIANTS["tls"])
    for key, (comp, prefix, port, health) in SERVICES.items():
        deployment, container, env = _service(rendered, key)
        values = {n: e["value"] for n, e in env.items() if "value" in e}
        assert values[f"{prefix}_TLS__CERT_FILE"] == "/etc/order-saga/tls/tls.crt"
        assert values[f"{prefix}_TLS__KEY_FILE"] == "/etc/order-saga/tls/tls.key"
        assert values[f"{prefix}_TLS__CLIENT_CA_FILE"] == "/etc/order-saga/tls/client-ca.crt"
        assert values[f"{prefix}_HEALTH_LISTEN_ADDR"] == "0.0.0.0:8086"
        assert values[f"{prefix}_LISTEN_ADDR"] == f"0.0.0.0:{port}"
        assert container["ports"] == [
            {"name": "grpc", "containerPort": port, "protocol": "TCP"},
            {"name": "health", "containerPort": 8086, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": 8086, "service": health}, probe
        assert _mounts(container)["/etc/order-saga/tls"] == {
            "name": "tls", "mountPath": "/etc/order-saga/tls", "readOnly": True}
        assert _tls_volume(deployment) == [("saga-tls", "tls.crt", "tls.crt"),
                                           ("saga-tls", "tls.key", "tls.key"),
                                           ("saga-client", "ca.crt", "client-ca.crt")]
        # The Service exposes the TLS port and metrics, not the plaintext health port.
        service = find_one(rendered, "Service", comp)
        assert [p["name"] for p in service["spec"]["ports"]] == ["grpc", "metrics"]
    orchestrators = find(rendered, "Job") + find(rendered, "Pod")
    assert len(orchestrators) == 2
    for obj in orchestrators:
        (container,) = pod_spec(obj)["containers"]
        env = env_dict(container)
        assert env["SAGA_ORDER_URL"] == "https://order-saga-order:50051"
        assert env["SAGA_PAYMENT_URL"] == "https://order-saga-payment:50052"
        assert env["SAGA_SHIPPING_URL"] == "https://order-saga-shipping:50053"
        assert env["SAGA_TLS__CA_FILE"] == "/etc/order-saga/tls/ca.crt"
        assert env["SAGA_TLS__CERT_FILE"] == "/etc/order-saga/tls/tls.crt"
        assert env["SAGA_TLS__KEY_FILE"] == "/etc/order-saga/tls/tls.key"
        assert "SAGA_TLS__DOMAIN" not in env
        assert container["volumeMounts"] == [
            {"name": "tls", "mountPath": "/etc/order-saga/tls", "readOnly": True}]
        assert _tls_volume(obj) == [("saga-tls", "ca.crt", "ca.crt"),
                                    ("saga-client", "tls.crt", "tls.crt"),
                                    ("saga-client", "tls.key", "tls.key")]


def test_server_only_tls() -> None:
    rendered = render.render(VARIANTS["tls-server-only"])
    for key, (_, prefix, _, health) in SERVICES.items():
        deployment, container, env = _service(rendered, key)
        assert f"{prefix}_TLS__CLIENT_CA_FILE" not in env
        assert env[f"{prefix}_HEALTH_LISTEN_ADDR"]["value"] == "0.0.0.0:9086"
        assert container["livenessProbe"]["grpc"] == {"port": 9086, "service": health}
        assert [s for s, _, _ in _tls_volume(deployment)] == ["saga-tls", "saga-tls"]
    job = find_one(rendered, "Job")
    env = env_dict(pod_spec(job)["containers"][0])
    assert env["SAGA_TLS__CA_FILE"] == "/etc/order-saga/tls/ca.crt"
    assert env["SAGA_TLS__DOMAIN"] == "saga.example.internal"
    assert "SAGA_TLS__CERT_FILE" not in env and "SAGA_TLS__KEY_FILE" not in env
    assert _tls_volume(job) == [("saga-tls", "ca.crt", "ca.crt")]


def test_network_policy_admits_the_health_port_under_tls() -> None:
    """Under TLS the kubelet probes a plaintext health port (grpc.health.v1 only): admitted
    from anywhere, for CNIs that filter the node's traffic too; gRPC only from orchestrators;
    the third rule is for scrapes."""
    rendered = render.render(VARIANTS["everything"])
    for comp, _, _, _ in SERVICES.values():
        grpc, health, scrapes = find_one(rendered, "NetworkPolicy", comp)["spec"]["ingress"]
        assert grpc["ports"] == [{"port": "grpc", "protocol": "TCP"}] and grpc["from"]
        assert health == {"ports": [{"port": "health", "protocol": "TCP"}]}
        assert scrapes["ports"] == [{"port": "metrics", "protocol": "TCP"}]
        container = find_one(rendered, "Deployment", comp)["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["readinessProbe"]["grpc"]["port"] == ports["health"]


def test_notes_under_tls_and_postgres() -> None:
    text = render.notes(VARIANTS["everything"])
    assert ("grpcurl -cacert ca.crt -cert client.crt -key client.key"
            " -servername order-saga-order localhost:50051 list") in text
    assert "saga-tls" in text and "saga-client" in text
    assert "grpcurl -plaintext" not in text
    assert "order-saga-postgresql" in text
    server_only = render.notes(VARIANTS["tls-server-only"])
    assert ("grpcurl -cacert ca.crt -servername saga.example.internal localhost:50052 list"
            in server_only)  # tls.domain, when set, is the name in the certificate


# --- NetworkPolicy -----------------------------------------------------------------------


def test_network_policies() -> None:
    assert find(render.render(), "NetworkPolicy") == []
    rendered = render.render(VARIANTS["network-policy"])
    policies = {render.component(p): p for p in find(rendered, "NetworkPolicy")}
    assert set(policies) == {"order-service", "payment-service", "shipping-service",
                             "saga-orchestrator", "jaeger"}
    orchestrator_labels = find_one(rendered, "Job")["spec"]["template"]["metadata"]["labels"]
    test_pod_labels = find_one(rendered, "Pod")["metadata"]["labels"]
    for key, (comp, _, _, _) in SERVICES.items():
        spec = policies[comp]["spec"]
        pod_labels = find_one(rendered, "Deployment", comp)["spec"]["template"]["metadata"]["labels"]
        assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
        assert spec["policyTypes"] == ["Ingress"]
        # gRPC from the orchestrators; scrapes to the metrics port only.
        rule, scrapes = spec["ingress"]
        assert scrapes == {"ports": [{"port": "metrics", "protocol": "TCP"}]}
        (source,) = rule["from"]
        assert source["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "saga-orchestrator"
        assert source["podSelector"]["matchLabels"].items() <= orchestrator_labels.items()
        assert source["podSelector"]["matchLabels"].items() <= test_pod_labels.items()
        assert rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    # Orchestrator pods take no ingress at all.
    assert "ingress" not in policies["saga-orchestrator"]["spec"]
    # Jaeger takes OTLP from any pod of the release, and health checks from anywhere.
    rule, health = policies["jaeger"]["spec"]["ingress"]
    assert {p["port"] for p in rule["ports"]} == {"otlp-grpc", "otlp-http"}
    assert health == {"ports": [{"port": "health", "protocol": "TCP"}]}
    release_pods = rule["from"][0]["podSelector"]["matchLabels"]
    assert release_pods == {"app.kubernetes.io/name": "order-saga",
                            "app.kubernetes.io/instance": "order-saga"}
    no_jaeger = render.render(VARIANTS["network-policy-no-jaeger"])
    assert "jaeger" not in {render.component(p) for p in find(no_jaeger, "NetworkPolicy")}


# --- helm test hook and NOTES ------------------------------------------------------------


def test_helm_test_pod_runs_one_success_saga(objs) -> None:
    pod = find_one(objs, "Pod", "saga-orchestrator")
    assert render.is_test_hook(pod)
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "order-saga/saga-orchestrator:0.1.0"
    assert container["args"] == ["run", "--scenario", "success", "--count", "1", "--output", "text"]
    env = env_dict(container)
    assert env["SAGA_WAIT_READY_SECS"] == "60"
    job_env = render.orchestrator_invocation()["env"]
    job_only = {"SAGA_WAIT_READY_SECS", "JOB_UID", "RUN_ID"}
    assert {k: v for k, v in env.items() if k not in job_only} == {
        k: v for k, v in job_env.items() if k not in job_only}


def test_notes_give_the_commands() -> None:
    text = render.notes()
    assert "kubectl --namespace default port-forward svc/order-saga-order 50051" in text
    assert "grpcurl -plaintext localhost:50051 list" in text
    assert "grpcurl -plaintext localhost:50052 list" in text
    assert "kubectl --namespace default port-forward svc/order-saga-jaeger 16686" in text
    assert "kubectl --namespace default logs job/order-saga-orchestrator-1" in text
    # Waiting ends on a failed Job too (kubectl wait --for=condition=complete would not).
    assert "grep -qE 'Complete|Failed'" in text
    assert "helm test order-saga" in text
    assert "svc/order-saga-jaeger" not in render.notes(VARIANTS["no-tracing"])
    # Where the records are, and how to re-check the run (3 x "all" = 9 sagas).
    assert "order-saga-order-data" in text
    assert ("RUN_ID=order-saga-orchestrator-1-$(kubectl --namespace default get"
            " job/order-saga-orchestrator-1 -o jsonpath='{.metadata.uid}')") in text
    assert 'verify --run-id $RUN_ID --count 9' in text
    assert "emptyDir" in render.notes(VARIANTS["persistence-off"])
    mix = render.notes({"job": {"mix": "success=1", "count": 50, "runId": "r1"}})
    assert "verify --run-id r1 --count 50" in mix
    # How an operator lists the stuck sagas.
    assert "create job --from=cronjob/order-saga-recovery order-saga-recovery-now" in text
    assert "recover --dry-run" in text
    assert "cronjob" not in render.notes({"recovery": {"enabled": False}})


# --- values and schema -------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, complaint",
    [
        ({"servces": {}}, "additional properties 'servces'"),
        ({"job": {"scenaro": "all"}}, "additional properties 'scenaro'"),
        ({"services": {"order": {"faults": {"failureRate": 0.1}}}}, "'failureRate' not allowed"),
        ({"services": {"billing": {}}}, "'billing' not allowed"),
        ({"services": {"payment": {"faults": {"failureRate": 1.5}}}}, "failureRate"),
        ({"services": {"order": {"faults": {"transientErrorRate": -0.1}}}}, "transientErrorRate"),
        ({"job": {"scenario": "nope"}}, "scenario"),
        ({"job": {"count": -1}}, "count"),
        ({"job": {"count": 0}}, "count"),
        ({"job": {"concurrency": 5000}}, "concurrency"),
        ({"job": {"parallelism": 0}}, "parallelism"),
        ({"services": {"order": {"replicaCount": "2"}}}, "replicaCount"),
        ({"services": {"order": {"port": 70000}}}, "port"),
        ({"services": {"payment": {"faults": {"allowInjection": "yes"}}}}, "allowInjection"),
        ({"orchestrator": {"traceparent": "not-a-traceparent"}}, "traceparent"),
        ({"otel": {"endpoint": "otel:4317"}}, "endpoint"),
        ({"otel": {"sampler": "sometimes"}}, "sampler"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"podDisruptionBudget": {"maxUnavailable": "lots"}}, "maxUnavailable"),
        ({"jaeger": {"image": {"digest": "latest"}}}, "digest"),
        # Stores: one pod unless PostgreSQL.
        ({"services": {"order": {"replicaCount": 2}}}, "replicaCount"),
        ({"services": {"payment": {"replicaCount": 3, "store": {"backend": "memory"}}}},
         "replicaCount"),
        ({"services": {"order": {"store": {"backend": "mysql"}}}}, "backend"),
        ({"services": {"order": {"store": {"sqliteSynchronous": "off"}}}}, "sqliteSynchronous"),
        ({"services": {"order": {"store": {"existingSecret": "order-db"}}}}, "existingSecret"),
        ({"services": {"order": {"store": {"url": "postgres://x"}}}}, "additional properties 'url'"),
        ({"services": {"order": {"persistence": {"accessModes": ["ReadWriteMany"]}}}}, "accessModes"),
        ({"services": {"order": {"persistence": {"accessModes": []}}}}, "accessModes"),
        ({"services": {"order": {"persistence": {"size": "lots"}}}}, "size"),
        ({"services": {"order": {"persistence": {"storageClass": "Fast SSD"}}}}, "storageClass"),
        ({"services": {"order": {"limits": {"maxConcurrentRequests": 0}}}}, "maxConcurrentRequests"),
        ({"postgresql": {"enabled": True}}, "password"),
        ({"postgresql": {"auth": {"password": "has space"}}}, "password"),
        ({"postgresql": {"auth": {"username": "Order-Saga"}}}, "username"),
        ({"postgresql": {"persistence": {"size": 8}}}, "size"),
        # TLS: the Secrets it needs.
        ({"tls": {"enabled": True}}, "secretName"),
        ({"tls": {"enabled": True, "secretName": "saga-tls"}}, "clientSecretName"),
        ({"tls": {"healthPort": 0}}, "healthPort"),
        ({"tls": {"domain": "https://saga"}}, "domain"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], complaint: str) -> None:
    chart = render.load_chart()
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):  # installs and renders check it too
        render.render(values)


def test_schema_accepts_defaults_and_every_variant() -> None:
    chart = render.load_chart()
    for values in VARIANTS.values():
        chart.validate_schema(values)
    # Replicas on PostgreSQL, whichever way it is reached; TLS without mTLS needs no client Secret.
    chart.validate_schema({"services": {"order": {"replicaCount": 5, "store": {
        "backend": "postgres", "existingSecret": "db"}}}})
    chart.validate_schema({"tls": {"enabled": True, "secretName": "s", "mutual": False}})
    chart.validate_schema({"postgresql": {"enabled": True, "auth": {"existingSecret": "pg"}}})


def _schema_paths(schema: dict[str, Any], defs: dict[str, Any], path: str = "") -> dict[str, dict]:
    """Every object in the schema, by dotted path, with $refs resolved."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    found = {path: schema}
    for key, sub in schema.get("properties", {}).items():
        found.update(_schema_paths(sub, defs, f"{path}.{key}" if path else key))
    return found


def test_schema_is_closed_and_covers_every_value() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    paths = _schema_paths(schema, schema.get("definitions", {}))
    for path, sub in paths.items():
        if sub.get("type") == "object":
            assert sub.get("additionalProperties") is False, f"{path or '<root>'} is open"
        else:
            assert sub.get("description") or "oneOf" in sub or "enum" in sub, path

    def leaves(value: Any, path: str = "") -> set[str]:
        if isinstance(value, dict) and value:
            return set().union(*(leaves(v, f"{path}.{k}" if path else k) for k, v in value.items()))
        return {path}

    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    missing = {p for p in leaves(defaults) if p not in paths}
    assert not missing, f"values without a schema: {sorted(missing)}"


def test_values_yaml_documents_every_value() -> None:
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    assert lines[0] == "# yaml-language-server: $schema=./values.schema.json"
    undocumented = []
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if "resources" in [k for _, k in stack]:
            continue  # requests/limits of cpu/memory: documented once, on `resources`
        is_leaf = rest != "" and not rest.startswith("#")
        if is_leaf and not lines[i - 1].lstrip().startswith("#"):
            undocumented.append(".".join(k for _, k in stack))
    assert not undocumented, f"values without a comment: {undocumented}"


# --- checkov (once per session) ----------------------------------------------------------

# Every waiver the chart writes into its objects, and why it may appear.
DOCUMENTED_WAIVERS = {
    "CKV_K8S_15",  # IfNotPresent: kind-loaded app images; pinned Jaeger tag
    "CKV_K8S_43",  # no digest before the images are pushed (and none verified for Jaeger)
    "CKV_K8S_21",  # only when rendered into the "default" namespace
    "CKV2_K8S_6",  # only while networkPolicy.enabled is false
    "CKV_K8S_8",   # the helm test pod has no probes: it runs to completion
    "CKV_K8S_9",
    "CKV_K8S_35",  # DATABASE_URL from a Secret as a variable: the binaries have no file option
    "CKV_K8S_40",  # the official postgres image's user is UID 999
}


def _checkov(directory: Path) -> dict[str, Any]:
    result = subprocess.run(
        [str(VENV_BIN / "checkov"), "--directory", str(directory), "--framework", "kubernetes",
         "--output", "json", "--compact", "--skip-download"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON (exit {result.returncode}):\n{result.stderr[-3000:]}")
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    return report


@pytest.fixture(scope="session")
def checkov_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """checkov once on two renders (test hooks included): the defaults, as k8s/ has them,
    and a hardened install with every option on (own namespace, NetworkPolicy, images
    pinned by digest, mutual TLS, the in-chart PostgreSQL for order, an external one for
    payment, SQLite on a claim for shipping)."""
    hardened = {
        "networkPolicy": {"enabled": True},
        "podDisruptionBudget": {"enabled": True},
        "services": {k: {"image": {"digest": DIGEST}} for k in SERVICES},
        "orchestrator": {"image": {"digest": DIGEST}},
        "jaeger": {"image": {"digest": DIGEST}},
        "postgresql": {"enabled": True, "image": {"digest": DIGEST}, "auth": {"password": "pw"}},
        "tls": {"enabled": True, "secretName": "saga-tls", "clientSecretName": "saga-client"},
    }
    hardened["services"]["order"].update(store={"backend": "postgres"}, replicaCount=2)
    hardened["services"]["payment"].update(store={"backend": "postgres", "existingSecret": "pay-db"})
    reports = {}
    for name, values, namespace in (("defaults", None, "default"),
                                    ("hardened", hardened, "order-saga")):
        directory = tmp_path_factory.mktemp(f"checkov-{name}")
        docs = render.documents(values, namespace=namespace)
        (directory / "rendered.yaml").write_text("".join(f"---\n{t}\n" for _, t, _ in docs))
        reports[name] = _checkov(directory)
    return reports


@pytest.mark.parametrize("name", ["defaults", "hardened"])
def test_checkov_has_no_failed_checks(checkov_reports, name: str) -> None:
    report = checkov_reports[name]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["passed"] > 100


def test_checkov_waivers_are_documented_and_narrow(checkov_reports) -> None:
    for name, allowed in (("defaults", DOCUMENTED_WAIVERS),
                          ("hardened", {"CKV_K8S_15", "CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_35",
                                        "CKV_K8S_40"})):
        skipped = checkov_reports[name]["results"].get("skipped_checks", [])
        assert {c["check_id"] for c in skipped} <= allowed, name
        for check in skipped:
            assert len(check["check_result"].get("suppress_comment", "")) > 30, check["check_id"]
    # The probe waivers are on the test pod only.
    probe_skips = {c["resource"] for c in checkov_reports["defaults"]["results"]["skipped_checks"]
                   if c["check_id"] in ("CKV_K8S_8", "CKV_K8S_9")}
    assert probe_skips == {"Pod.default.order-saga-test"}
    # The secret-as-variable waiver is on the services on PostgreSQL only, the UID one on
    # PostgreSQL's StatefulSet only.
    skipped = checkov_reports["hardened"]["results"]["skipped_checks"]
    assert {c["resource"] for c in skipped if c["check_id"] == "CKV_K8S_35"} == {
        "Deployment.order-saga.order-saga-order", "Deployment.order-saga.order-saga-payment"}
    assert {c["resource"] for c in skipped if c["check_id"] == "CKV_K8S_40"} == {
        "StatefulSet.order-saga.order-saga-postgresql"}


# --- k8s/ --------------------------------------------------------------------------------


def test_k8s_manifest_matches_a_fresh_render() -> None:
    """k8s/order-saga.yaml is generated: run scripts/render-k8s after changing the chart."""
    assert render.K8S_MANIFEST.read_text() == render.k8s_manifest(), (
        "k8s/order-saga.yaml is stale: run scripts/render-k8s"
    )


def test_k8s_manifest_content() -> None:
    text = render.K8S_MANIFEST.read_text()
    assert text.startswith("# GENERATED FILE - do not edit. Made by scripts/render-k8s")
    objs = [o for o in yaml.safe_load_all(text) if o]
    assert not any(render.is_test_hook(o) for o in objs)
    assert not find(objs, "Pod")
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == (
        ["CronJob"] + ["Deployment"] * 4 + ["Job"] + ["PersistentVolumeClaim"] * 3 + ["Service"] * 4
    )
    assert all(o["metadata"]["namespace"] == "default" for o in objs)
    kustomization = yaml.safe_load((REPO_ROOT / "k8s" / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == ["order-saga.yaml"]
    kind_config = yaml.safe_load((REPO_ROOT / "k8s" / "kind-config.yaml").read_text())
    assert (kind_config["kind"], kind_config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
def test_k8s_manifest_passes_kubernetes_validate_cli(version: str) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "--kubernetes-version", version,
         str(render.K8S_MANIFEST)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout and "WARN" not in result.stdout, result.stdout


def test_render_k8s_script_check_mode() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-B", str(Path(render.__file__)), "--check",
         str(render.K8S_MANIFEST)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr


# --- the helper other tests use ----------------------------------------------------------


def test_invocation_helpers() -> None:
    job = render.orchestrator_invocation()
    assert job["image"] == "order-saga/saga-orchestrator:0.1.0"
    assert job["command"] is None
    assert job["args"][:3] == ["run", "--scenario", "all"]
    assert job["env"]["SAGA_ORDER_URL"] == "http://order-saga-order:50051"
    services = render.service_invocations()
    assert set(services) == set(SERVICES)
    for key, (comp, prefix, port, health) in SERVICES.items():
        svc = services[key]
        assert (svc["component"], svc["port"], svc["health_service"]) == (comp, port, health)
        assert svc["image"] == f"order-saga/{comp}:0.1.0"
        assert svc["command"] is None and svc["args"] is None
        assert svc["env"][f"{prefix}_LISTEN_ADDR"] == f"0.0.0.0:{port}"
        assert svc["health_port"] == port
    tls = render.service_invocations(VARIANTS["tls"])
    assert {svc["health_port"] for svc in tls.values()} == {8086}


def test_k8s_manifest_objects_are_adoptable_by_helm() -> None:
    """k8s/ objects say managed-by: Helm, so they carry Helm's ownership annotations too: a
    later `helm install order-saga` into the same namespace adopts them instead of failing."""
    for obj in yaml.safe_load_all(render.K8S_MANIFEST.read_text()):
        if not obj:
            continue
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert obj["metadata"]["annotations"]["meta.helm.sh/release-name"] == "order-saga"
        assert obj["metadata"]["annotations"]["meta.helm.sh/release-namespace"] == "default"


# --- metrics ---------------------------------------------------------------------------


def test_service_monitor_only_when_enabled(objs) -> None:
    assert not [o for o in objs if o["kind"] == "ServiceMonitor"]
    rendered = render.render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}})
    (monitor,) = [o for o in rendered if o["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    selected = monitor["spec"]["selector"]
    assert selected["matchExpressions"][0]["values"] == [SERVICES[k][0] for k in ("order", "payment", "shipping")]
    for key in SERVICES:
        labels = find_one(rendered, "Service", SERVICES[key][0])["metadata"]["labels"]
        assert all(labels[k] == v for k, v in selected["matchLabels"].items())


def test_metrics_off_renders_no_port_annotation_or_monitor() -> None:
    rendered = render.render({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}},
                              "networkPolicy": {"enabled": True}})
    assert not [o for o in rendered if o["kind"] == "ServiceMonitor"]
    for key, (comp, prefix, _, _) in SERVICES.items():
        deployment = find_one(rendered, "Deployment", comp)
        (container,) = pod_spec(deployment)["containers"]
        assert [p["name"] for p in container["ports"]] == ["grpc"]
        assert env_dict(container)[f"{prefix}_METRICS_LISTEN_ADDR"] == ""
        assert "annotations" not in deployment["spec"]["template"]["metadata"]
        policy = find_one(rendered, "NetworkPolicy", comp)
        assert all(p["port"] != "metrics" for rule in policy["spec"]["ingress"] for p in rule["ports"])


def test_network_policy_admits_scrapes_to_the_metrics_port_only() -> None:
    rendered = render.render({"networkPolicy": {"enabled": True}})
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    limited = render.render({"networkPolicy": {"enabled": True}, "metrics": {"networkPolicyFrom": peers}})
    for comp, _, _, _ in SERVICES.values():
        rules = find_one(rendered, "NetworkPolicy", comp)["spec"]["ingress"]
        assert rules[1] == {"ports": [{"port": "metrics", "protocol": "TCP"}]}
        assert rules[0]["ports"] == [{"port": "grpc", "protocol": "TCP"}]
        rules = find_one(limited, "NetworkPolicy", comp)["spec"]["ingress"]
        assert rules[1] == {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": peers}
