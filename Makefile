# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.adadiff-installed

.PHONY: demo test install embedded-model benchmark known-answer mutation

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c constraints.txt -e ".[trainer,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m adadiff.trainer demo --force
	mkdir -p benchmarks/results
	cp outputs/demo/report.json benchmarks/results/demo_report.json
	cp outputs/demo/report.md benchmarks/results/demo_report.md

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

embedded-model: $(STAMP)
	for phase in vae unet export; do OMP_NUM_THREADS=2 $(PY) -m adadiff.trainer.embedded.train --phase $$phase --threads 2 || exit 1; done

benchmark: $(STAMP)
	mkdir -p benchmarks/results
	$(PY) benchmarks/policy_speed.py | tee benchmarks/results/policy_speed.txt
	$(PY) benchmarks/fit_speed.py | tee benchmarks/results/fit_speed.txt

known-answer: $(STAMP)
	mkdir -p benchmarks/results
	for objective in quality reinforce; do OMP_NUM_THREADS=1 $(PY) benchmarks/known_answer.py --threads 1 \
	  --objective $$objective --out benchmarks/results/known_answer_$$objective.json \
	  | tee benchmarks/results/known_answer_$$objective.txt || exit 1; done

# Mutation testing of the decision paths (policy/, trainer fit/evaluate/table, the hosts' step choice); slow, not
# part of CI. Results: benchmarks/results/mutation_<group>.txt, explained in benchmarks/results/mutation.md.
mutation: $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[mutation]"
	OMP_NUM_THREADS=1 $(PY) benchmarks/mutation.py $(GROUPS)
