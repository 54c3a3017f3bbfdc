# Headwater's front door. `make demo` starts Headwater and runs a short demo; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PACKAGES := libs/events libs/storage libs/hwctl services/fs services/triggers services/scheduler services/builder services/worker
STAMP  := $(VENV)/.installed
# Test selection and parallelism; override e.g. `make test PYTEST_ARGS="-m unit"`.
PYTEST_ARGS ?=

.PHONY: install bytecode up down status demo test lint format bench clean

install: $(STAMP)

$(STAMP): Makefile requirements-dev.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt $(addprefix -e ,$(PACKAGES))
	$(MAKE) --no-print-directory bytecode
	touch $(STAMP)

# pip precompiles what it installs, but not editable packages; with PYTHONDONTWRITEBYTECODE set
# (as on our machines) every hwctl call would then compile its modules again (~10 ms).
bytecode:
	$(BIN)/python -m compileall -q libs services >/dev/null

up: install
	$(BIN)/hwctl up

down: install
	$(BIN)/hwctl down

status: install
	$(BIN)/hwctl status

demo: install
	$(BIN)/hwctl up
	@echo
	@echo '$$ hwctl create repo images -d "raw images"'
	@$(BIN)/hwctl inspect repo images >/dev/null 2>&1 || $(BIN)/hwctl create repo images -d "raw images"
	@echo '$$ hwctl put file -r images@staging:/docs -f docs'
	@$(BIN)/hwctl put file -r images@staging:/docs -f docs
	@echo '$$ hwctl create branch images@master --head staging'
	@$(BIN)/hwctl create branch images@master --head staging
	@echo '$$ hwctl list branch images'
	@$(BIN)/hwctl list branch images
	@echo '$$ hwctl list file images@master:/docs'
	@$(BIN)/hwctl list file images@master:/docs
	@echo '$$ hwctl list commit images'
	@$(BIN)/hwctl list commit images
	@echo '$$ hwctl create pipeline -f examples/lines.yaml'
	@$(BIN)/hwctl inspect pipeline lines >/dev/null 2>&1 || $(BIN)/hwctl create pipeline -f examples/lines.yaml
	@echo '$$ hwctl wait commit lines@master'
	@$(BIN)/hwctl wait commit lines@master >/dev/null
	@echo '$$ hwctl list job -p lines'
	@$(BIN)/hwctl list job -p lines
	@echo '$$ hwctl list file lines@master'
	@$(BIN)/hwctl list file lines@master
	@echo '$$ hwctl list repo'
	@$(BIN)/hwctl list repo
	@echo '$$ hwctl status'
	@$(BIN)/hwctl status
	@echo
	@echo "Headwater keeps running; 'make down' (or .venv/bin/hwctl down) stops it."

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install bytecode
	$(BIN)/python -m bench

clean:
	-$(BIN)/hwctl down
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
