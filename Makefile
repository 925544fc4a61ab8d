# devicestream -- developer entry points. The local stack (Kafka-compatible broker,
# PostgreSQL + TimescaleDB, pgBouncer) is managed by the scripts in stack/.

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STACK := stack

.PHONY: setup stack-up stack-down migrate run test bench backup restore restore-stop certs

# Install everything (Debian packages, TimescaleDB, venv, broker); idempotent.
setup:
	bash $(STACK)/setup.sh

# Start the local services in the background; returns once they accept connections.
stack-up: setup
	bash $(STACK)/up.sh

# Stop the local services (data is kept).
stack-down:
	bash $(STACK)/down.sh

# Create or upgrade the database schema.
migrate: stack-up
	$(VENV)/bin/faust -A streams.app migrate

# The pipeline end to end: stack, schema, one worker and the simulator; Ctrl-C stops them.
run: migrate
	bash $(STACK)/run.sh

# Lint first (ruff.toml; a finding fails), then types (mypy, configured in setup.cfg; an
# error fails), then the suite (tests/suite.sh): unit tests, then the integration tests
# against the local stack side by side (TEST_PROCESSES, default 4). If no test ran, it fails.
test: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(MAKE) migrate
	PY=$(PY) bash tests/suite.sh $(PYTEST_ARGS)

# End-to-end benchmark against the baseline (bench/results/latest.json and a report), then
# what device tokens cost POST /ingest (bench/results/ingest_auth.json).
bench: migrate
	$(PY) -m bench.pipeline $(BENCH_ARGS)
	$(PY) -m bench.ingest_auth

# TLS certificates of the compose stack (Kafka's SASL_SSL listener, PostgreSQL, pgBouncer),
# in deploy/tls/ (docs/security.md); KAFKA_EXTERNAL_HOST is the address devices connect to.
certs:
	bash $(STACK)/certs.sh

# Hot backup of the local cluster into the pgBackRest repository (TYPE=incr|diff|full;
# the first one is full); prints its label, size and seconds.
backup:
	bash $(STACK)/backup.sh

# Point-in-time restore into a new cluster on 127.0.0.1:PORT, the running stack untouched:
# make restore TIME='2026-12-04T10:00:00Z' PORT=55440
restore:
	bash $(STACK)/restore.sh '$(TIME)' '$(PORT)'

# Stop and remove the cluster that make restore started on PORT.
restore-stop:
	bash $(STACK)/restore-stop.sh '$(PORT)'
