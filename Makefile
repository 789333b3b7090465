# redis-pay: `make help` lists the targets.

MODULE := target/release/libredis_pay.so
VALKEY := target/valkey/bin/valkey-server
PORT ?= 6379

.DEFAULT_GOAL := help
.PHONY: help deps build test test-valgrind lint fmt run demo bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## Install redis-server, libclang and Valkey when missing (Debian)
	@scripts/install-deps.sh

build: deps ## Build the module and pay-sidecar (release)
	cargo build --release --workspace

test: build ## Unit tests; module suite on Redis 7.0 and Valkey 8.1; sidecar end-to-end tests
	cargo test --lib
	PAY_SERVER=redis-server cargo test --test '*'
	PAY_SERVER=$(CURDIR)/$(VALKEY) cargo test --test '*'
	cargo test -p pay-sidecar

test-valgrind: build ## The module's integration suite under valgrind (Valkey, libc malloc), sweeper timing tests aside
	rm -rf target/valgrind
	PAY_SERVER=$(CURDIR)/scripts/valgrind-server.sh cargo test --test commands --test config \
		--test index --test input --test persistence --test replication --test hardening -- --test-threads 2
	scripts/valgrind-check.sh

lint: ## cargo fmt --check and clippy with warnings as errors
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	cargo fmt

run: build ## redis-server with the module on 127.0.0.1:$(PORT), in the foreground
	redis-server --port $(PORT) --bind 127.0.0.1 --save "" --loadmodule $(CURDIR)/$(MODULE)

demo: build ## The whole product on local defaults, playing the three failure stories
	target/release/pay-demo

bench: build ## redis-pay against SET NX, Lua, hashes+zset, JSON strings (wall clock and callgrind instructions): writes BENCHMARKS.md
	cargo bench -p pay-sidecar --bench compare

clean: ## Remove build output
	cargo clean
