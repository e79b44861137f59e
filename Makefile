# senet: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# paddlepaddle-gpu on a machine where nvidia-smi sees a GPU, the CPU build otherwise.
# Override with e.g. `make install PADDLE=paddlepaddle-gpu==3.3.1`.
PADDLE ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; \
            then echo paddlepaddle-gpu==3.3.1; else echo paddlepaddle==3.3.1; fi)
STAMP  := $(VENV)/.installed

.PHONY: install test lint demo sweep-demo bench vdl browser clean

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	sed 's/^paddlepaddle==.*/$(PADDLE)/' requirements.txt > $(VENV)/requirements.resolved.txt
	$(PY) -m pip install -q -r $(VENV)/requirements.resolved.txt
	$(PY) -m pip check
	echo "$(PADDLE)" > $(STAMP)

# PaddleClas's model code, the reference of tests/test_convert.py. Outside site-packages and without
# its dependencies, which pin numpy 1.24 and opencv-python against this set; its models need only paddle.
# Its own stamp, so that a venv made before this step existed gets it too.
PADDLECLAS_REF := $(VENV)/paddleclas_ref/.installed
$(PADDLECLAS_REF): $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/paddleclas_ref paddleclas==2.6.0
	touch $(PADDLECLAS_REF)

# Two pytest workers (pytest-xdist), one test file each at a time: most tests wait on child processes
# that start Paddle, so two at once use 2 cores better (on 2 cores: 12 min instead of 15, 2026-12-07).
# `$(PY) -m pytest -q tests` runs them in one process.
test: install $(PADDLECLAS_REF) browser
	$(PY) -m pytest -q -n 2 --dist loadfile tests

lint: install
	$(PY) -m ruff check senet tools scripts tests

clean:
	rm -rf $(VENV) output .pytest_cache

# The offline demo: ResNet-20 vs SE-ResNet-20 on scikit-learn's digits, on the CPU.
DEMO_OUT := output/demo
demo: install
	PY=$(PY) DEMO_OUT=$(DEMO_OUT) VDL_PORT=$(VDL_PORT) bash scripts/demo.sh

# ResNet-20 and its SE, ECA and CBAM twins on the digits, 3 seeds each, 5 epochs, two runs at a time
# (about 20 minutes on 2 cores); docs/sweep.md.
sweep-demo: install
	PYTHON=$(PY) bash scripts/sweep.sh digits

# ResNet-50 vs SE-ResNet-50 (r = 2..32), ECA-, CBAM- and paddle.vision's ResNet-50: speed, memory, cost; docs/bench.md.
# 8 min 15 s on 2 idle (and slow) CPU cores, measured 2026-12-07 (docs/bench.md; budget: 10).
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
