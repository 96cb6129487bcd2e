# aftercart: make help lists the targets.
SHELL := bash
.DEFAULT_GOAL := help

CARGO ?= cargo
TANSU_VERSION := 0.6.0
CARGO_BIN := $(HOME)/.cargo/bin
BIN := $(or $(CARGO_TARGET_DIR),target)/release/aftercart
# Python tools of the ops checks (tests/ops/requirements.txt), installed on first use.
OPS_VENV := .venv-ops
OPS_PY := $(OPS_VENV)/bin/python

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

.PHONY: test
test: lint tansu test-ops ## The full suite: fmt, clippy, ops checks, unit and integration tests on both brokers
	AFTERCART_REQUIRE_TANSU=1 PATH="$(CARGO_BIN):$$PATH" $(CARGO) test --workspace --locked

.PHONY: test-fast
test-fast: ## Unit and integration tests without lint (Tansu variants skip if it is missing)
	PATH="$(CARGO_BIN):$$PATH" $(CARGO) test --workspace --locked

.PHONY: test-ops
test-ops: build $(OPS_VENV)/.installed ## Ops checks: k8s render+validate+checkov, promtool rules/tests/metrics, dashboards on a live Prometheus
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		{ echo "test-ops needs Prometheus and promtool: apt-get install --no-install-recommends prometheus"; exit 1; }
	@status=0; \
	$(OPS_PY) tests/ops/check_manifests.py || status=1; \
	$(OPS_PY) tests/ops/check_rules.py || status=1; \
	AFTERCART_BIN=$(BIN) $(OPS_PY) tests/ops/live.py || status=1; \
	exit $$status

$(OPS_VENV)/.installed: tests/ops/requirements.txt
	python3 -m venv $(OPS_VENV)
	$(OPS_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/ops/requirements.txt
	touch $@

.PHONY: dashboards
dashboards: ## Regenerate the Grafana dashboard JSON from k8s/components/grafana-dashboards/dashboards.py
	python3 k8s/components/grafana-dashboards/dashboards.py

.PHONY: dashboard-png
dashboard-png: build $(OPS_VENV)/.installed ## Render dashboard panels from a live Prometheus to docs/img/ (needs prometheus)
	AFTERCART_BIN=$(BIN) $(OPS_PY) tests/ops/plot_panels.py

.PHONY: bench
bench: ## Benchmarks (release build): abandonment and referrals engines, state sizes, whole service
	$(CARGO) bench --locked -p aftercart-abandonment --bench abandonment
	$(CARGO) bench --locked -p aftercart-referrals --bench referrals

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
		$(CARGO) install tansu --version $(TANSU_VERSION) --features dynostore; \
	fi

.PHONY: clean
clean: ## Remove build output
	$(CARGO) clean
