# convbridge: `make demo` runs the whole flow offline; `make test` runs every check.
# Both create (or reuse) the virtualenv in .venv and install what they need into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m devstack.demo

# lint first: a type error or a broken template fails faster than the integration tests
test: lint
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check shared functions devstack tests
	$(BIN)/mypy shared/convbridge
	$(BIN)/python -m devstack.template_check template.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
