# Two commands set everything up: `make demo` and `make test`.
# Each builds the venv (when requirements.txt changed), installs the
# PostgreSQL server if missing (as root), and starts the local stack.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STACK := $(PY) devstack/stack.py
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)
# Python caches the project's compiled modules in __pycache__ (git ignores them). Where the environment
# says not to (PYTHONDONTWRITEBYTECODE), each of the hundreds of Python processes a `make test` starts
# would compile them again.
unexport PYTHONDONTWRITEBYTECODE
PYTEST_ARGS ?=
# make airflow EXECUTOR=celery: metadata on PostgreSQL, Redis, one Celery worker per environment.
EXECUTOR ?= local

.PHONY: help venv postgres redis compose chromium stack-up stack-down stack-status replica-up replica-down demo demo-fleet airflow test check requirements clean

help:
	@echo "make demo          bring up the local stack, seed it, run the deployment, print a report"
	@echo "make demo-fleet    TENANTS tenant databases (default 20), orphan rows in one, deploy_fleet in waves, a report"
	@echo "make test          run the whole test suite on the local stack"
	@echo "make check         the quick answer: unit, DAG and integration tests not marked slow (about 2 minutes)"
	@echo "make airflow       start Airflow (UI on http://localhost:8080, scheduler, triggerer) on the local stack; Ctrl-C stops it"
	@echo "                   EXECUTOR=celery: CeleryExecutor, a worker per environment holding only its own credentials"
	@echo "make stack-up      start the local stack (2 PostgreSQL clusters, S3, Slack stand-in)"
	@echo "make stack-status  show what runs where (passwords masked)"
	@echo "make stack-down    stop every process of the local stack"
	@echo "make replica-up    start production's streaming replica (make demo does; the health gate watches it)"
	@echo "make replica-down  stop it"

venv:
	@devstack/ensure_venv.sh

postgres:
	@devstack/ensure_postgres.sh

# redis-server, the Celery broker (installed from Debian's packages as root when missing).
redis:
	@devstack/ensure_redis.sh

# docker-compose (Debian's, no engine) validates docker-compose.yaml in the test suite.
compose:
	@devstack/ensure_compose.sh

# Headless Chromium + chromedriver for the UI page's browser test (installed as root when missing).
chromium:
	@devstack/ensure_chromium.sh

stack-up: venv postgres
	@$(STACK) up

stack-down:
	@python3 devstack/stack.py down

stack-status:
	@python3 devstack/stack.py status

# Production's streaming replica: started for what measures against it (the demo, the health gate's
# tests and benchmark), not with the stack.
replica-up: stack-up
	@$(STACK) replica-up

replica-down:
	@python3 devstack/stack.py replica-down

demo: replica-up
	@$(PY) devstack/demo.py

# make demo-fleet TENANTS=40: the fleet's size; the tenants stay (devstack/tenants.py drop removes them).
TENANTS ?= 20
demo-fleet: stack-up
	@$(PY) devstack/demo_fleet.py --tenants $(TENANTS)

# Airflow's real services in the foreground (devstack/airflow_local.py); Ctrl-C stops them all.
airflow: $(if $(filter celery,$(EXECUTOR)),venv postgres redis) stack-up
	@$(PY) devstack/airflow_local.py start --executor $(EXECUTOR)

# Runs the suite; stops the stack afterwards only if this target started it. The files run side by side
# in TEST_WORKERS pytest processes (pytest-xdist), each file on one process but the few whose tests
# tests/conftest.py spreads (SPREAD there); README "How long the suite takes". TEST_WORKERS=0: one process.
# Four on this 2-core machine: on 7 Dec, in the same session, 3 processes took 11 min 10 s and left
# 154 core-seconds idle (the e2e tests wait on Airflow's services and on maintenance windows); 4 took
# 10 min 36 s and left 55 idle, for about 25 s more CPU (README "How long the suite takes").
TEST_WORKERS ?= 4
TEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile
test: venv postgres redis compose chromium
	@was_up=0; python3 devstack/stack.py status >/dev/null 2>&1 && was_up=1; \
	$(STACK) up >/dev/null || exit $$?; \
	rc=0; $(VENV)/bin/pytest $(TEST_PARALLEL) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$was_up = 0 ]; then $(STACK) down || true; fi; \
	exit $$rc

# The quick answer while working: tests/unit, tests/dags and the integration tests not marked slow
# (each marked one took half a second or more). Same stack handling as `test`; `make test` runs everything.
check: venv postgres
	@was_up=0; python3 devstack/stack.py status >/dev/null 2>&1 && was_up=1; \
	$(STACK) up >/dev/null || exit $$?; \
	rc=0; $(VENV)/bin/pytest -q -m "not slow" tests/unit tests/dags tests/integration $(PYTEST_ARGS) || rc=$$?; \
	if [ $$was_up = 0 ]; then $(STACK) down || true; fi; \
	exit $$rc

# Re-resolve requirements.in into the pinned requirements.txt.
requirements:
	rm -rf /tmp/schema-deploy-resolve && python3.11 -m venv /tmp/schema-deploy-resolve
	/tmp/schema-deploy-resolve/bin/pip install -q --upgrade pip
	/tmp/schema-deploy-resolve/bin/pip install -q -r requirements.in
	{ echo "# Generated by 'make requirements' from requirements.in with Python 3.11 (pip freeze)."; \
	  echo "# The Makefile rebuilds .venv whenever this file's hash changes."; \
	  /tmp/schema-deploy-resolve/bin/pip freeze --exclude pip --exclude setuptools; } > requirements.txt

clean:
	python3 devstack/stack.py destroy
	rm -rf $(VENV)
