# syntax=docker/dockerfile:1
# micdrop-rs: the `micdrop` binary on a slim Debian, non-root.
#   docker build -t micdrop .
#   docker run --rm -p 8080:8080 micdrop serve --sim --listen 0.0.0.0:8080       # offline demo
#   docker run --rm -p 8080:8080 -e MISTRAL_API_KEY -e GLADIA_API_KEY -e GRADIUM_API_KEY micdrop
# Configuration: /etc/micdrop/micdrop.toml (mount your own over it); data (store, recordings):
# /var/lib/micdrop. See docs/deploy.md.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# C toolchain pieces some crates build from source (bundled SQLite, ring); pkg-config for the
# optional system libraries.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config build-essential cmake clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p micdrop-cli --bin micdrop \
    && install -D -m 0755 target/dist/micdrop /out/micdrop

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# espeak-ng: real speech for the TTS simulator of `serve --sim`; curl: the HEALTHCHECK;
# ca-certificates: TLS to the providers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl espeak-ng \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/micdrop --create-home micdrop
COPY --from=build /out/micdrop /usr/local/bin/micdrop
COPY deploy/micdrop.toml /etc/micdrop/micdrop.toml
USER micdrop
WORKDIR /var/lib/micdrop
VOLUME ["/var/lib/micdrop"]
ENV MICDROP_LOG=info
EXPOSE 8080
# Liveness only: readiness (/readyz) is for load balancers, it turns 503 while draining.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
# SIGTERM drains: calls in progress may go on for [server] drain_timeout_secs (300 s), so stop
# the container with a longer timeout: `docker stop -t 330`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["micdrop", "--log-format", "json"]
CMD ["serve", "--config", "/etc/micdrop/micdrop.toml"]
