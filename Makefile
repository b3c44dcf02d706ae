# make demo : set up .venv (if missing), make a synthetic dataset, train/test/benchmark the
#             small models on CPU and print the results table.
# make test : set up .venv (if missing) and run the test suite.
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.defectkit-installed
PIP    := $(VPY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: setup demo test clean-demo

setup: $(STAMP)

$(STAMP): setup.py requirements.txt requirements-dev.txt constraints.txt
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing torch/torchvision (constraints.txt) and defectkit into $(VENV) ..."
	$(PIP) -r requirements.txt -r requirements-dev.txt
	$(PIP) --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VPY) tools/demo.py

test: $(STAMP)
	$(VPY) -m pytest -q

clean-demo:
	rm -rf data/demo_* work_dirs/demo
