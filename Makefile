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

demo: $(STAMP)
	$(BIN)/flanscale sweep run sweeps/demo.yaml
	$(BIN)/flanscale report demo

test: $(STAMP)
	$(BIN)/pytest -m "not gpu" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .flanscale .pytest_cache
