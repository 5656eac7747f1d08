# workhook: one image holding the three services and the CLI
# (workhook-registry, workhook-ingress, workhook-runner, workhook); the container's command picks one.
#
#   docker build -t workhook .
#   docker build --build-arg WORKER_RUNTIMES="python3 nodejs" -t workhook-runner .
#
# WORKER_RUNTIMES (default: empty) lists Debian packages installed into the image for the
# workers a runner runs; /bin/sh is always there. Empty keeps the registry and ingress images
# small; build runner images with the interpreters your workers need ("python3 nodejs ruby", ...).
#
# The builder compiles the dependencies in a layer of their own, keyed only on Cargo.toml,
# Cargo.lock, the members' manifests and proto/, so a source change rebuilds just the workspace.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# 1. Dependencies. proto/ is copied whole: its build.rs compiles the .proto with protox, and the
#    contract changes seldom; crates/core too, which proto uses and which is small. Every other
#    member gets stub sources so cargo can resolve the
#    workspace (tests/ is a test-only crate and is never built here).
COPY Cargo.toml Cargo.lock ./
COPY proto/ proto/
COPY crates/core/ crates/core/
COPY services/registry/Cargo.toml services/registry/
COPY services/ingress/Cargo.toml services/ingress/
COPY services/runner/Cargo.toml services/runner/
COPY cli/Cargo.toml cli/
COPY tests/Cargo.toml tests/
COPY crates/bench/Cargo.toml crates/bench/
RUN set -eux; \
    for crate in services/registry services/ingress services/runner cli tests crates/bench; do \
        mkdir -p "$crate/src"; \
        : > "$crate/src/lib.rs"; \
    done; \
    for crate in services/registry services/ingress services/runner cli crates/bench; do \
        echo 'fn main() {}' > "$crate/src/main.rs"; \
    done; \
    mkdir -p tests/tests/it; \
    : > tests/tests/it/main.rs; \
    cargo build --release --locked \
        -p workhook-registry -p workhook-ingress -p workhook-runner -p workhook-cli

# 2. The workspace's own sources. COPY keeps the files' original times, which are older than the
#    stubs', so they are touched to make cargo rebuild the members. The release profile keeps
#    line tables for backtraces; compressing them makes the binaries about 2.5 times smaller.
COPY crates/ crates/
COPY services/ services/
COPY cli/ cli/
RUN set -eux; \
    find crates services cli -name '*.rs' -exec touch {} +; \
    cargo build --release --locked \
        -p workhook-registry -p workhook-ingress -p workhook-runner -p workhook-cli; \
    mkdir -p /out; \
    cp target/release/workhook-registry target/release/workhook-ingress \
       target/release/workhook-runner target/release/workhook /out/; \
    for bin in /out/*; do objcopy --compress-debug-sections=zlib "$bin"; done

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG WORKER_RUNTIMES=""
# Debian's stable packages are not pinned: a rebuild picks up their security updates.
# WORKER_RUNTIMES is split into package names on purpose.
# hadolint ignore=DL3008,SC2086
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates tini ${WORKER_RUNTIMES}; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --gid 10001 workhook; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/workhook \
        --shell /usr/sbin/nologin workhook; \
    install -d -o 10001 -g 10001 -m 0750 /var/lib/workhook /var/lib/workhook/runner
COPY --from=builder /out/ /usr/local/bin/

# The runner's packages and task directories. Under Kubernetes (read-only root filesystem) an
# emptyDir is mounted here.
ENV WORKHOOK_RUNNER_DIR=/var/lib/workhook/runner \
    LANG=C.UTF-8
USER 10001:10001
WORKDIR /var/lib/workhook
EXPOSE 8080 50051
# tini reaps the orphans that workers leave behind and passes SIGTERM on, so the services drain.
# Choose the program with the command (Kubernetes: args), not the entrypoint.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["workhook", "--help"]
