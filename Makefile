# plg — `make help` lists the targets. Everything a run needs is installed by `make install`, which the
# other targets depend on: a fresh clone needs only `make run` or `make test`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEVSTACK := $(PY) -m services.devstack
# Code that lint and format look at.
SRC := services tests $(wildcard bench) $(wildcard sdk/plg_sdk) $(wildcard sdk/tests)

# The virtualenv is rebuilt when the dependency lists change (the stamp is newer than both otherwise).
VENV_STAMP := $(VENV)/.plg-installed
SDK_PYPROJECT := $(wildcard sdk/pyproject.toml)

.PHONY: help
help: ## Show this help
	@echo "plg: usage events -> Kafka -> exactly-once metering -> billing. Targets:"
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

$(VENV_STAMP): pyproject.toml $(SDK_PYPROJECT) deploy/install-python.sh
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	sh deploy/install-python.sh $(PIP) dev
	@touch $@

# The browser SDK's packages (sdk/js/package-lock.json, pinned), installed once: npm ci runs again only
# when the lockfile changes (npm writes node_modules/.package-lock.json; the stamp is our own touch).
JS_DIR := sdk/js
JS_STAMP := $(JS_DIR)/node_modules/.plg-installed

$(JS_STAMP): $(JS_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "installing Node.js and npm (Debian)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: install
install: $(VENV_STAMP) $(JS_STAMP) ## Install what is missing: virtualenv + packages, npm packages of sdk/js, Kafka jars, PostgreSQL
	@command -v mvn >/dev/null || { echo "installing maven and a JRE (Debian)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q maven openjdk-17-jre-headless; }
	@$(DEVSTACK) install

.PHONY: run
run: install ## Start Kafka, PostgreSQL, the registry and every service in the foreground; Ctrl-C stops all
	@$(DEVSTACK) run

.PHONY: up
up: install ## Start the same stack in the background (Kafka 127.0.0.1:9092, registry :8081, Postgres :5433)
	@$(DEVSTACK) up

.PHONY: demo
demo: up ## `make up`, then ~300 customers with 90 days of history (imported) and live traffic until Ctrl-C (docs/analytics.md "Demo")
	@$(PY) -m services.devstack.demo $(DEMO_ARGS)

.PHONY: down
down: ## Stop the background stack (only processes it started, in reverse order)
	@if [ -x $(PY) ]; then $(DEVSTACK) down; fi

.PHONY: monitor
monitor: install ## Prometheus (:9090) and Alertmanager (:9095) scraping `make up`'s services, config in deploy/prometheus; `make down` stops them
	@$(DEVSTACK) monitor

.PHONY: chaos
chaos: install ## Whole pipeline under SIGKILLs, a broker restart and 20 % Stripe failures (~1-3 min, loopback only); exits non-zero on any difference
	$(VENV)/bin/pytest -s -p no:cacheprovider tests/chaos/chaos_pipeline.py

.PHONY: status
status: ## Show what runs where
	@$(DEVSTACK) status

.PHONY: test-js
test-js: $(JS_STAMP) ## Browser SDK: type-check and build sdk/js/dist (esbuild + tsc), then its unit tests (node --test)
	cd $(JS_DIR) && npm run --silent build && npm test --silent

# The suite waits on brokers, processes and browsers far more than it computes (one process used ~32 % of
# a 2-core machine), so `make test` runs it in PYTEST_WORKERS processes, each with its own private stack;
# a file's tests stay in one process. Against a stack you started (KAFKA_BOOTSTRAP_SERVERS set) it runs in
# one. PYTEST_WORKERS=0 runs it without worker processes.
PYTEST_WORKERS ?= $(if $(KAFKA_BOOTSTRAP_SERVERS),0,2)
PYTEST_PARALLEL = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

.PHONY: test
test: install test-js ## Whole suite: unit + integration (starts and stops a private stack per worker unless KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL and DATABASE_URL are set)
	$(VENV)/bin/pytest $(PYTEST_PARALLEL) --durations=25

.PHONY: test-unit
test-unit: install test-js ## Unit tests only (no broker, registry or database)
	$(VENV)/bin/pytest -m "not integration"

.PHONY: test-integration
test-integration: install ## Integration and end-to-end tests against the real stack
	$(VENV)/bin/pytest -m integration

.PHONY: lint
lint: install ## ruff check, ruff format --check, mypy
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/mypy services $(wildcard bench) $(wildcard sdk/plg_sdk)

.PHONY: fmt
fmt: install ## Format the code and apply ruff's safe fixes
	$(VENV)/bin/ruff format $(SRC)
	$(VENV)/bin/ruff check --fix $(SRC)

.PHONY: bench
bench: $(shell grep -hoE '^bench-[a-zA-Z0-9_-]+' $(MAKEFILE_LIST) | sort -u) ## Run every benchmark (each bench-* target)
	@echo "benchmarks done"

.PHONY: run-ingest
run-ingest: install ## Run only the ingest API (:8080) in the foreground, against the stack of `make up`
	$(PY) -m services.ingest

.PHONY: bench-ingest
bench-ingest: install ## Ingest throughput and ack latency (batches of 100) vs producing straight to Kafka
	$(PY) -m bench.ingest

.PHONY: run-metering
run-metering: install ## Run only the metering aggregator (ops :8092) in the foreground, against `make up`'s stack
	$(PY) -m services.metering_aggregator

.PHONY: run-entitlements
run-entitlements: install ## Run only the entitlement API (:8082) in the foreground, against `make up`'s stack
	$(PY) -m services.entitlements

.PHONY: bench-billing
bench-billing: install ## Usage events -> metering -> billing -> Stripe (calls per event, commit-to-Stripe p50/p99); period end -> finalised, reconciled invoices for 1,000 customers
	$(PY) -m bench.billing

.PHONY: run-billing
run-billing: install ## Run only the billing reporter (:8083) in the foreground, against `make up`'s stack
	$(PY) -m services.billing_reporter

.PHONY: bench-metering
bench-metering: install ## Aggregator events/s with exactly-once vs raw consume+decode; end-to-end and check latency
	$(PY) -m bench.metering

.PHONY: run-enrichment
run-enrichment: install ## Run only the enrichment service (ops :8093) in the foreground, against `make up`'s stack
	$(PY) -m services.enrichment

.PHONY: run-health
run-health: install ## Run only the health-score service and CS dashboard (:8084) in the foreground, against `make up`'s stack
	$(PY) -m services.health_score

.PHONY: bench-health
bench-health: install ## Health scorer events/s; event -> changed score served p50/p99 at 5k/s; API p99 (idle and under load)
	$(PY) -m bench.health

.PHONY: bench-enrichment
bench-enrichment: install ## Enrichment events/s (exactly-once) vs raw consume+decode+encode+produce; p99 added latency at 5k/s
	$(PY) -m bench.enrichment

.PHONY: run-growth
run-growth: install ## Run only the growth service (flags, activation, onboarding; :8085) against `make up`'s stack
	$(PY) -m services.growth

.PHONY: bench-growth
bench-growth: install ## Growth: server-side flag evaluations/s + p99, SDK µs per local evaluation, admin change -> 100 SSE subscribers p99, onboarding next p99
	$(PY) -m bench.growth

.PHONY: bench-sdk
bench-sdk: install ## SDKs: µs per local flag evaluation (JS engine in Node, Python engine) and dist/plg.iife.js min+gzip bytes
	cd $(JS_DIR) && npm run --silent build && node bench/flags.mjs && gzip -9c dist/plg.iife.js | wc -c | sed 's/^/plg.iife.js min+gzip bytes: /'
	$(PY) sdk/bench_flags.py

.PHONY: clean
clean: down ## Stop the stack and delete its data and logs (keeps the virtualenv and the Kafka jars)
	rm -rf .plg/postgres .plg/kafka/data .plg/kafka/server.properties .plg/logs .plg/run
	rm -rf .pytest_cache .mypy_cache .ruff_cache

.PHONY: bench-pipeline
bench-pipeline: install ## Whole pipeline (ingest -> enrichment + metering -> entitlements, billing): sustained events/s vs a raw hop; ack -> entitlement visible p99 at 10k/s; check p99 under it
	$(PY) -m bench.pipeline

.PHONY: bench-analytics
bench-analytics: install ## Analytics: ingest ack -> queryable p50/p99 at 5k events/s (raw: -> enriched topic); funnel/retention p99 on 10 M events; MB per million events
	$(PY) -m bench.analytics

.PHONY: run-analytics
run-analytics: install ## Run only the analytics service (:8086: API, console pages) against `make up`'s stack
	$(PY) -m services.analytics
