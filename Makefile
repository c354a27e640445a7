# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create the virtual environment themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := runs/demo

.PHONY: setup assets test test-all lint format demo bench clean

# ai2-olmo-core is a test-only peer (checkpoint interop). Its cached-path dependency pins
# huggingface-hub<2, which transformers 5 cannot share, so it is installed without resolving;
# what the tests import of it needs only these five packages and the dev extra.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps ai2-olmo-core==3.0.0 cached-path==1.8.10 \
		dataclass-extensions==0.5.0 bettermap==1.3.1 importlib_resources==7.1.0
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

# The OLMo 2 recipe in miniature (see README): resumable, so a rerun skips what is done.
demo: assets
	$(BIN)/olmo2 recipe configs/recipe/demo.yaml
	@echo "report: $(DEMO)/report.md"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train_step.py
	$(BIN)/python benchmarks/bench_trainer.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_tokenize.py
	$(BIN)/python benchmarks/bench_loader.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
