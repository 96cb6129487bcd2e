# aftercart: make help lists the targets.
SHELL := bash
.DEFAULT_GOAL := help

CARGO ?= cargo
TANSU_VERSION := 0.6.0
CARGO_BIN := $(HOME)/.cargo/bin
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# The release binary: make run, demo, dashboard-png and bench.
BIN := $(TARGET_DIR)/release/aftercart
# The debug binary the test build makes (`cargo test --workspace`, with the tests' features): the
# ops checks run this one, so `make test` compiles the workspace once, in debug, and never in
# release. `cargo build -p aftercart` would resolve other features and compile it all again.
TEST_BIN := $(TARGET_DIR)/debug/aftercart
# Python tools of the ops checks (tests/ops/requirements.txt), installed on first use.
OPS_VENV := .venv-ops
OPS_PY := $(OPS_VENV)/bin/python
# The baseline ingresses `make bench` measures aftercart against.
BENCH_NODE := bench/baselines/node
BENCH_PY := bench/baselines/python

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build the release binary (target/release/aftercart)
	$(CARGO) build --release --locked -p aftercart

.PHONY: run
run: build ## Run the whole pipeline locally (embedded Kafka broker; Ctrl-C stops it)
	$(BIN) dev

.PHONY: demo
demo: ## Send a demo journey (purchase + abandoned checkout) to a running `make run`
	@test -x $(BIN) || $(CARGO) build --release --locked -p aftercart
	$(BIN) send --demo

.PHONY: preflight
preflight: ## Check what make test needs besides Rust (build headers, Prometheus, python3-venv); names the one command to run
	@.ci/preflight

.PHONY: test
test: preflight lint tansu test-build $(OPS_VENV)/.installed ## The full suite: fmt, clippy, ops checks, unit and integration tests on both brokers
	@# Three jobs side by side, each one's output printed whole when it ends: the ops checks, the
	@# integration binary (mostly waiting on brokers, sessions and timers) and every other test.
	@$(MAKE) --no-print-directory -j3 --output-sync=target ops-checks integration-tests other-tests

# The integration tests mostly wait (group joins, sessions, timers, other processes), so they run
# more threads than cores: on 2 cores the integration binary took 718 s with one thread per core
# and 253 s with three (docs/development.md). TEST_THREADS=2 for a crowded machine. The other
# tests keep libtest's one thread per core: they end well before the integration binary, and a
# group-session unit test of aftercart-kafka timed out once with three per core beside it.
TEST_THREADS ?= $(shell echo $$(( 3 * $$(nproc) )))
# Every test target but the integration binary, from cargo's metadata (so a new one is never
# left out), each as `--test NAME`.
OTHER_TEST_TARGETS = $(shell $(CARGO) metadata --no-deps --format-version 1 --locked | python3 -c \
	'import json, sys; print(" ".join("--test " + t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "test" in t["kind"] and t["name"] != "integration"))')

# --workspace everywhere: the same feature resolution as test-build, so nothing is compiled again.
# MAKEFLAGS= because cargo would otherwise warn that it cannot reach make's jobserver.
.PHONY: integration-tests
integration-tests:
	MAKEFLAGS= AFTERCART_REQUIRE_TANSU=1 PATH="$(CARGO_BIN):$$PATH" $(CARGO) test --workspace --locked \
		--test integration -- --test-threads=$(TEST_THREADS)

.PHONY: other-tests
other-tests:
	MAKEFLAGS= AFTERCART_REQUIRE_TANSU=1 PATH="$(CARGO_BIN):$$PATH" $(CARGO) test --workspace --locked \
		--lib --bins --examples $(OTHER_TEST_TARGETS)
	MAKEFLAGS= $(CARGO) test --workspace --locked --doc

.PHONY: test-build
test-build: ## Build every test and the debug binary without running them (what test, test-ops and test-faults share)
	$(CARGO) test --workspace --locked --no-run

.PHONY: test-faults
# --workspace, not -p aftercart: the same features as `make test`'s build, so it links nothing new.
test-faults: tansu ## Fault suite (issue 7): real binary and Tansu processes killed, frozen, flooded; prints the books
	AFTERCART_REQUIRE_TANSU=1 PATH="$(CARGO_BIN):$$PATH" $(CARGO) test --workspace --locked \
		--test faults -- --ignored --nocapture --test-threads=1

