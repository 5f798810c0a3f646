# leadflow: `make run` starts everything on embedded defaults, `make test` runs the checks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install browser run test lint typecheck pytest schemas bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# Headless Chromium for the browser tests (tests/test_browser.py), from Debian's packages.
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

run: install
	$(BIN)/leadflow dev $(ARGS)

test: install browser lint typecheck pytest

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy services scoring_service handoff_service sla_monitor schemas tests

pytest: install
	$(BIN)/pytest

schemas: install
	$(BIN)/python -m schemas.registry

clean:
	rm -rf $(VENV) .leadflow .pytest_cache .mypy_cache .ruff_cache
