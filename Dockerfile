# order-saga images: one cargo build of the workspace, then one small runtime image per binary.
#
#   DOCKER_BUILDKIT=1 docker build --target order-service    -t order-saga/order-service:0.1.0 .
#   DOCKER_BUILDKIT=1 docker build --target payment-service  -t order-saga/payment-service:0.1.0 .
#   DOCKER_BUILDKIT=1 docker build --target shipping-service -t order-saga/shipping-service:0.1.0 .
#   DOCKER_BUILDKIT=1 docker build                           -t order-saga/saga-orchestrator:0.1.0 .
#
# or all four, tested: `scripts/test-containers` (`--build-only`, or `just images`, to only build).
# Needs BuildKit for the cache mounts. The builder stage runs once: the other targets reuse its
# layer. Each image's ENTRYPOINT is its binary, as helm/order-saga expects; no shell at run time.

# Version stamped into the image labels; scripts/test-containers passes the workspace version.
ARG VERSION=0.1.0

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /app
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY crates crates
# The root manifest is also the tests-only package `order-saga-tests`, and cargo refuses to parse a
# package without targets: its top-level test files must be present (they are not compiled here;
# .dockerignore keeps only tests/*.rs).
COPY tests tests
# Registry and target dir live in cache mounts, so a rebuild recompiles only what changed; the
# binaries are copied out in the same RUN because the mounts are gone after it.
RUN --mount=type=cache,id=order-saga-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=order-saga-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=order-saga-target,target=/app/target,sharing=locked \
    cargo build --locked --release \
        -p order-service -p payment-service -p shipping-service -p saga-orchestrator --bins \
 && mkdir -p /out /data \
 && cp target/release/order-service target/release/payment-service \
       target/release/shipping-service target/release/saga-orchestrator /out/

# Shared by the four images: glibc and libgcc (what a Rust binary links), CA certificates, tzdata,
# user nonroot; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION
LABEL org.opencontainers.image.source="https://example.invalid/order-saga" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="order-saga" \
      org.opencontainers.image.version="${VERSION}"
# The services' SQLite stores (<PREFIX>_STORE__DATA_DIR below), writable by nonroot. Under a
# read-only root filesystem (as the chart runs them) mount a volume here; PostgreSQL
# (DATABASE_URL) or <PREFIX>_STORE__BACKEND=memory need none. Empty in the image.
COPY --from=builder --chown=65532:65532 /data /data
# nonroot of distroless, numeric so that the kubelet can verify runAsNonRoot without a runAsUser.
USER 65532:65532

FROM runtime AS order-service
LABEL org.opencontainers.image.title="order-service" \
      org.opencontainers.image.description="order-saga order service: CreateOrder, CancelOrder, ApproveOrder, GetOrder over gRPC (health: order.v1.OrderService)."
COPY --from=builder /out/order-service /usr/local/bin/order-service
ENV ORDER_STORE__DATA_DIR=/data
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/order-service"]

FROM runtime AS payment-service
LABEL org.opencontainers.image.title="payment-service" \
      org.opencontainers.image.description="order-saga payment service: ProcessPayment, RefundPayment, GetPayment over gRPC (health: payment.v1.PaymentService)."
COPY --from=builder /out/payment-service /usr/local/bin/payment-service
ENV PAYMENT_STORE__DATA_DIR=/data
EXPOSE 50052
ENTRYPOINT ["/usr/local/bin/payment-service"]

FROM runtime AS shipping-service
LABEL org.opencontainers.image.title="shipping-service" \
      org.opencontainers.image.description="order-saga shipping service: StartShipping, CancelShipping, GetShipment over gRPC (health: shipping.v1.ShippingService)."
COPY --from=builder /out/shipping-service /usr/local/bin/shipping-service
ENV SHIPPING_STORE__DATA_DIR=/data
EXPOSE 50053
ENTRYPOINT ["/usr/local/bin/shipping-service"]

# Last, so a plain `docker build .` makes the orchestrator. The chart's Job passes the arguments.
FROM runtime AS saga-orchestrator
LABEL org.opencontainers.image.title="saga-orchestrator" \
      org.opencontainers.image.description="order-saga orchestrator: runs Create Order sagas against the three services and compensates on failure."
COPY --from=builder /out/saga-orchestrator /usr/local/bin/saga-orchestrator
ENTRYPOINT ["/usr/local/bin/saga-orchestrator"]
CMD ["--help"]
