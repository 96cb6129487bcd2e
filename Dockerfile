# The aftercart container image: one image for every service, the service chosen by the
# `aftercart` subcommand (`ingress`, `abandonment`, `topics create`, ...).
# Build: docker build -t aftercart:dev .   Run: docker run aftercart:dev ingress --help
#
# Stage 1 plans the dependency build, stage 2 builds dependencies (a layer cached until
# Cargo.lock changes) and then the binary, stage 3 is a slim Debian runtime (the binary needs
# glibc, libgcc, zlib and OpenSSL 3: librdkafka links zlib and the system OpenSSL dynamically;
# libcurl, for OAUTHBEARER/OIDC, is linked in statically) running as a non-root user.

# Linted by checkov in `make test-ops`. Exceptions, each with its reason:
# checkov:skip=CKV_DOCKER_2: no HEALTHCHECK; Kubernetes ignores it and probes /livez and /readyz on the admin port (k8s/)
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
# librdkafka is compiled from source by rdkafka-sys: it needs a C/C++ toolchain, make, perl
# and pkg-config (most already ship in the rust image; listed so the need is explicit), the
# OpenSSL headers for TLS and SASL/SCRAM, and the libcurl headers: librdkafka's configure only
# enables its HTTP client (OAUTHBEARER OIDC token fetching) when it can link -lcurl, although
# the final binary links curl-sys's static libcurl.
# checkov:skip=CKV_DOCKER_9: apt installs build tools in the build stage only; the runtime stage runs no apt
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make perl pkg-config libssl-dev libcurl4-openssl-dev \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.lock or a manifest changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p aftercart \
    && install -s -D -m 0755 target/release/aftercart /out/aftercart

# Same Debian release as the builder (glibc); zlib1g is part of every Debian image. libssl3 for
# TLS to the brokers, ca-certificates so that public brokers (Confluent Cloud, MSK, Redpanda
# Cloud) are trusted without an ssl.ca.location.
FROM debian:bookworm-slim
# checkov:skip=CKV_DOCKER_9: apt installs two runtime libraries; nothing else runs apt
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/aftercart /usr/local/bin/aftercart
# The spool and audience-file directories, owned by the service user, so that volumes mounted
# there (compose.yaml's named volumes take the image's ownership) are writable.
RUN mkdir -p /var/lib/aftercart/spool /var/lib/aftercart/audiences \
    && chown -R 65532:65532 /var/lib/aftercart
# No user database entry is needed: Kubernetes runs it as 65532 too (runAsUser).
USER 65532:65532
# Webhooks (ingress only) and the admin port (/livez, /readyz, /metrics).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/aftercart"]
CMD ["ingress"]
