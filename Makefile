# Every common action has one short name; each sets itself up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export LEAVESYNC_HOME ?= $(CURDIR)/.leavesync
export DAGSTER_HOME ?= $(LEAVESYNC_HOME)/dagster
# One "planned" event per asset for a partition-range run instead of one per partition.
export DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS ?= true
# Per-partition materializations of a range run stored in batches (PostgreSQL storage).
export DAGSTER_EVENT_BATCH_SIZE ?= 1000
export GX_ANALYTICS_ENABLED ?= false
UI_PORT ?= 3000

.PHONY: install demo sync test ui ui-check lint format bench bench-smoke bench-cli bench-providers bench-latency chaos chaos-smoke services clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	touch $@

demo: install  ## seed the embedded HR database and reconcile it into .ics feeds
	$(BIN)/leavesync demo

sync: install  ## reconcile with $$LEAVESYNC_CONFIG (or the embedded defaults)
	$(BIN)/leavesync sync

services:  ## start PostgreSQL and MariaDB if they are down
	@scripts/services.sh

test: install services  ## the whole test suite
	$(BIN)/python -m pytest -p no:cacheprovider

ui: install  ## the Dagster UI (and daemon: schedule, sensor, backfills) on the demo's instance
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -c 'import sys; from pathlib import Path; from pipelines.runner import ensure_instance_settings as e; e(Path(sys.argv[1]))' $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(UI_PORT)

ui-check: install  ## the browser check: `make ui` on the demo, in Chromium (Debian's package)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)
	test -s $(LEAVESYNC_HOME)/hr.sqlite || $(BIN)/leavesync demo
	$(BIN)/python scripts/ui_check.py $(UI_CHECK_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install services  ## the scale benchmark (BENCH_ARGS="--employees 50000 --leaves 1000000 ...")
	$(BIN)/python -m bench.scale $(BENCH_ARGS)

bench-smoke: install  ## a seconds-long run of the scale benchmark, so it cannot rot
	$(BIN)/python -m bench.scale --smoke

bench-cli: install  ## a 25-leave sync, `leavesync entities` and `make demo`, timed as a user runs them
	$(BIN)/python -m bench.cli_bench

bench-providers: install  ## Google, Graph and EWS against their emulators, CalDAV against Radicale
	$(BIN)/python -m bench.google_bench
	$(BIN)/python -m bench.graph_bench
	$(BIN)/python -m bench.ews_bench
	$(BIN)/python -m bench.caldav_bench

bench-latency: install services  ## HR change -> calendar under dagster dev (SQLite + ics, PostgreSQL + ics + Google); a sensor poll at 1M leaves
	$(BIN)/python -m bench.latency $(LATENCY_ARGS)
	$(BIN)/python -m bench.latency --instance postgres --google $(LATENCY_ARGS)
	$(BIN)/python -m bench.sensor_poll

chaos: install  ## kill -9, faults and lost state on every target, against emulators (CHAOS_ARGS="--trials 20")
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

chaos-smoke: install  ## the same, 3 trials and 50 events, every target in one configuration (in CI)
	$(BIN)/python -m bench.chaos --smoke

clean:
	rm -rf $(VENV) .leavesync
