# etcd-sync. `make run` and `make test` set everything up on a fresh Debian machine.
SHELL := /bin/bash
ENV_FILE := /tmp/etcd-sync-testenv/env
CARGO ?= cargo

.PHONY: all toolchain deps build testenv testenv-down demo demo-mysql run run-mysql test soak bench lint fmt clean

# Said once before every build: the first one compiles ~300 crates.
BUILD_NOTE := @echo "building the agent (the first build takes about 7 minutes on 2 cores; later ones seconds)"

all: build

## A Rust toolchain new enough to build the agent; checked before anything else happens.
toolchain:
	@CARGO=$(CARGO) tools/check-toolchain.sh

## Build dependencies from Debian's packages (protoc: etcd-client compiles etcd's protos).
deps: toolchain
	tools/testenv.sh deps

build: deps
	$(BUILD_NOTE)
	$(CARGO) build --release

## Install (Debian packages) and start PostgreSQL and etcd on private ports.
testenv:
	tools/testenv.sh up

testenv-down:
	tools/testenv.sh down

## Start PostgreSQL and etcd (only what the demo uses) and load the demo schema into `app`.
demo: toolchain
	tools/testenv.sh demo postgres
	PGPASSWORD=sync psql -q -h 127.0.0.1 -p 25432 -U sync -d app -f testenv/demo.sql

## Sync the demo database into etcd until Ctrl-C. Watch it with:
##   ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:22379 get --prefix /sync
run: toolchain demo
	$(BUILD_NOTE)
	$(CARGO) build --release
	SYNC_DB_PASSWORD=sync ./target/release/sync --config-file config.example.yaml

## The same against MariaDB: a demo table in its `app` database, synced under /sync-mysql.
demo-mysql: toolchain
	tools/testenv.sh demo mysql
	mariadb -h 127.0.0.1 -P 23306 -u sync -psync app < testenv/mysql-demo.sql

run-mysql: toolchain demo-mysql
	$(BUILD_NOTE)
	$(CARGO) build --release
	SYNC_DB_PASSWORD=sync ./target/release/sync --config-file config.mysql.example.yaml

## Every test: unit tests and the end-to-end tests against the servers of `make testenv`, the
## end-to-end tests once against etcd 3.4 and once against etcd 3.5 (the second time without
## the `own_cluster_` tests, which pick their own etcd version and would only repeat).
test: toolchain testenv
	$(BUILD_NOTE)
	$(CARGO) test --workspace --all-targets
	ETCD_SYNC_TEST_ETCD_VERSION=3.5 $(CARGO) test -p etcd-sync --tests -- --skip own_cluster_

## A nemesis soak (not part of `make test`): both databases under a transfer load while etcd
## members, agents, databases and replication connections fail at random; SOAK_SECONDS=600.
soak: toolchain testenv
	$(BUILD_NOTE)
	SOAK_SECONDS=$${SOAK_SECONDS:-600} $(CARGO) test --test soak -- --ignored --nocapture

## Benchmarks against etcd's own ingest ceilings, etcd 3.4 and 3.5 (not part of `make test`; ~25 minutes).
bench: toolchain testenv
	$(BUILD_NOTE)
	$(CARGO) build --release -p etcd-sync -p etcd-sync-bench
	./target/release/etcd-sync-bench

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean: testenv-down
	$(CARGO) clean
