# One target per thing a person does. Every target prints the commands it runs.
# Settings pass through as RELAY_* variables, e.g. `RELAY_LISTEN=127.0.0.1:9000 make run`.

CARGO ?= cargo
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test lint fmt build clean toolchain deps cluster ops-tools ops-check prom-test browser-test browser-test-run vendor-js bench bench-100k chaos soak fuzz

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

toolchain:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs), then run make again" >&2; exit 1; }

run: toolchain ## Build and start one relay node on :8080 (in-memory registry)
	$(CARGO) run --locked --release --bin relay -- $(ARGS)

build: toolchain ## Build release binaries into target/release
	$(CARGO) build --locked --release --bin relay

test: toolchain deps lint ops-check ## Lint, check the deployment files, then run every unit, integration and browser test
	$(CARGO) test --locked --workspace --all-targets
	$(MAKE) browser-test-run

# The browser client and page (relay/static/) in Node and in headless Chromium
# (Debian's, never a downloaded one), against the debug relay binary that
# `cargo test` builds. npm ci installs what tests/browser/package-lock.json pins.
RELAY_BIN ?= $(CURDIR)/target/debug/relay

browser-test: toolchain deps ## Build the debug relay, then test the browser page in headless Chromium
	$(CARGO) build --locked --bin relay
	$(MAKE) browser-test-run

browser-test-run:
	cd tests/browser && npm ci --no-audit --no-fund --prefer-offline
	cd tests/browser && RELAY_BIN=$(RELAY_BIN) node --test

# The page's third-party code (noble, for end-to-end encryption) is committed
# as relay/static/noble.js; this rebuilds it, byte for byte, from the
# versions relay/static/vendor/package-lock.json pins.
vendor-js: ## Regenerate relay/static/noble.js from the pinned package-lock
	relay/static/vendor/build.sh

# The cluster tests and `make cluster` run real Redis servers, Sentinels and
# haproxy (and nginx, the HTTP transport's buffering proxy); the tests also drop packets with nftables and make TLS
# certificates with openssl; the browser test drives Debian's chromium with
# node; the bench runs redis-benchmark and python3; ops-check and the
# Prometheus test (tests/cluster/prometheus.rs) run promtool and prometheus.
# Each entry is command:package. haproxy and nft are in /usr/sbin, which a
# normal user's PATH may lack.
DEPS := redis-server:redis-server redis-sentinel:redis-sentinel redis-benchmark:redis-tools haproxy:haproxy nginx:nginx \
	nft:nftables openssl:openssl chromium:chromium node:nodejs npm:npm python3:python3 \
	promtool:prometheus prometheus:prometheus

deps: ## Install the Debian packages the tests and the cluster need, if missing
	@PATH="$$PATH:/usr/sbin:/sbin"; missing=""; \
	for d in $(DEPS); do command -v $${d%%:*} >/dev/null 2>&1 || missing="$$missing $${d#*:}"; done; \
	python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -z "$$missing" ]; then echo "deps: all installed"; exit 0; fi; \
	sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	echo "deps: missing:$$missing"; \
	echo "deps: $${sudo:+sudo }apt-get update" && $$sudo apt-get update && \
	echo "deps: $${sudo:+sudo }apt-get install -y$$missing" && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing

cluster: build deps ## Start Redis, three relay nodes and haproxy on :8080 (Ctrl-C stops them)
	deploy/local/cluster.sh

# Release binaries, the relay against ws-forwarder and redis-benchmark on
# 127.0.0.1, a report with ratios and plots in target/bench/ (see BENCHMARKS.md).
# BENCH_QUICK=1 is a smoke run. BENCH_BASELINE=<git rev> also builds that
# commit's relay (once, into target/bench-baseline/) and measures it beside
# this one in the same run, adding new/baseline ratios to the report;
# BENCH_BASELINE_BIN=<path> does the same with a relay already built. With a
# baseline the run takes about 1.5x as long, plus its build the first time.
bench: toolchain deps ## Measure throughput, rooms fan-out and fan-in, latency, set-up rate, memory and a reconnect storm (~6 min)
	tests/bench/run.sh

# 100,000 connections held at once on this machine: a local cluster of
# HUNDRED_K_NODES (6) nodes, one load process per node, every pair across
# nodes; memory per connection per node, idle CPU, set-up and drain times,
# and a ping through every pair at the end (tests/bench/hundred-k.sh).
bench-100k: toolchain deps ## Hold 100,000 connections on a local cluster and report memory, idle CPU, set-up and drain (~5 min)
	tests/bench/hundred-k.sh

# Every parser of untrusted input under libFuzzer (fuzz/, cargo-fuzz; nightly,
# or stable with RUSTC_BOOTSTRAP=1). FUZZ_TARGETS="a b" picks targets; a crash
# leaves its input in fuzz/artifacts/<target>/ and fails the run.
fuzz: toolchain ## Fuzz every parser of untrusted input for FUZZ_TIME seconds each (default 60)
	fuzz/run.sh

# The chaos and soak tests run shortened inside `make test`; these run them
# long, in release mode, printing their reports. CHAOS_DURATION and
# SOAK_DURATION take humantime lengths (90s, 10m, 2h).
CHAOS_DURATION ?= 10m
SOAK_DURATION ?= 1h

chaos: toolchain deps ## Chaos test (10 min): drain, kill and restart nodes, stop Redis, under load; report per pair
	RELAY_CHAOS_DURATION=$(CHAOS_DURATION) $(CARGO) test --locked --release --test integration chaos:: -- --nocapture --test-threads 1

soak: toolchain deps ## Soak test (1 h): steady load and churn; fails if relay memory or fds grow past the bounds
	RELAY_SOAK_DURATION=$(SOAK_DURATION) $(CARGO) test --locked --release --test integration soak:: -- --nocapture

# The Python tools of ops-check (deploy/check/requirements.txt, pinned) live
# in a virtualenv under target/, rebuilt when the requirements change.
PYTHON ?= python3
OPS_VENV := target/ops-venv

$(OPS_VENV)/.installed: deploy/check/requirements.txt
	@rm -rf $(OPS_VENV)
	@$(PYTHON) -m venv $(OPS_VENV) || { echo "ops-tools: '$(PYTHON) -m venv' failed; 'make deps' installs python3-venv" >&2; exit 1; }
	$(OPS_VENV)/bin/pip install --quiet --disable-pip-version-check -r deploy/check/requirements.txt
	@touch $@

ops-tools: deps $(OPS_VENV)/.installed ## Install the Python tools of ops-check into target/ops-venv

ops-check: deps ops-tools ## Check the alert rules, dashboard, Helm chart, Kubernetes manifests and Dockerfile
	promtool check rules deploy/prometheus/relay-rules.yml
	promtool test rules deploy/prometheus/relay-rules.test.yml
	$(OPS_VENV)/bin/python deploy/check/ops_check.py dashboard
	$(OPS_VENV)/bin/python deploy/check/ops_check.py chart
	$(OPS_VENV)/bin/python deploy/check/ops_check.py manifests
	$(OPS_VENV)/bin/hadolint deploy/Dockerfile

prom-test: toolchain deps ## Just the test where Prometheus scrapes a cluster and every dashboard query has data
	$(CARGO) test --locked --test integration cluster::prometheus

lint: toolchain ## Check formatting and clippy (warnings are errors)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt: toolchain ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output
	$(CARGO) clean