.PHONY: test-fast
test-fast: ## Unit and integration tests without lint (Tansu variants skip if it is missing)
	PATH="$(CARGO_BIN):$$PATH" $(CARGO) test --workspace --locked -- --test-threads=$(TEST_THREADS)

.PHONY: test-ops
test-ops: preflight test-build $(OPS_VENV)/.installed ## Ops checks: k8s render+validate+checkov, promtool rules/tests/metrics, dashboards on a live Prometheus
	@$(MAKE) --no-print-directory ops-checks

.PHONY: ops-checks
ops-checks:
	@status=0; \
	$(OPS_PY) tests/ops/check_manifests.py || status=1; \
	$(OPS_PY) tests/ops/check_rules.py || status=1; \
	AFTERCART_BIN=$(TEST_BIN) $(OPS_PY) tests/ops/check_compose.py || status=1; \
	$(OPS_PY) tests/ops/check_preflight.py || status=1; \
	AFTERCART_BIN=$(TEST_BIN) $(OPS_PY) tests/ops/live.py || status=1; \
	exit $$status

$(OPS_VENV)/.installed: tests/ops/requirements.txt
	python3 -m venv $(OPS_VENV)
	$(OPS_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/ops/requirements.txt
	touch $@

.PHONY: observe
observe: $(OPS_VENV)/.installed ## Local Prometheus (Debian's) on 127.0.0.1:9091 scraping `make run`, with aftercart's recording and alert rules
	$(OPS_PY) tests/ops/local_prometheus.py --observe $(TARGET_DIR)/observe

.PHONY: compose-files
compose-files: $(OPS_VENV)/.installed ## Regenerate compose/prometheus.yml and compose/aftercart.rules.yml (after changing the rules)
	$(OPS_PY) tests/ops/local_prometheus.py --write-compose

.PHONY: docs
docs: ## Regenerate the configuration and metrics references (docs/reference/) from the code
	$(CARGO) run --locked --quiet -p aftercart -- docs --out docs/reference

.PHONY: dashboards
dashboards: ## Regenerate the Grafana dashboard JSON from k8s/components/grafana-dashboards/dashboards.py
	python3 k8s/components/grafana-dashboards/dashboards.py

.PHONY: dashboard-png
dashboard-png: build $(OPS_VENV)/.installed ## Render dashboard panels from a live Prometheus to docs/img/ (needs prometheus)
	AFTERCART_BIN=$(BIN) $(OPS_PY) tests/ops/plot_panels.py

.PHONY: bench
bench: build $(BENCH_NODE)/node_modules/.installed $(BENCH_PY)/.venv/.installed ## Benchmarks: ingress vs Node and Python baselines under load, micro-benchmarks, consumers (engines and whole services), restore, failover, consumer latency; writes bench/REPORT.md
	mkdir -p bench/out
	set -o pipefail; CRITERION_HOME=$(CURDIR)/bench/out/criterion $(CARGO) bench --locked -p aftercart-loadgen --bench hot_path 2>&1 | tee bench/out/hot_path.txt
	set -o pipefail; $(CARGO) bench --locked -p aftercart-abandonment --bench abandonment | tee bench/out/abandonment.txt
	set -o pipefail; $(CARGO) bench --locked -p aftercart-referrals --bench referrals | tee bench/out/referrals.txt
	set -o pipefail; $(CARGO) bench --locked -p aftercart-audiences --bench audiences | tee bench/out/audiences.txt
	set -o pipefail; $(CARGO) bench --locked -p aftercart-kafka --bench restore | tee bench/out/restore.txt
	# Failover figure: the fault suite's churn of abandonment members under load (SIGTERM and SIGKILL, restart-to-resume)
	set -o pipefail; $(CARGO) test -p aftercart --locked --test faults \
		faults_consumers::abandonment_members_coming_and_going_under_load -- --ignored --nocapture --test-threads=1 2>&1 | tee bench/out/failover.txt
	python3 bench/run.py --bin $(BIN)

.PHONY: bench-latency
bench-latency: build $(BENCH_PY)/.venv/.installed ## Only the consumer latency stage of `make bench` (ingress accept to output record); updates its section of bench/REPORT.md
	mkdir -p bench/out
	python3 bench/run.py --bin $(BIN) --only latency

# The baselines' pinned dependencies (package-lock.json, requirements.lock), installed on first use.
$(BENCH_NODE)/node_modules/.installed: $(BENCH_NODE)/package-lock.json
	cd $(BENCH_NODE) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(BENCH_PY)/.venv/.installed: $(BENCH_PY)/requirements.lock
	python3 -m venv $(BENCH_PY)/.venv
	$(BENCH_PY)/.venv/bin/pip install --quiet --disable-pip-version-check -r $(BENCH_PY)/requirements.lock
	touch $@

# Hostile input (fuzz/, its own workspace): cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1
# lets the stable toolchain accept them. New inputs go to a scratch corpus, never the tree.
CARGO_FUZZ_VERSION := 0.13.1
FUZZ_SECONDS ?= 60
# Targets fuzzed at once. A libFuzzer run is one process on one core, so CI runs as many as it has
# cores: each target still gets FUZZ_SECONDS of a core, in a fraction of the wall time.
FUZZ_JOBS ?= 1
FUZZ_TARGETS := webhook_headers_signature journey_key spool_frames abandonment_record referrals_record audiences_record
FUZZ_SCRATCH := $(or $(CARGO_TARGET_DIR),$(CURDIR)/fuzz/target)/fuzz-corpus

.PHONY: fuzz
fuzz: ## Fuzz every target for FUZZ_SECONDS (default 60), FUZZ_JOBS (default 1) at once, from the committed corpus; fails on a crash
	@"$(CARGO_BIN)/cargo-fuzz" --version 2>/dev/null | grep -q "$(CARGO_FUZZ_VERSION)" || \
		$(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)
	cd fuzz && RUSTC_BOOTSTRAP=1 PATH="$(CARGO_BIN):$$PATH" $(CARGO) fuzz build
	@$(MAKE) --no-print-directory --output-sync=target -j$(FUZZ_JOBS) $(addprefix fuzz-run-,$(FUZZ_TARGETS))

# One target for FUZZ_SECONDS, built by `make fuzz` first.
.PHONY: $(addprefix fuzz-run-,$(FUZZ_TARGETS))
$(addprefix fuzz-run-,$(FUZZ_TARGETS)): fuzz-run-%:
	@mkdir -p "$(FUZZ_SCRATCH)/$*"
	@echo "Fuzzing $* for $(FUZZ_SECONDS) s"
	@(cd fuzz && RUSTC_BOOTSTRAP=1 PATH="$(CARGO_BIN):$$PATH" $(CARGO) fuzz run "$*" \
		"$(FUZZ_SCRATCH)/$*" "corpus/$*" -- \
		-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 2>&1 | grep -vE '^#[0-9]+\s+(NEW|REDUCE|pulse)'; \
		exit $${PIPESTATUS[0]}) || { echo "fuzz: $* failed; the input is in fuzz/artifacts/$*/"; exit 1; }

.PHONY: test-timing
test-timing: ## Refusing a signature costs the same wherever it differs (valgrind instruction counts)
	$(CARGO) build --release --locked -p aftercart-shopify --example signature_timing
	tests/timing/signature_timing.sh $(TARGET_DIR)/release/examples/signature_timing

.PHONY: lint
lint: ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: tansu
tansu: ## Install the Tansu broker the tests use (once; ~10-20 min to build)
	@if "$(CARGO_BIN)/tansu" --version 2>/dev/null | grep -q "$(TANSU_VERSION)"; then \
		echo "tansu $(TANSU_VERSION) is installed"; \
	else \
		echo "Installing tansu $(TANSU_VERSION) (a Kafka-compatible broker) for the integration tests..."; \
		$(CARGO) install tansu --locked --version $(TANSU_VERSION) --features dynostore; \
	fi

.PHONY: clean
clean: ## Remove build output
	$(CARGO) clean
