# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
SCANNER_VENV := .venv-scanner
TRUFFLEHOG_VERSION := 3.0.10
BIN := $(VENV)/bin

.PHONY: demo test bench soak lint format tools scanner clean system-tools deploy-tools npm-fixtures

demo: tools
	$(BIN)/python -m demo

test: tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# Every benchmark of bench/, one table, also written to bench/RESULTS.md (about 6 minutes on 2 cores).
bench: tools
	$(BIN)/python -m bench

# The load run at full size (tests/test_load.py; `make test` runs 200 jobs, 3 SIGKILLs, 2 SIGTERMs):
# 600 jobs over 2 workers, 10 SIGKILLs and 5 SIGTERMs of workers at random moments, each worker
# replaced; then its figures (duration, jobs/s, recovery, results, lost, pushed twice), pass or fail.
SOAK_JOBS ?= 600
SOAK_KILLS ?= 10
SOAK_TERMS ?= 5
SOAK_SEED ?= 11

soak: tools
	@mkdir -p .work && rm -f .work/soak.txt
	@CODEWORKER_LOAD_JOBS=$(SOAK_JOBS) CODEWORKER_LOAD_KILLS=$(SOAK_KILLS) CODEWORKER_LOAD_TERMS=$(SOAK_TERMS) \
	  CODEWORKER_LOAD_SEED=$(SOAK_SEED) CODEWORKER_LOAD_FIGURES=.work/soak.txt $(BIN)/pytest tests/test_load.py -q; \
	  status=$$?; cat .work/soak.txt 2>/dev/null; exit $$status

lint: $(BIN)/.installed
	$(BIN)/ruff check .

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

tools: $(BIN)/.installed scanner system-tools deploy-tools npm-fixtures

$(BIN)/.installed: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# trufflehog3 pins old dependencies and is GPL-2.0: it lives in its own virtualenv and runs as a
# subprocess, never imported.
scanner: $(SCANNER_VENV)/bin/trufflehog3

$(SCANNER_VENV)/bin/trufflehog3:
	$(PYTHON) -m venv $(SCANNER_VENV)
	$(SCANNER_VENV)/bin/pip install --quiet trufflehog3==$(TRUFFLEHOG_VERSION)

# redis-server, git, bubblewrap (the sandbox), slirp4netns and ip (setup's isolated network) are
# system packages: installed with apt-get when we are root, otherwise one line says what is missing.
system-tools:
	@for tool in redis-server git bwrap slirp4netns ip; do \
	  command -v $$tool >/dev/null && continue; \
	  pkg=$$tool; [ $$tool = bwrap ] && pkg=bubblewrap; [ $$tool = ip ] && pkg=iproute2; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $$pkg"; apt-get install -y -qq $$pkg >/dev/null || { apt-get update -qq && apt-get install -y -qq $$pkg >/dev/null; }; \
	  else echo "missing: $$tool (install it: sudo apt-get install $$pkg)"; exit 1; fi; \
	done

# What tests/test_deploy_*.py check deploy/ with (they skip, saying so, what is missing): promtool,
# taken out of Debian's prometheus package without installing (and starting) the server, and a
# compose client. hadolint and the Kubernetes schemas come with the test extra.
PROMTOOL := .work/tools/prometheus/usr/bin/promtool

deploy-tools: $(PROMTOOL)
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing docker-compose"; \
	  apt-get install -y -qq docker-compose >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null 2>&1; } \
	  || echo "could not install docker-compose: tests/test_deploy_compose.py skips its check"; \
	else echo "missing: docker-compose (sudo apt-get install docker-compose); tests/test_deploy_compose.py skips its check"; fi

$(PROMTOOL):
	@command -v promtool >/dev/null && exit 0; \
	rm -rf .work/tools/prometheus && mkdir -p .work/tools && cd .work/tools && \
	{ apt-get download prometheus >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }; } && \
	dpkg-deb -x prometheus_*.deb prometheus && rm -f prometheus_*.deb && echo "extracted promtool to $(PROMTOOL)" \
	|| echo "could not get promtool (apt-get download prometheus): tests/test_deploy_monitoring.py skips the Prometheus checks"

# The TypeScript project that tests/test_node_vitest.py runs (tests/fixtures/vitest_project) installs
# Vitest with `npm ci --offline` from this npm cache, filled once here from its lock file (with the
# network, like the scanner's pip install); the tests then need none. Node.js and npm come from
# Debian when missing and we are root. The stamp holds the lock file's hash: a test finding another
# one says the cache is stale.
NPM_CACHE := .work/npm-cache
VITEST_PROJECT := tests/fixtures/vitest_project

npm-fixtures: $(NPM_CACHE)/.complete

$(NPM_CACHE)/.complete: $(VITEST_PROJECT)/package-lock.json
	@command -v npm >/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing nodejs npm"; apt-get install -y -qq nodejs npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }; \
	else echo "missing: npm (install Node.js 20.15 or later, with npm)"; exit 1; fi
	rm -rf $(NPM_CACHE) .work/npm-build && mkdir -p .work/npm-build
	cp $(VITEST_PROJECT)/package.json $(VITEST_PROJECT)/package-lock.json .work/npm-build/
	cd .work/npm-build && npm ci --cache $(abspath $(NPM_CACHE)) --ignore-scripts --no-audit --no-fund --loglevel=error
	rm -rf .work/npm-build $(NPM_CACHE)/_logs
	sha256sum $(VITEST_PROJECT)/package-lock.json | cut -d' ' -f1 > $@
	@echo "npm cache for $(VITEST_PROJECT): $$(find $(NPM_CACHE)/_cacache/content-v2 -type f | wc -l) tarballs, $$(du -sh $(NPM_CACHE) | cut -f1)"

clean:
	rm -rf $(VENV) $(SCANNER_VENV) *.egg-info .work
