# KernelSight. Two commands on a fresh Debian/Ubuntu machine, as root:
#   make stress   # the main job: every collector + stress workloads + verdict
#   make test     # the test suite (real Redis, real BPF, real Docker)
SHELL := /bin/bash
TEST_DURATION ?= 60
DB ?= data/stress_test.db
PYTEST_ARGS ?=
VENV := .venv
KS := $(VENV)/bin/kernelsight

.PHONY: setup stress report query test test-quiet test-fast lint bench soak idle-check docker-setup compose-build compose-up compose-stress compose-down clean fleet

setup:
	@scripts/setup.sh

stress: setup
	$(KS) stresstest --duration $(TEST_DURATION) --db $(DB)

report: setup
	-$(KS) analyze --db $(DB) --html $(DB:.db=.html)
	$(KS) report --db $(DB)

query: setup
	$(KS) query --db-path $(DB) --demo

test: setup docker-setup
	$(VENV)/bin/pytest -v -rA --durations=15 -m "not quiet_host and not known_flaky" $(PYTEST_ARGS) tests

# Analysis judged against background activity (incident ranks, idle finding budget, history
# baselines): meaningful only on a host doing nothing else, so not part of `make test`.
test-quiet: setup
	$(VENV)/bin/pytest -v -rA -s -m "quiet_host or known_flaky" $(PYTEST_ARGS) tests

test-fast: setup
	$(VENV)/bin/pytest -q -m "not docker and not quiet_host and not known_flaky" $(PYTEST_ARGS) tests

lint: setup
	$(VENV)/bin/ruff check services tests

docker-setup:
	@bash docker/setup-docker.sh

compose-build: docker-setup
	docker compose build

# continuous collection (idempotent: leaves a running stack as it is unless its image changed)
compose-up: docker-setup
	docker compose up -d --build --wait

# a stress run against the running stack; exit code = its verdict (0 only for SUCCESS)
# (then removes the finished stress container: `docker compose restart` would start it again)
compose-stress: compose-up
	TEST_DURATION=$(TEST_DURATION) docker compose up --exit-code-from stress stress; \
	rc=$$?; docker compose rm -f stress >/dev/null; exit $$rc

# stop the stack; keeps ./data and the volumes (Redis data, generated password): add -v to
# `docker compose down` yourself to delete those
compose-down:
	docker compose --profile stress down --remove-orphans

clean:
	rm -rf data/stress_test.db* logs/stress_test

bench: setup
	$(VENV)/bin/kernelsight bench $(if $(QUICK),--quick,)

# `make soak SOAK_DURATION=7200`: loadgen + ingest with retention and a size cap (see README).
SOAK_DURATION ?= 600
SOAK_RATE ?= 10000
SOAK_RETENTION ?= 10m
SOAK_SIZE ?= 256MiB
SOAK_COLLECTORS ?= all
SOAK_DB ?= data/soak-$(shell date +%Y%m%d-%H%M%S).db  # a new file each time: nothing is deleted
soak: setup
	$(KS) soak --rate $(SOAK_RATE) --duration $(SOAK_DURATION) --retention $(SOAK_RETENTION) \
		--retention-size $(SOAK_SIZE) --collectors $(SOAK_COLLECTORS) --db $(SOAK_DB)

# The false-positive budget at full length: an idle 30-minute `kernelsight run --collectors all`,
# then `kernelsight analyze`, must yield at most one finding (`make test-quiet` runs 120 s of it).
IDLE_SECONDS ?= 1800
idle-check: setup
	KS_IDLE_SECONDS=$(IDLE_SECONDS) $(VENV)/bin/pytest -q -s -p no:cacheprovider \
		tests/analysis/test_idle.py

# `make fleet FLEET_DURATION=300`: a local fleet on loopback (6-node Redis Cluster, PostgreSQL,
# FLEET_HOSTS simulated hosts at FLEET_RATE events/s each plus their /proc scraper, 2 ingesters);
# one Redis master is SIGKILLed half-way. Exit 0 only if every host and type is conserved with no
# duplicates (README "Scaling out"). Result also in logs/fleet/result.json.
FLEET_DURATION ?= 120
FLEET_RATE ?= 1000
FLEET_HOSTS ?= 3
fleet: setup
	$(KS) fleet --duration $(FLEET_DURATION) --rate $(FLEET_RATE) --hosts $(FLEET_HOSTS) \
		--log-dir logs/fleet --json logs/fleet/result.json
