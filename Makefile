# The two commands the README gives: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# Two installs, two stamps: the demo needs the runtime dependencies only; the tests add the
# test extra (pytest, torch and transformers for the Hugging Face parity tests, ...).
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP         := $(VENV)/.installed

.PHONY: demo test venv clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "flanscale needs $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(RUNTIME_STAMP)

$(STAMP): pyproject.toml $(RUNTIME_STAMP)
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# The demo finetunes base models that it pretrains first (T5 span corruption on the suite's
# text), so the report's finetune/pretrain FLOPs fraction is measured, not assumed. Base
# models already there are reused, and so are the sweep's finished cells.
DEMO_MODELS := tiny-1 tiny-2 tiny-3
DEMO_BASE   := $(abspath $(or $(FLANSCALE_HOME),.flanscale))/base

demo: $(RUNTIME_STAMP)
	@for m in $(DEMO_MODELS); do \
	  test -f $(DEMO_BASE)/$$m/pretrain.json || \
	  $(BIN)/flanscale pretrain --model $$m --out $(DEMO_BASE)/$$m --steps 200 --every 50 || exit 1; \
	done
	$(BIN)/flanscale sweep run sweeps/demo.yaml $(foreach m,$(DEMO_MODELS),+init_checkpoint.$(m)=$(DEMO_BASE)/$(m))
	$(BIN)/flanscale report demo

test: $(STAMP)
	$(BIN)/pytest -m "not gpu" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .flanscale .pytest_cache
