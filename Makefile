# leadflow: `make run` starts everything on embedded defaults, `make test` runs the checks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint typecheck pytest schemas bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/leadflow dev $(ARGS)

test: install lint typecheck pytest

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
