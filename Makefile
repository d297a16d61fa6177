# The two commands the README gives: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# uv installs the pinned lock files (seconds where pip takes minutes; regenerate them with
# `uv pip compile`, see the README's Development section). torch's CPU build, which only the
# tests need, comes from the machine's local wheel folder where it has one.
UV_VERSION := 0.13.8
FIND_LINKS := $(wildcard /opt/wheels)
UV_INSTALL := $(BIN)/uv pip install --python $(BIN)/python -q $(if $(FIND_LINKS),--find-links $(FIND_LINKS))
# Two installs, two stamps: the demo needs the runtime dependencies only; the tests add the
# test extra (pytest, torch and transformers for the Hugging Face parity tests, ...).
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP         := $(VENV)/.installed

.PHONY: demo test test-all venv clean

# Each install step writes its seconds beside its stamp, for the demo's time budget.
$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "flanscale needs $(PYTHON)"; exit 1; }
	@start=$$(date +%s); $(PYTHON) -m venv $(VENV) && $(BIN)/pip install -qq uv==$(UV_VERSION) \
	  && echo $$(( $$(date +%s) - start )) > $(VENV)/.venv-seconds

$(RUNTIME_STAMP): pyproject.toml requirements/runtime.lock | $(BIN)/python
	@start=$$(date +%s); $(UV_INSTALL) -r requirements/runtime.lock && $(UV_INSTALL) --no-deps -e . \
	  && echo $$(( $$(date +%s) - start )) > $(VENV)/.runtime-seconds
	touch $(RUNTIME_STAMP)

$(STAMP): pyproject.toml requirements/test.lock $(RUNTIME_STAMP)
	$(UV_INSTALL) -r requirements/test.lock
	touch $(STAMP)

venv: $(STAMP)

# The demo finetunes base models that it pretrains first (T5 span corruption on the suite's
# text), so the report's finetune/pretrain FLOPs fraction is measured, not assumed. Base
# models already there are reused, and so are the sweep's finished cells. It ends with where
# its time went (bench/demo_budget.py; the report holds the same table).
DEMO_MODELS := $(shell sed -n 's/^models: \[\(.*\)\]/\1/p' sweeps/demo.yaml | tr -d ',')
DEMO_HOME   := $(abspath $(or $(FLANSCALE_HOME),.flanscale))
DEMO_BASE   := $(DEMO_HOME)/base

demo: $(RUNTIME_STAMP)
	@FLANSCALE_HOME=$(DEMO_HOME) $(BIN)/python bench/demo_budget.py record install \
	  $$(cat $(VENV)/.venv-seconds $(VENV)/.runtime-seconds 2>/dev/null | awk '{s+=$$1} END {print s+0}')
	@for m in $(DEMO_MODELS); do \
	  test -f $(DEMO_BASE)/$$m/pretrain.json || \
	  $(BIN)/flanscale pretrain --model $$m --out $(DEMO_BASE)/$$m --steps 200 --quiet || exit 1; \
	done
	@start=$$(date +%s); FLANSCALE_HOME=$(DEMO_HOME) $(BIN)/flanscale sweep run sweeps/demo.yaml \
	  $(foreach m,$(DEMO_MODELS),+init_checkpoint.$(m)=$(DEMO_BASE)/$(m)) \
	  && FLANSCALE_HOME=$(DEMO_HOME) $(BIN)/python bench/demo_budget.py record "sweep run" $$(( $$(date +%s) - start ))
	@start=$$(date +%s); FLANSCALE_HOME=$(DEMO_HOME) $(BIN)/flanscale report demo \
	  && FLANSCALE_HOME=$(DEMO_HOME) $(BIN)/python bench/demo_budget.py record report $$(( $$(date +%s) - start ))
	@FLANSCALE_HOME=$(DEMO_HOME) $(BIN)/python bench/demo_budget.py show demo --table

test: $(STAMP)
	$(BIN)/pytest -m "not gpu and not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/pytest -m "not gpu" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .flanscale .pytest_cache
