# convbridge: `make demo` runs the whole flow offline; `make test` runs every check.
# Both create (or reuse) the virtualenv in .venv and install what they need into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit clean servers

# Azurite (npm) and, when root, Debian's OpenSSH server: the local servers the Azure and SFTP
# flows run against. Both are installed by the project, never assumed present.
NODE_STAMP := node_modules/.installed
SSHD_STAMP := $(VENV)/.sshd

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[dev]'
	@touch $(STAMP)

$(NODE_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

$(SSHD_STAMP): $(STAMP)
	@if [ "$$(id -u)" = 0 ] && [ ! -x /usr/sbin/sshd ]; then \
		echo "installing openssh-server for the SFTP tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			openssh-server >/dev/null; \
	fi
	@touch $(SSHD_STAMP)

servers: $(NODE_STAMP) $(SSHD_STAMP)

demo: $(STAMP) servers
	$(BIN)/python -m devstack.demo $(if $(STORAGE),--storage $(STORAGE)) $(ARGS)

# lint first: a type error or a broken template fails faster than the integration tests
test: lint servers
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check shared functions devstack tests
	$(BIN)/mypy shared/convbridge
	$(BIN)/python -m devstack.template_check template.yaml

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
