# Multi-stage build: the agent and mysqldump (for MySQL sources) on a small Debian runtime.
#   docker build --build-arg GIT_REVISION=$(git rev-parse --short=12 HEAD) -t etcd-sync .
#   docker run --rm -v $PWD/config.yaml:/etc/etcd-sync/config.yaml -e SYNC_DB_PASSWORD=... etcd-sync
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG GIT_REVISION=unknown
ENV ETCD_SYNC_GIT_REVISION=$GIT_REVISION
RUN cargo build --release --locked --bin sync

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates mariadb-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --uid 10001 etcd-sync
COPY --from=build /src/target/release/sync /usr/local/bin/sync
USER etcd-sync
# Metrics and health when the config sets metrics.listen to 0.0.0.0:9187.
EXPOSE 9187
ENTRYPOINT ["/usr/local/bin/sync", "--config-file", "/etc/etcd-sync/config.yaml"]
CMD ["run"]
