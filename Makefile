# leadflow: `make run` starts everything on embedded defaults, `make test` runs the checks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install browser sdks run test lint typecheck pytest schemas bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# Headless Chromium for the browser tests (tests/test_trackers_browser.py), from Debian's packages.
# Installed only when missing, and only where apt-get can run (root); elsewhere the browser
# tests skip with the reason, unless LEADFLOW_REQUIRE_BROWSER=1 (as .ci/run sets).
browser:
	@if command -v chromium >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "chromium is missing and apt-get cannot install it here: browser tests will skip"; \
	fi

# The tracking SDKs the browser tests load (Segment's analytics.js, RudderStack's and Snowplow's
# JavaScript trackers): installed from the npm registry exactly as tests/browser/package-lock.json
# pins them (npm ci), and bundled into local scripts with esbuild; rebuilt only when the lock file
# or the build changes. Only where node and npm exist: elsewhere the tracker browser tests skip
# with the reason, unless LEADFLOW_REQUIRE_BROWSER=1 (as .ci/run sets).
SDK_DIR := tests/browser
SDK_BUNDLES := $(SDK_DIR)/dist/BUILT

sdks:
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory $(SDK_BUNDLES); \
	else \
		echo "node and npm are missing: the tracker SDK browser tests will skip"; \
	fi

$(SDK_BUNDLES): $(SDK_DIR)/package.json $(SDK_DIR)/package-lock.json $(SDK_DIR)/build.mjs \
		$(wildcard $(SDK_DIR)/src/*.js)
	cd $(SDK_DIR) && npm ci --no-audit --no-fund --loglevel=error && node build.mjs

run: install
	$(BIN)/leadflow dev $(ARGS)

test: install browser sdks lint typecheck pytest

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy services scoring_service handoff_service sla_monitor schemas tests

pytest: install
	$(BIN)/pytest

schemas: install
	$(BIN)/python -m schemas.registry

clean:
	rm -rf $(VENV) .leadflow .pytest_cache .mypy_cache .ruff_cache $(SDK_DIR)/node_modules $(SDK_DIR)/dist
