# One task runner for people and CI. `make test` and `make demo` set everything up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: help setup system-deps test test-quick lint demo dashboard bench clean

help:
	@echo "make demo        run the local pipeline end to end (sets itself up)"
	@echo "make dashboard   the dashboard over 10 simulated sensors (Ctrl-C stops it)"
	@echo "make test        create the venv, install what is missing, run every test"
	@echo "make test-quick  the same without the slow fault-injection tests"
	@echo "make lint        ruff, mypy --strict, cfn-lint and checkov"
	@echo "make bench       the benchmarks in bench/ (BENCH=--quick: small sizes)"

# Mosquitto (the local broker), NATS (the tests' broker of MQTT 3.1.1 only), Node.js (the
# local table engine, the dashboard's charts), Chromium (the dashboard's browser tests) and
# venv support, from the distribution, only where missing.
system-deps:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q mosquitto; \
	fi
	@if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then \
		echo "installing nats-server (the tests' MQTT 3.1.1-only broker)"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nats-server; \
	fi
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
		echo "installing nodejs and npm (the local table engine, dynalite, runs on Node.js)"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nodejs npm; \
	fi
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver (the dashboard's browser tests)"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; \
	fi
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		echo "installing python3-venv"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv; \
	fi

$(STAMP): pyproject.toml cloud/local/dynalite/package-lock.json cloud/dashboard/web/package-lock.json
	$(MAKE) system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m cloud.local.table_engine
	$(PY) -m cloud.dashboard.assets
	touch $(STAMP)

setup: $(STAMP) system-deps

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-quick: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# checkov, a scanner's view of the stack: a finding not skipped with its reason in
# cloud/stack/template.py (SCANNER_SKIPS) fails. It pins boto3, botocore, networkx and packaging
# below the project's, so it has a venv of its own ($(VENV)/lint-tools), and a version of
# its own: a release with new checks arrives by choice. Offline: no API key, no update
# check, no downloads.
lint: setup
	$(VENV)/bin/ruff check device cloud tests bench
	$(VENV)/bin/mypy device cloud
	$(VENV)/bin/cfn-lint cloud/cloudformation/sensor-pipeline.yaml
	$(PY) -m cloud.stack.template --check
	$(PY) -m cloud.cli.reference --check
	@tools=$(VENV)/lint-tools; version=3.3.30; \
	if [ "$$($$tools/bin/checkov --version 2>/dev/null)" != "$$version" ]; then \
		echo "installing checkov $$version into $$tools"; \
		$(PYTHON) -m venv $$tools && $$tools/bin/python -m pip install -q "checkov==$$version"; \
	fi; \
	echo "checkov --framework cloudformation cloud/cloudformation/sensor-pipeline.yaml"; \
	env -u BC_API_KEY -u PRISMA_API_URL CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=true \
		$$tools/bin/checkov --framework cloudformation --skip-download --skip-results-upload \
		--quiet --compact -f cloud/cloudformation/sensor-pipeline.yaml

# The tutorial's scenario on a local stack of its own in var/demo (its own table, certificates
# and ports, so a stack you run from this folder is left alone), then what arrived. Starts
# afresh each time; stops what it started, even when a step fails.
DEMO := var/demo
DASHBOARD_PORT ?= 8050
BIN := $(abspath $(VENV)/bin)
demo: setup
	@if [ -d $(DEMO) ]; then (cd $(DEMO) && $(BIN)/cloud local down >/dev/null); rm -rf $(DEMO); fi
	@mkdir -p $(DEMO)
	@set -e; cd $(DEMO); trap '$(BIN)/cloud local down' EXIT; \
	$(BIN)/cloud local up; \
	$(BIN)/cloud dashboard --port $(DASHBOARD_PORT) >dashboard.log 2>&1 & dash=$$!; \
	trap 'kill $$dash 2>/dev/null || true; $(BIN)/cloud local down' EXIT; trap 'exit 130' INT TERM; \
	for _ in $$(seq 100); do grep -q '^dashboard:' dashboard.log && break; \
		kill -0 $$dash 2>/dev/null || break; sleep 0.1; done; \
	echo "== the dashboard, live while the demo runs: $$(sed -n 's/^dashboard: \([^ ]*\).*/\1/p' dashboard.log)"; \
	grep -q '^dashboard:' dashboard.log || cat dashboard.log; \
	echo "== 10 simulated sensors x 1000 readings"; \
	$(BIN)/device-agent simulate --devices 10 --count 1000 --interval 0 -q --outbox-dir outbox; \
	echo "== per-sensor summary, from the SensorData table"; \
	$(BIN)/cloud summary --wait-for 10000; \
	echo "== the newest readings of sensor-3"; \
	$(BIN)/cloud readings --id sensor-3 --limit 5; \
	echo "== export the table to the stack's exports folder, as Data Pipeline's JSON lines and as Parquet"; \
	$(BIN)/cloud export --format datapipeline --settle 0; \
	$(BIN)/cloud export --format parquet --settle 0; \
	echo "== the tutorial's Athena SQL, unchanged, on DuckDB over the export"; \
	$(BIN)/cloud query "SELECT sensorid.s AS sensor, count(*) AS readings, round(avg(temperature.n), 2) AS avg_temp FROM sensor_data GROUP BY sensorid.s ORDER BY sensor"; \
	echo "== cloud query --report summary, over the Parquet export"; \
	$(BIN)/cloud query --report summary; \
	$(BIN)/cloud plot --id sensor-1 --id sensor-2 --id sensor-3 --out temperature.png

# The demo's stack with 10 simulated sensors at 1 Hz, the alerts of config/alerts.toml
# watched, and the dashboard in the foreground (its address printed); Ctrl-C stops it all.
# The stack's data stays in var/demo (`make demo` starts it afresh).
dashboard: setup
	@mkdir -p $(DEMO)
	@set -e; cd $(DEMO); $(BIN)/cloud local up >/dev/null; \
	$(BIN)/device-agent simulate --devices 10 --interval 1 -q --outbox-dir outbox & sim=$$!; \
	$(BIN)/cloud alerts watch --rules $(abspath config/alerts.toml) >alerts.log 2>&1 & watch=$$!; \
	trap 'kill $$sim $$watch 2>/dev/null || true; $(BIN)/cloud local down' EXIT; trap 'exit 130' INT TERM; \
	echo "alerts: $(DEMO)/alerts.log"; \
	$(BIN)/cloud dashboard --port $(DASHBOARD_PORT)

# Every stage against its baseline; `make bench BENCH=--quick` runs each at a small size.
BENCH ?=
bench: setup
	$(PY) bench/agent_publish.py $(BENCH)
	$(PY) bench/receipts.py $(BENCH)
	$(PY) bench/agent_footprint.py $(BENCH)
	$(PY) bench/ingest.py $(BENCH)
	$(PY) bench/table_load.py $(BENCH)
	$(PY) bench/export_scan.py $(BENCH)
	$(PY) bench/query_report.py $(BENCH)
	$(PY) bench/fleet.py $(BENCH)
	$(PY) bench/config_roundtrip.py $(BENCH)
	$(PY) bench/dashboard.py $(BENCH)
	$(PY) bench/dashboard_history.py $(BENCH)
	$(PY) bench/alerts_replay.py $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
