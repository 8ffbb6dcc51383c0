# syntax=docker/dockerfile:1
# Multi-stage build: dependencies compiled in a layer of their own
# (cargo-chef), the binary built with the toolchain rust-toolchain.toml pins
# (scripts/check-deploy checks the two agree) and stripped, run in a slim
# Debian as a non-root user.
#
#   docker build --build-arg ESR_BUILD_COMMIT=$(git rev-parse --short=12 HEAD) \
#     --build-arg ESR_BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) \
#     -t registry.example.com/esr-exporter:0.1.0 .
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The dependency recipe: it changes only when Cargo.toml or Cargo.lock do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin esr-exporter
# The commit --version and esr_build_info report (no .git in the context).
ARG ESR_BUILD_COMMIT=unknown
COPY . .
RUN cargo build --release --locked --bin esr-exporter \
 && strip target/release/esr-exporter

FROM debian:bookworm-slim
ARG ESR_BUILD_COMMIT=unknown
ARG ESR_BUILD_DATE=unknown
LABEL org.opencontainers.image.title="esr-exporter" \
      org.opencontainers.image.description="Exports NHS ESR applicant (APP) files from MongoDB, on commands from RabbitMQ" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.revision="${ESR_BUILD_COMMIT}" \
      org.opencontainers.image.created="${ESR_BUILD_DATE}" \
      org.opencontainers.image.documentation="README.md"
# ca-certificates: the bundle every TLS connection trusts (docs/src/configuration.md: TLS);
# curl: the HEALTHCHECK below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/esr-exporter --create-home esr \
 && mkdir -p /var/lib/esr-exporter/exports \
 && chown -R esr /var/lib/esr-exporter
COPY --from=build /src/target/release/esr-exporter /usr/local/bin/esr-exporter
# The image's settings are a file, not ENV: environment variables layer over
# the config file, so an ESR_* variable set here would override the settings
# of whatever runs the image (a Kubernetes ConfigMap mounted over
# /etc/esr-exporter, say) with no way to change them but another variable.
# deploy/container/config.toml: export.output_dir is the VOLUME below,
# http.listen 0.0.0.0:8080 (EXPOSE, HEALTHCHECK).
COPY --chmod=0644 deploy/container/config.toml /etc/esr-exporter/config.toml
USER 10001
WORKDIR /var/lib/esr-exporter
EXPOSE 8080
VOLUME ["/var/lib/esr-exporter/exports"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/esr-exporter"]
CMD ["run", "--config", "/etc/esr-exporter/config.toml"]
