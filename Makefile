# redis-pay: `make help` lists the targets.

MODULE := target/release/libredis_pay.so
# The test servers besides Debian's redis-server 7.0 (scripts/install-deps.sh).
REDIS8 := target/redis8/bin/redis-server
VALKEY := target/valkey/bin/valkey-server
VALKEY9 := target/valkey9/bin/valkey-server
PORT ?= 6379

.DEFAULT_GOAL := help
.PHONY: help deps build test test-valgrind lint fmt run demo bench chaos clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## Install what is missing: Debian packages, and Redis 8.2, Valkey 8.1 and 9.1 into target/
	@scripts/install-deps.sh

build: deps ## Build the module and pay-sidecar (release)
	# The module on its own: built with the workspace, feature unification
	# would give it the features the clients ask of shared crates (pay-proto's
	# `redis` reader among them).
	cargo build --release
	cargo build --release --workspace --exclude redis-pay

test: build ## Unit tests; module suite on Redis 7.0, 8.2, Valkey 8.1, 9.1; sidecar tests on Redis 7.0, Valkey 9.1; the chaos checker's unit tests
	cargo test --lib
	PAY_SERVER=redis-server cargo test --test '*'
	PAY_SERVER=$(CURDIR)/$(REDIS8) cargo test --test '*'
	PAY_SERVER=$(CURDIR)/$(VALKEY) cargo test --test '*'
	PAY_SERVER=$(CURDIR)/$(VALKEY9) cargo test --test '*'
	PAY_SERVER=redis-server cargo test -p pay-sidecar
	PAY_SERVER=$(CURDIR)/$(VALKEY9) cargo test -p pay-sidecar --test '*'
	cargo test -p pay-chaos -p pay-proto -p testkit

test-valgrind: build ## The module's integration suite under valgrind (Valkey, libc malloc), sweeper timing tests aside
	rm -rf target/valgrind
	PAY_SERVER=$(CURDIR)/scripts/valgrind-server.sh cargo test --test commands --test config \
		--test index --test input --test persistence --test replication --test hardening --test neighbour --test guard -- --test-threads 2
	scripts/valgrind-check.sh

lint: ## cargo fmt --check and clippy with warnings as errors
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	cargo fmt

run: build ## redis-server with the module on 127.0.0.1:$(PORT), in the foreground
	redis-server --port $(PORT) --bind 127.0.0.1 --save "" --loadmodule $(CURDIR)/$(MODULE)

demo: build ## The whole product on local defaults, playing the four failure stories
	target/release/pay-demo

bench: build ## redis-pay against SET NX, Lua, hashes+zset, JSON strings (wall clock and callgrind instructions): writes BENCHMARKS.md
	cargo bench -p testkit --bench compare

chaos: build ## Fault injection (Sentinel failovers, kills, provider faults) and a checker: CHAOS_SECONDS (60), CHAOS_SEED; writes CHAOS.md
	target/release/pay-chaos

clean: ## Remove build output
	cargo clean
