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

# Install the pinned test tools (grpcurl, buf, ...) into .tools/.
tools:
    ./scripts/install-tools

# List what a running service offers, through server reflection.
grpcurl-list PORT="50051":
    ./scripts/install-tools && .tools/bin/grpcurl -plaintext localhost:{{PORT}} list

# Build the four images (order-saga/<binary>:<version>) with Docker BuildKit; no tests.
images:
    ./scripts/test-containers --build-only
