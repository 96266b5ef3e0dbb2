# Two commands set everything up on a fresh machine:
#   make demo   prepare the bundled sample corpus -> verify it -> a short CPU training run
#   make test   the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STEPPACK = $(VENV)/bin/steppack
DEMO   ?= runs/demo

.PHONY: setup test demo bench clean

# torch==2.13.0 first: that pin is a CPU build on local disk; an unpinned torch would pull a
# multi-GB CUDA build. The project's own range (torch>=2.3,<3) is then already satisfied.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,gcp,s3,test]'
	touch $@

setup: $(VENV)/.installed

# Two pytest workers, each running whole test files (module fixtures are built once): most tests
# wait on process start-up (Beam, torchrun), so two overlap well even on 2 cores (343 tests:
# 11 min 49 s serially, 6 min 24 s so). PYTEST_FLAGS= runs them serially.
PYTEST_FLAGS ?= -n 2 --dist loadfile

test: setup
	$(PY) -m pytest -q $(PYTEST_FLAGS)

# The sample at 128-token rows, 8 rows per step (304 steps), so that the tiny model (whose 102,400-word
# output layer dominates its cost on a CPU) trains 12 steps in well under a minute.
demo: setup
	rm -rf $(DEMO)
	$(STEPPACK) prepare --config samples/job.toml --output $(DEMO)/shards --seq-len 128 --rows-per-step 8 --workers 2
	$(STEPPACK) shards verify $(DEMO)/shards
	$(STEPPACK) shards stats $(DEMO)/shards
	$(STEPPACK) train --data $(DEMO)/shards --model tiny --context 128 --steps 12 --micro-batch 8 \
		--warmup-steps 2 --max-lr 3e-3 --ckpt-dir $(DEMO)/ckpt --metrics $(DEMO)/metrics.jsonl --seed 0

bench: setup
	$(PY) bench/read_steps.py
	$(PY) bench/train_data.py
	$(PY) bench/prepare.py --multiples 4,16 --repeats 2

clean:
	rm -rf $(VENV) runs *.egg-info
