# ringmail: the two commands a newcomer needs are `make demo` and `make test`.
#
# The build directory lives outside the clone (RocksDB's C++ takes ~25 minutes per
# profile on 2 cores: keep it, share it between clones, let CI cache it).
CARGO_TARGET_DIR ?= $(HOME)/.cache/ringmail/target
export CARGO_TARGET_DIR

CARGO ?= cargo

.PHONY: all deps build test demo bench lint fmt ci

all: build

deps:
	@bash ops/install-deps.sh

build: deps
	$(CARGO) build --workspace --all-targets

# The whole test suite (unit, integration, the SIGKILL crash test), then the
# daemon-level tests again with io_uring blocked by a seccomp filter (as in a
# container whose profile forbids it): the engine must run them on epoll.
DAEMON_TESTS = --test engine --test engine_admin --test engine_crash \
	--test engine_ingest --test engine_rules --test engine_shard_down --test engine_smtp --test engine_store_format --test engine_latency --test engine_tls --test engine_http_guard --test engine_loop --test engine_inject_bounds --test engine_dns_stall --test engine_slowloris --test engine_memory --test engine_inject_stream --test engine_dkim --test engine_heads
test: deps
	$(CARGO) test --workspace
	RINGMAIL_TEST_BLOCK_IO_URING=1 $(CARGO) test --workspace $(DAEMON_TESTS)

# The main job: a bulk campaign (MESSAGES, default 100,000) through ringmail's engine
# into a local fake-MX fleet, with live progress and a final report. Release build
# (the first time, RocksDB's C++ is compiled for it: ~20 minutes on 2 cores).
MESSAGES ?= 100000
demo: deps
	$(CARGO) build --release -p loadgen
	$(CARGO_TARGET_DIR)/release/loadgen demo --messages $(MESSAGES)

# Benchmarks in the release profile (a second RocksDB build the first time).
bench: deps
	$(CARGO) bench -p benches --bench queue_store

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

ci: lint test
