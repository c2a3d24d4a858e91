# order-saga recipes. `just` is optional: every recipe is a plain command you can run yourself.

# The demo: three services, all three scenarios, stopped again.
demo *ARGS:
    ./scripts/demo {{ARGS}}

# Every test, as CI runs it.
test:
    ./scripts/test

# One service in the foreground (Ctrl-C stops it gracefully).
order-service:
    cargo run --locked -p order-service

payment-service:
    PAYMENT_FAULTS__ALLOW_INJECTION=true cargo run --locked -p payment-service

shipping-service:
    SHIPPING_FAULTS__ALLOW_INJECTION=true cargo run --locked -p shipping-service

# The orchestrator against running services, e.g. `just orchestrator run --scenario payment-failure`.
orchestrator *ARGS:
    cargo run --locked -p saga-orchestrator -- {{ARGS}}

# Install the pinned test tools (grpcurl, jaeger, prometheus, helm, buf, ...) into .tools/.
tools:
    ./scripts/install-tools

# Batches against running services, e.g. `just batch 10000 64`.
batch COUNT="1000" CONCURRENCY="16":
    cargo run --locked --release -p saga-orchestrator -- run --mix success=80,payment-failure=10,shipping-failure=10 --count {{COUNT}} --concurrency {{CONCURRENCY}}

# The benchmark (release build, loopback, bounded); results go in BENCHMARKS.md.
bench *ARGS:
    ./scripts/bench {{ARGS}}

# A longer fuzz run over request validation, e.g. `just fuzz 600`.
fuzz SECONDS="60":
    FUZZ_SECONDS={{SECONDS}} ./scripts/fuzz-smoke

# A PostgreSQL on loopback for the durability tests (prints its admin URL).
postgres:
    ./scripts/postgres

# kind: cluster, images loaded, chart installed, the Job's log with the three seed lines.
# No `helm --wait`: Helm 4's default wait also judges the Job (a run that already failed
# fails the release). The Deployments are waited for here, then the Job: its log is printed whether
# it completed or failed (scripts/saga-job exits 1 at once on a failed Job).
kind-up: images
    kind create cluster --config k8s/kind-config.yaml
    for i in order-service payment-service shipping-service saga-orchestrator; do kind load docker-image --name order-saga order-saga/$i:0.1.0; done
    helm install order-saga helm/order-saga --timeout 5m
    kubectl wait --for=condition=Available deployment -l app.kubernetes.io/instance=order-saga --timeout=300s
    ./scripts/saga-job order-saga

kind-down:
    kind delete cluster --name order-saga

# List what a service offers through reflection: a running local one, or (in kind) port-forwarded.
grpcurl-list PORT="50051":
    ./scripts/install-tools
    if kubectl get svc order-saga-order >/dev/null 2>&1; then \
      svc=$(case {{PORT}} in 50052) echo payment;; 50053) echo shipping;; *) echo order;; esac); \
      kubectl port-forward svc/order-saga-$svc {{PORT}} >/dev/null & sleep 2; \
    fi; .tools/bin/grpcurl -plaintext localhost:{{PORT}} list

# The Jaeger UI of the kind release on http://localhost:16686 (Ctrl-C stops the forward).
jaeger-kind:
    kubectl port-forward svc/order-saga-jaeger 16686

# The pinned Jaeger v2 on loopback (OTLP 4317/4318, UI 16686), in the background; `just jaeger-local stop`.
jaeger-local *ARGS:
    ./scripts/jaeger {{ARGS}}

# The pinned Prometheus on 127.0.0.1:9090 scraping the services' metrics ports; `just prometheus-local stop`.
prometheus-local *ARGS:
    ./scripts/prometheus {{ARGS}}

# Build the four images (order-saga/<binary>:<version>) with Docker BuildKit; no tests.
images:
    ./scripts/test-containers --build-only

# The same flow on a real single-node cluster built here from upstream (no kind, no registry):
# etcd, API server, controllers, scheduler, kubelet + containerd, kube-proxy, CoreDNS. As root.
cluster-up:
    ./scripts/cluster up

cluster-down:
    ./scripts/cluster down

# Every step of the kind flow on that cluster (install, test, grpcurl, traces, metrics, recovery, upgrade,
# rollback, reinstall, variants, k8s/); ends with `cluster test: N passed, M failed`.
cluster-test *STEPS:
    ./scripts/test-cluster {{STEPS}}
