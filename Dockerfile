# Multi-stage build: compile in the Rust image, run in a slim Debian as a
# non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
# The commit --version and esr_build_info report (no .git in the context):
# docker build --build-arg ESR_BUILD_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG ESR_BUILD_COMMIT=unknown
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY config ./config
COPY examples ./examples
RUN cargo build --release --locked --bin esr-exporter

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/esr-exporter --create-home esr \
 && mkdir -p /var/lib/esr-exporter/exports \
 && chown -R esr /var/lib/esr-exporter
COPY --from=build /src/target/release/esr-exporter /usr/local/bin/esr-exporter
USER 10001
WORKDIR /var/lib/esr-exporter
ENV ESR_EXPORT__OUTPUT_DIR=/var/lib/esr-exporter/exports \
    ESR_HTTP__LISTEN=0.0.0.0:8080
EXPOSE 8080
VOLUME ["/var/lib/esr-exporter/exports"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/esr-exporter"]
CMD ["run"]
