# One target per thing a person does. Every target prints the commands it runs.
# Settings pass through as RELAY_* variables, e.g. `RELAY_LISTEN=127.0.0.1:9000 make run`.

CARGO ?= cargo
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test lint fmt build clean toolchain

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

toolchain:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs), then run make again" >&2; exit 1; }

run: toolchain ## Build and start one relay node on :8080 (in-memory registry)
	$(CARGO) run --locked --release --bin relay -- $(ARGS)

build: toolchain ## Build release binaries into target/release
	$(CARGO) build --locked --release --bin relay

test: toolchain lint ## Lint, then run every unit and integration test
	$(CARGO) test --locked --workspace --all-targets

lint: toolchain ## Check formatting and clippy (warnings are errors)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt: toolchain ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output
	$(CARGO) clean
