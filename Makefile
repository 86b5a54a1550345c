# The two commands of the quick start, and a few more.
#   make demo   set up .venv and run the embedded demo (no services needed)
#   make test   install and start what the tests need, run every test and check, stop it all
VENV ?= .venv
PYTHON ?= python3

.PHONY: demo test install lint stack-up stack-down

# The demo needs the package alone; the linters and tests install the dev extras themselves.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/churnwatch demo

test:
	bash deploy/local/test.sh

lint: install
	$(VENV)/bin/pip install -q --disable-pip-version-check -e ".[dev]"
	$(VENV)/bin/ruff check services tests benchmarks
	$(VENV)/bin/mypy

stack-up:
	bash deploy/local/stack.sh up

stack-down:
	bash deploy/local/stack.sh down
