# senet: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# paddlepaddle-gpu on a machine where nvidia-smi sees a GPU, the CPU build otherwise.
# Override with e.g. `make install PADDLE=paddlepaddle-gpu==3.3.1`.
PADDLE ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; \
            then echo paddlepaddle-gpu==3.3.1; else echo paddlepaddle==3.3.1; fi)
STAMP  := $(VENV)/.installed

.PHONY: install test lint demo bench vdl clean

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	sed 's/^paddlepaddle==.*/$(PADDLE)/' requirements.txt > $(VENV)/requirements.resolved.txt
	$(PY) -m pip install -q -r $(VENV)/requirements.resolved.txt
	$(PY) -m pip check
	echo "$(PADDLE)" > $(STAMP)

test: install
	$(PY) -m pytest -q tests

lint: install
	$(PY) -m ruff check senet tools scripts tests

clean:
	rm -rf $(VENV) output .pytest_cache
