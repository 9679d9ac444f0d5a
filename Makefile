# One entry point for people and CI. `make serve` and `make test` each set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch + torchvision that work together here (the Qwen-VL processors need torchvision).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: setup browser run relevance test test-fast bench soak docs docs-serve clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# Debian's Chromium and ChromeDriver, for the web page's browser test (tests/test_web_page.py).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

# The main job: the ARR-COC service on the embedded testbed model (http://localhost:3000).
run: setup
	$(BIN)/bentoml serve service:ARRCOC --host 127.0.0.1

relevance: setup
	$(BIN)/arr-coc relevance

test: setup browser $(BIN)/.docs-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tests: no server, no training or evaluation jobs.
test-fast: setup
	$(BIN)/python -m pytest -m "not server and not slow" $(PYTEST_ARGS)

# Reliability: malformed corpus, 10 minutes of mixed load at concurrency 12 with a killed runner, schemathesis.
soak: setup
	$(BIN)/pip install --quiet "schemathesis>=4"
	$(BIN)/python benchmarks/soak.py --seconds 600 --concurrency 12 --fault --schemathesis --wandb hanging --sigterm

# The documentation site (mkdocs.yml, docs/): built strictly, so a broken link or anchor fails.
$(BIN)/.docs-installed: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $@

docs: $(BIN)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(BIN)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: setup
	$(BIN)/python benchmarks/bench_scorer.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
