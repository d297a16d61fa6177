# The two commands the README gives: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "flanscale needs $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# The demo finetunes base models that it pretrains first (T5 span corruption on the suite's
# text), so the report's finetune/pretrain FLOPs fraction is measured, not assumed. Base
# models already there are reused, and so are the sweep's finished cells.
DEMO_MODELS := tiny-1 tiny-2 tiny-3
DEMO_BASE   := $(abspath $(or $(FLANSCALE_HOME),.flanscale))/base

demo: $(STAMP)
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
