# Two commands for a new user on a fresh machine (root or sudo, no GPU needed):
#   make demo   set up, then train the demo ViT on Fashion-MNIST and print its test accuracy
#   make test   set up, then run the test suite (benchmarks are skipped; see README)
# Both are idempotent: a second run installs nothing.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastvit-installed
APT_PACKAGES := libopencv-dev libturbojpeg0-dev pkg-config dataset-fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_ARGS ?= --arch vit_tiny_p8 --dataset fashion-mnist --epochs 3 --batch-size 128 --lr 2e-3 --warmup-epochs 0.5 --augment none --drop-path 0 --out runs/demo

.PHONY: demo test bench lint system setup gpu-bundle

# Passive OpenMP waiting: spinning threads collapse throughput when anything else shares the cores.
demo: setup
	rm -rf runs/demo
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/fastvit train $(DEMO_ARGS)

test: setup
	$(PY) -m pytest tests -q --benchmark-skip

bench: setup
	mkdir -p runs
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-json runs/bench.json
	$(PY) -m benchmarks.report runs/bench.json
	$(PY) -m benchmarks.attention
	$(PY) -m benchmarks.drloc

# The folder to carry to a lent GPU machine (fastvit and ffcv wheels for its Python 3.12, OpenCV's libraries);
# there: bash benchmarks/gpu_run.sh (see README, "GPU check").
gpu-bundle: setup
	$(PY) -m benchmarks.gpu_bundle

lint: setup
	$(VENV)/bin/ruff check .

setup: system $(STAMP)

# System packages: the ffcv build needs OpenCV and libjpeg-turbo headers; the demo data is a Debian package.
system:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)
