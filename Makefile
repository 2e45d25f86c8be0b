# The two entry points a newcomer needs: `make serve` and `make test` (README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install serve test test-fast lint system-packages gpu-wheels

# What serving needs, and only that (`make serve`). torch first, pinned (requirements/torch.txt): an
# unpinned torch (or one pulled in by another package) is a multi-GB CUDA build. invisible-watermark
# (SDXL's watermark) last, without its declared dependencies: opencv-python is the GUI build (libGL,
# absent on headless machines) and torch is pinned here; it imports what the serve extra installs
# instead (opencv-python-headless, PyWavelets).
$(SERVE_STAMP): pyproject.toml requirements/torch.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/torch.txt
	$(BIN)/pip install --quiet -e ".[serve]"
	$(BIN)/pip install --quiet --no-deps invisible-watermark==0.2.0
	touch $@

# The tests' and benchmarks' tools on top (`make test`).
$(TEST_STAMP): $(SERVE_STAMP)
	$(BIN)/pip install --quiet -e ".[serve,test,bench]"
	touch $@

install: $(TEST_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/leap-ray serve $(CONFIG)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Tests use Debian's redis-server (the Redis job store), chromium (the pages in a real browser) and
# prometheus (promtool checks deploy/prometheus/, and a real Prometheus scrapes the local graph),
# installed when root. Prometheus without its recommends (node-exporter, smartmontools: not needed).
system-packages:
	@(command -v redis-server && command -v chromium && command -v chromedriver && command -v promtool) \
		>/dev/null || [ "$$(id -u)" != 0 ] || (apt-get update -qq && export DEBIAN_FRONTEND=noninteractive && \
		apt-get install -y -qq redis-server chromium chromium-driver >/dev/null && \
		apt-get install -y -qq --no-install-recommends prometheus >/dev/null)

# The in-process tier on both cores (one torch thread per worker), then the integration tier alone:
# its tests share one local Ray, which wants both cores.
test: $(TEST_STAMP) system-packages
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not integration" -n 2 $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

# The in-process tier without its few slow tests, on both cores (one torch thread per worker: two
# workers' thread pools on two cores would fight).
test-fast: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not integration and not slow" -n 2 $(PYTEST_ARGS)

# The wheels benchmarks/gpu_check needs on a bare offline GPU machine (Python 3.12, x86-64), into .whl/.
gpu-wheels: $(TEST_STAMP)
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl -r requirements/gpu-check-wheels.txt
