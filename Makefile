# senet: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DALI_STAMP := $(VENV)/.dali-installed

# scripts/install_requirements.py picks the set for this machine and prints its choice on one line. On a
# GPU machine (nvidia-smi lists a GPU): paddlepaddle-gpu 3.3.1 from Paddle's own index, in the newest CUDA
# build that the driver runs (PyPI has no 3.x GPU build), and onnxruntime-gpu for that CUDA instead of
# onnxruntime. Elsewhere: requirements.txt as written, from PyPI. Overrides, e.g. for a Docker build
# that sees no GPU: `make install PADDLE=paddlepaddle-gpu==3.3.1 PADDLE_INDEX=https://www.paddlepaddle.org.cn/packages/stable/cu126/`
# (a venv already installed keeps its set: `make clean` first). DALI=1 adds NVIDIA DALI.
PADDLE       ?=
PADDLE_INDEX ?=
INSTALL_ARGS  = --out $(VENV)/requirements.resolved.txt $(if $(PADDLE),--paddle '$(PADDLE)') \
                $(if $(PADDLE_INDEX),--paddle-index '$(PADDLE_INDEX)')

.PHONY: install test lint demo sweep-demo bench vdl browser clean doctor

install: $(STAMP) $(if $(filter 1,$(DALI)),$(DALI_STAMP))

# The venv's own Python runs the script: it needs only the standard library, and pip then installs into the venv.
$(STAMP): requirements.txt scripts/install_requirements.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) scripts/install_requirements.py $(INSTALL_ARGS)
	touch $(STAMP)

# NVIDIA DALI (data.loader: dali): the build for the driver's CUDA (nvidia-dali-cuda120 or -cuda130; the
# CUDA 12 one on a CPU machine, where DALI's CPU pipelines run). Its own stamp, so that `make install
# DALI=1` over an installed venv adds it, and `make test` installs it for the DALI tests.
$(DALI_STAMP): $(STAMP)
	$(PY) scripts/install_requirements.py --dali $(INSTALL_ARGS)
	touch $(DALI_STAMP)

# PaddleClas's model code, the reference of tests/test_convert.py. Outside site-packages and without
# its dependencies, which pin numpy 1.24 and opencv-python against this set; its models need only paddle.
# Its own stamp, so that a venv made before this step existed gets it too.
PADDLECLAS_REF := $(VENV)/paddleclas_ref/.installed
$(PADDLECLAS_REF): $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/paddleclas_ref paddleclas==2.6.0
	touch $(PADDLECLAS_REF)

# Two pytest workers (pytest-xdist), one test file each at a time, the longest files first (the order
# is tests/conftest.py's): most tests wait on child processes that start Paddle, so two at once use
# 2 cores better. `$(PY) -m pytest -q tests` runs them in one process.
test: install $(PADDLECLAS_REF) $(DALI_STAMP) browser
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --max-worker-restart=0 tests

# The one-minute self-check to run first on a new machine and attach to a bug report: what the machine
# is, then PASS / FAIL / SKIP for every path it can run; writes doctor.json.
doctor: install
	$(PY) tools/doctor.py

lint: install
	$(PY) -m ruff check senet tools scripts tests
	$(PY) -m ruff format --check senet tools scripts tests

clean:
	rm -rf $(VENV) output .pytest_cache

# The offline demo: ResNet-20 vs SE-ResNet-20 on scikit-learn's digits, on the CPU.
DEMO_OUT := output/demo
demo: install
	PY=$(PY) DEMO_OUT=$(DEMO_OUT) VDL_PORT=$(VDL_PORT) bash scripts/demo.sh

# The demo with a modern recipe (mixup, CutMix, RandAugment; 15 epochs): ResNet-20 and SE-ResNet-20 side by
# side, one thread each, as `make demo`, then compared with its runs where they exist; docs/recipes.md.
.PHONY: demo-modern
demo-modern: install
	rm -rf $(DEMO_OUT)/resnet20_digits_modern $(DEMO_OUT)/se_resnet20_digits_modern
	$(PY) tools/train.py -c configs/demo/resnet20_digits_modern.yaml \
		-o output_dir=$(DEMO_OUT)/resnet20_digits_modern train.threads=1 & plain=$$!; \
	$(PY) tools/train.py -c configs/demo/se_resnet20_digits_modern.yaml \
		-o output_dir=$(DEMO_OUT)/se_resnet20_digits_modern train.threads=1 & se=$$!; \
	wait $$plain; a=$$?; wait $$se; b=$$?; test $$a -eq 0 -a $$b -eq 0
	$(PY) tools/compare.py --runs $(wildcard $(DEMO_OUT)/resnet20_digits $(DEMO_OUT)/se_resnet20_digits) \
		$(DEMO_OUT)/resnet20_digits_modern $(DEMO_OUT)/se_resnet20_digits_modern

# ResNet-20 and its SE, ECA and CBAM twins on the digits, 3 seeds each, 5 epochs, two runs at a time
# (about 20 minutes on 2 cores); docs/sweep.md.
sweep-demo: install
	PYTHON=$(PY) bash scripts/sweep.sh digits

# ResNet-50 vs SE-ResNet-50 (r = 2..32), ECA-, CBAM- and paddle.vision's ResNet-50: speed, memory, cost; docs/bench.md.
# 8 min 15 s on 2 idle (and slow) CPU cores, measured 2026-12-07; 8 min 48 s and 8 min 54 s with OpenVINO and int8 added
# (issue 26), 2-core Intel Xeon at load averages of 2 to 5 (docs/bench.md; budget: 10).
# `.venv/bin/python tools/bench.py --full` for the paper's sizes on a GPU.
bench: install
	$(PY) tools/bench.py

# VisualDL on everything under output/, local only, telemetry off. --language en: without it,
# pages answer HTTP 500 to clients that send no Accept-Language header.
VDL_PORT ?= 8040
vdl: install
	$(VENV)/bin/visualdl --logdir output --host 127.0.0.1 --port $(VDL_PORT) --disable-telemetry --language en

# Chromium (Debian's package) for the VisualDL browser test; installed when missing and we are root.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); } || \
	  echo "chromium is missing and cannot be installed without root: the VisualDL browser test will fail"
