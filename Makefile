# convbridge: `make demo` runs the whole flow offline; `make test` runs every check.
# Both create (or reuse) the virtualenv in .venv and install what they need into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit clean servers bench deploy-tools check-template cdk-synth docs

# Azurite (npm) and, when root, Debian's OpenSSH server, shellcheck and Chromium: the local
# servers the Azure and SFTP flows run against, the infra script check, and the headless
# browser the status page is checked in. All are installed by the project, never assumed
# present; without root the SFTP server is asyncssh (a dev extra).
NODE_STAMP := node_modules/.installed
SSHD_STAMP := $(VENV)/.sshd
SHELLCHECK_STAMP := $(VENV)/.shellcheck
CHROMIUM_STAMP := $(VENV)/.chromium

# $(1): the Debian packages, $(2): a command that succeeds when they are there, $(3): why.
define apt_install
	@if [ "$$(id -u)" = 0 ] && ! { $(2); }; then \
		echo "installing $(1) ($(3))"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			$(1) >/dev/null; \
	fi
endef

$(STAMP): pyproject.toml tests/plugins/convbridge_toy/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[dev]'
	# a fifth provider and storage added through entry points only, run by tests/contract
	$(BIN)/python -m pip install --quiet --progress-bar off -e tests/plugins/convbridge_toy
	@touch $(STAMP)

$(NODE_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

$(SSHD_STAMP): $(STAMP)
	$(call apt_install,openssh-server,test -x /usr/sbin/sshd,the SFTP server)
	@touch $(SSHD_STAMP)

$(SHELLCHECK_STAMP): $(STAMP)
	$(call apt_install,shellcheck,command -v shellcheck >/dev/null,the infra script check)
	@touch $(SHELLCHECK_STAMP)

$(CHROMIUM_STAMP): $(STAMP)
	$(call apt_install,chromium,command -v chromium >/dev/null,the status page check)
	@touch $(CHROMIUM_STAMP)

# Everything the tests and benchmarks run against.
servers: $(NODE_STAMP) $(SSHD_STAMP) $(SHELLCHECK_STAMP) $(CHROMIUM_STAMP)

# The demo needs only its storage's server: S3 (the default) and GCS run from the virtualenv.
DEMO_SERVERS_azure_blob := $(NODE_STAMP)
DEMO_SERVERS_sftp := $(SSHD_STAMP)

# Deployment tools, offline: the SAM CLI and aws-cdk-lib in their own virtualenv (their pins
# clash with moto's and Flask's), the CDK CLI from package.json. About 40 s and 770 MB once.
DEPLOY_VENV ?= .venv-deploy
DEPLOY_BIN := $(DEPLOY_VENV)/bin
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed
SAM_CLI_VERSION ?= 1.170.0
DEPLOY_ENV := AWS_DEFAULT_REGION=us-east-1 SAM_CLI_TELEMETRY=0 CDK_DISABLE_VERSION_CHECK=1 \
	JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20
TEMPLATE ?= template.yaml

$(DEPLOY_STAMP): infra/cdk/requirements.txt
	@test -x $(DEPLOY_BIN)/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_BIN)/python -m pip install --quiet --upgrade pip
	$(DEPLOY_BIN)/python -m pip install --quiet --progress-bar off \
		"aws-sam-cli==$(SAM_CLI_VERSION)" -r infra/cdk/requirements.txt
	@touch $(DEPLOY_STAMP)

deploy-tools: $(DEPLOY_STAMP) $(NODE_STAMP)

# The SAM template: translated and linted as written and with every option on, then `sam
# validate`. `make check-template TEMPLATE=other.yaml` checks another one.
check-template: $(STAMP) $(DEPLOY_STAMP)
	$(BIN)/python -m devstack.template_check $(TEMPLATE)
	$(DEPLOY_ENV) $(DEPLOY_BIN)/sam validate --template $(TEMPLATE)

# The CDK app synthesized offline (layers not built: that is `sam build`'s and the tests' job).
cdk-synth: deploy-tools
	cd infra/cdk && $(DEPLOY_ENV) $(CURDIR)/node_modules/.bin/cdk synth -q --no-notices \
		--app "$(CURDIR)/$(DEPLOY_BIN)/python app.py" -c convbridge:bundleLayers=false \
		-o $(CURDIR)/cdk.out

# docs/flow.png from docs/flow.dot (Debian's graphviz, installed here only, never for tests).
docs: docs/flow.png

docs/flow.png: docs/flow.dot
	@command -v dot >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; }
	dot -Tpng -Gdpi=110 -o $@ $<

demo: $(STAMP) $(DEMO_SERVERS_$(STORAGE))
	$(BIN)/python -m devstack.demo $(if $(STORAGE),--storage $(STORAGE)) $(ARGS)

# lint first: a type error or a broken template fails faster than the integration tests
test: lint servers
	$(BIN)/python -m pytest -q

# benchmarks print their figures and write BENCHMARKS.md; they are not timed tests
bench: $(STAMP) servers
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[dev,bench]'
	POWERTOOLS_LOG_LEVEL=WARNING POWERTOOLS_METRICS_DISABLED=true $(BIN)/python -m bench.run $(ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP) deploy-tools
	$(BIN)/ruff check shared functions devstack tests infra
	$(BIN)/mypy shared/convbridge
	$(BIN)/lint-imports
	@$(MAKE) --no-print-directory check-template TEMPLATE=template.yaml
	@$(MAKE) --no-print-directory cdk-synth

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .import_linter_cache $(DEPLOY_VENV) cdk.out .aws-sam
