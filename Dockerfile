# syntax=docker/dockerfile:1
# The Tidings server image: `docker build -t tidings:0.1.0 .` from the
# repository root. A release build (the Cargo.lock as committed), run as an
# unprivileged user on a slim Debian. Configure it with TIDINGS_* variables
# or flags (`docker run tidings:0.1.0 --help`). See deploy/README.md.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
# The whole Cargo workspace must be present (the load generator is a
# member), though only the server is built.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY load-tests/Cargo.toml ./load-tests/Cargo.toml
COPY load-tests/src ./load-tests/src
RUN cargo build --release --locked --bin tidings \
    && install -m 0755 target/release/tidings /usr/local/bin/tidings

FROM debian:bookworm-slim
# curl for the HEALTHCHECK; a fixed uid/gid so that Kubernetes
# (runAsNonRoot, runAsUser: 10001) can tell the user is not root.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tidings \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tidings
COPY --from=builder /usr/local/bin/tidings /usr/local/bin/tidings
USER 10001:10001
ENV TIDINGS_LISTEN=0.0.0.0:3000 \
    TIDINGS_LOG_FORMAT=json
EXPOSE 3000
# SIGTERM drains: unready, ingest 503, sockets closed so that clients
# reconnect elsewhere, exit 0 within --shutdown-timeout (10 s; docker stop
# waits 10 s by default: give it `--time 20`).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${TIDINGS_LISTEN##*:}/healthz" || exit 1
ENTRYPOINT ["/usr/local/bin/tidings"]
