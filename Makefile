# halpc: `make demo` sets everything up and runs the main job; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := build/demo

.PHONY: setup system-deps arm64-env demo demo-adaptive demo-sources demo-int8 test test-fast bench clean

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

# The emulated ARM64 board (Debian arm64 under qemu-user, Cortex-A72, this venv's onnxruntime
# as the aarch64 wheel) that `halpc verify` and tests/test_targets.py run aarch64 bundles in.
# Built once (about 5 minutes, ~500 MB) in /var/cache/halpc/arm64; later runs only check it.
arm64-env: setup
	@if [ "$$(id -u)" = 0 ]; then bash tools/arm64/build-env.sh; \
	else echo "note: the emulated ARM64 environment needs root: run 'sudo make arm64-env' or the ARM64 tests are skipped"; fi

# Build VGG-16 (seeded weights), show its trunk, plan and split it over three local devices,
# prove it exact in one process, then run it for real: two stub processes on 127.0.0.1 serve
# the host over TCP, every output checked against the unsplit model.
demo: setup
	mkdir -p $(DEMO)
	$(BIN)/python examples/models.py vgg16 -o $(DEMO)/vgg16.onnx
	$(BIN)/halpc inspect $(DEMO)/vgg16.onnx
	$(BIN)/halpc profile $(DEMO)/vgg16.onnx -o $(DEMO)/profile.json --heights 1,4,16,all --repeat 3 -q
	$(BIN)/python examples/local_cluster.py --profile $(DEMO)/profile.json -o $(DEMO)/cluster.toml
	$(BIN)/halpc plan $(DEMO)/vgg16.onnx --cluster $(DEMO)/cluster.toml --report $(DEMO)/plan.html
	$(BIN)/halpc compile $(DEMO)/vgg16.onnx --cluster $(DEMO)/cluster.toml -o $(DEMO)/bundle
	$(BIN)/halpc verify $(DEMO)/bundle --seeds 2
	$(BIN)/halpc run $(DEMO)/bundle --spawn --check --tasks 5 --in-flight 1 --report $(DEMO)/run.html

# MobileNet-V1 at four widths in one bundle, planned for 10, 100 and 1000 Mbit/s: simulate a changing
# link against a 40 ms deadline, then run it, the host choosing variant and plan per task.
ADAPT := build/adaptive
WIDTHS := 025:50.6 050:63.7 075:68.4 100:70.6
demo-adaptive: setup
	mkdir -p $(ADAPT)
	for w in $(WIDTHS); do $(BIN)/python examples/models.py mobilenet_v1_$${w%%:*} -o $(ADAPT)/mobilenet_v1_$${w%%:*}.onnx; done
	$(BIN)/halpc compile $(foreach w,$(WIDTHS),--variant $(ADAPT)/mobilenet_v1_$(firstword $(subst :, ,$(w))).onnx:$(lastword $(subst :, ,$(w)))) \
		--bandwidths 10,100,1000 --deadline-ms 40 --cluster examples/cluster_local3.toml -o $(ADAPT)/bundle
	$(BIN)/halpc verify $(ADAPT)/bundle
	$(BIN)/halpc simulate $(ADAPT)/bundle --trace ge:good=1000,bad=10,p=0.3,r=0.3,step=2,duration=60,seed=3 \
		--report $(ADAPT)/simulate.html
	$(BIN)/halpc run $(ADAPT)/bundle --spawn --check --tasks 12 --in-flight 1 --period-ms 40

# Two cameras sharing two helpers: compare the matching with its baselines, compile one bundle for
# all four devices, prove both cameras' plans exact, simulate them, and run both streams at once.
SOURCES := build/sources
demo-sources: setup
	mkdir -p $(SOURCES)
	$(BIN)/python examples/models.py mobilenet_v1_100 --size 128 -o $(SOURCES)/mobilenet_v1_100.onnx
	$(BIN)/python examples/models.py resnet18 --size 128 -o $(SOURCES)/resnet18.onnx
	cp examples/cluster_sources.toml $(SOURCES)/cluster.toml
	$(BIN)/halpc plan --cluster $(SOURCES)/cluster.toml --report $(SOURCES)/plan.html
	$(BIN)/halpc compile --cluster $(SOURCES)/cluster.toml -o $(SOURCES)/bundle
	$(BIN)/halpc verify $(SOURCES)/bundle
	$(BIN)/halpc simulate $(SOURCES)/bundle --report $(SOURCES)/simulate.html
	$(BIN)/halpc run $(SOURCES)/bundle --spawn --check --tasks 20

# VGG-16 quantized by ONNX Runtime's own quantize_static (uint8 activations, int8 weights): split
# over the three local devices, proved exact, run for real, beside the float model's bundle.
INT8 := build/int8
demo-int8: setup
	mkdir -p $(INT8)
	$(BIN)/python examples/models.py vgg16 --size 128 -o $(INT8)/vgg16.onnx
	$(BIN)/python examples/quantize.py $(INT8)/vgg16.onnx -o $(INT8)/vgg16_int8.onnx
	$(BIN)/halpc plan $(INT8)/vgg16_int8.onnx --cluster examples/cluster_local3.toml
	$(BIN)/halpc compile $(INT8)/vgg16_int8.onnx --cluster examples/cluster_local3.toml -o $(INT8)/bundle
	$(BIN)/halpc compile $(INT8)/vgg16.onnx --cluster examples/cluster_local3.toml -o $(INT8)/bundle-float
	$(BIN)/halpc verify $(INT8)/bundle
	$(BIN)/halpc run $(INT8)/bundle --spawn --check --tasks 5 --in-flight 1
	$(BIN)/halpc run $(INT8)/bundle-float --spawn --check --tasks 5 --in-flight 1

# Everything, slow tests included (what CI runs). -rs prints why each skipped test skipped; as
# root, a skipped emulated-cluster or Chromium test fails instead (tests/conftest.py).
test: setup system-deps arm64-env
	$(BIN)/python -m pytest -q -rs --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -rs -m "not slow"

bench: setup
	$(BIN)/python benchmarks/compile_time.py
	$(BIN)/python benchmarks/strategies.py
	$(BIN)/python benchmarks/cost_vs_measured.py
	$(BIN)/python benchmarks/distributed.py
	$(BIN)/python benchmarks/adaptive.py
	$(BIN)/python benchmarks/sources.py
	$(BIN)/python benchmarks/targets.py
	$(BIN)/python benchmarks/int8.py

clean:
	rm -rf build $(VENV) .pytest_cache
