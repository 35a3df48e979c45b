# halpc: `make demo` sets everything up and runs the main job; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := build/demo

.PHONY: setup system-deps demo test test-fast bench clean

$(BIN)/halpc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/halpc

# System packages some tests need: headless Chromium renders the HTML reports; iproute2 (ip, tc)
# builds the emulated cluster of network namespaces.
system-deps:
	@if command -v tc >/dev/null 2>&1 && command -v ip >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2; \
	else echo "note: iproute2 is missing and you are not root: the emulated-cluster tests are skipped"; fi
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "note: chromium is not installed and you are not root: run 'sudo apt-get install chromium' or the HTML screenshot test is skipped"; fi

# Build VGG-16 (seeded weights), show its trunk, plan and split it over three local devices,
# prove it exact in one process, then run it for real: two stub processes on 127.0.0.1 serve
# the host over TCP, every output checked against the unsplit model.
demo: setup
	mkdir -p $(DEMO)
	$(BIN)/python examples/models.py vgg16 -o $(DEMO)/vgg16.onnx
	$(BIN)/halpc inspect $(DEMO)/vgg16.onnx
	$(BIN)/halpc plan $(DEMO)/vgg16.onnx --cluster examples/cluster_local3.toml --report $(DEMO)/plan.html
	$(BIN)/halpc compile $(DEMO)/vgg16.onnx --cluster examples/cluster_local3.toml -o $(DEMO)/bundle
	$(BIN)/halpc verify $(DEMO)/bundle --seeds 2
	$(BIN)/halpc run $(DEMO)/bundle --spawn --check --tasks 5 --in-flight 1 --report $(DEMO)/run.html

# Everything, slow tests included (what CI runs).
test: setup system-deps
	$(BIN)/python -m pytest -q --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/compile_time.py
	$(BIN)/python benchmarks/strategies.py
	$(BIN)/python benchmarks/cost_vs_measured.py
	$(BIN)/python benchmarks/distributed.py

clean:
	rm -rf build $(VENV) .pytest_cache
