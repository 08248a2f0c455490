# The two entry points: `make demo` (install, run the example on the embedded stack)
# and `make test` (install, run every check and test). Both work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
PROTOC_VENV ?= .venv-protoc
NODE_PREFIX ?= .node

.PHONY: install demo test protos bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml streamed_job/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./streamed_job -e '.[dev]'
	touch $@

# s3rver, the S3 server the tests start for what moto does not check (credentials, presigned URLs' expiry)
$(NODE_PREFIX)/.installed:
	npm install --prefix $(NODE_PREFIX) s3rver@3.7.1 --no-audit --no-fund --silent
	touch $@

demo: install
	VENV=$(VENV) bash examples/run_demo.sh

$(PROTOC_VENV)/.installed: proto/requirements.txt
	python3 -m venv $(PROTOC_VENV)
	$(PROTOC_VENV)/bin/python -m pip install -q -r proto/requirements.txt
	touch $@

protos: $(PROTOC_VENV)/.installed
	$(PROTOC_VENV)/bin/python proto/generate.py

test: install $(PROTOC_VENV)/.installed $(NODE_PREFIX)/.installed
	$(PROTOC_VENV)/bin/python proto/generate.py && git diff --exit-code --stat -- proto/ || { echo "generated code is stale: run make protos and commit" >&2; exit 1; }
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

bench: install $(NODE_PREFIX)/.installed
	$(PY) bench/scheduling.py
	$(PY) bench/throughput.py
	$(PY) bench/logs.py
	$(PY) bench/cellar.py
	$(PY) bench/layout.py
	$(PY) bench/gui.py
	$(PY) bench/kubernetes_jobs.py
	$(PY) bench/ha.py
