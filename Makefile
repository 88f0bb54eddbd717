# Two commands on a fresh machine: `make quickstart` and `make test`.
# Everything is installed into a virtual environment in $(VENV); versions are pinned
# by requirements/constraints.txt (the set tested on the project's machines), while
# pyproject.toml states the ranges the package supports elsewhere.

PYTHON      ?= python3
VENV        ?= .venv
CONSTRAINTS ?= requirements/constraints.txt
PYTEST_ARGS ?=
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.robustfeat-installed

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install quickstart test test-cuda bench lock clean help

help:
	@echo "make quickstart  set up, then run the quickstart study (fine-tune, evaluate, report; about 10 min)"
	@echo "make test        set up, then run the full test suite"
	@echo "make bench       training-step and merged-inference benchmark vs PEFT LoRA"
	@echo "make clean       remove the virtual environment"

FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
REPORT_PACKAGES := chromium chromium-driver poppler-utils

$(STAMP): pyproject.toml $(CONSTRAINTS) requirements/no-deps.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[dev]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/no-deps.txt
	@if [ ! -f $(FASHION_MNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	  else \
	    echo "note: fashion-mnist needs Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist)"; \
	  fi; \
	fi
	@missing=""; for t in chromium chromedriver pdftoppm; do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium, chromium-driver and poppler-utils (the report tests use them)"; \
	    (apt-get install -y -q $(REPORT_PACKAGES) || (apt-get update -q && apt-get install -y -q $(REPORT_PACKAGES))) >/dev/null; \
	  else \
	    echo "note: the report tests need: sudo apt-get install $(REPORT_PACKAGES)"; \
	  fi; \
	fi
	@touch $@

install: $(STAMP)

QUICKSTART_OUT ?= runs/quickstart

# The quickstart study: all-MiniLM-L6-v2 on Rotten Tomatoes and EfficientNet-Lite0 on
# Fashion-MNIST, each with lora, lorfa and vefa beside the frozen base (linear); evaluated on
# OOD sets, corruptions, forgetting probes and drift; report.html and report.pdf at the end.
# About 10 minutes on 2 CPU cores; rerun to resume.
quickstart: $(STAMP)
	$(BIN)/robustfeat quickstart --out $(QUICKSTART_OUT)

test: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; the suite is misconfigured" >&2; fi; \
	exit $$rc

# On a machine with a CUDA GPU: the adapter contract, the PEFT parity and the corruption tests
# with their tiny models and tensors on the GPU.
test-cuda: $(STAMP)
	ROBUSTFEAT_TEST_DEVICE=cuda $(BIN)/python -m pytest tests/test_contract.py tests/test_parity_peft.py \
	  tests/test_corruptions.py $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_adapters.py

# Re-pin after a deliberate upgrade: freeze the working environment into the constraints.
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^robustfeat' > $(CONSTRAINTS)

clean:
	rm -rf $(VENV)
