# Two commands from a fresh clone (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BUNDLE := dist/image-classifier-1.0.0-cpu

.PHONY: demo test venv clean lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Main job: compile the bundled example for the cpu target and run one inference through the bundle.
demo: venv
	$(PY) examples/image-classifier/make_model.py
	$(VENV)/bin/gpuxc compile examples/image-classifier --target cpu --out dist
	$(PY) examples/image-classifier/make_input.py > dist/example-input.json
	$(PY) $(BUNDLE) run --input @dist/example-input.json

test: venv
	$(VENV)/bin/ruff check gpuxc plugins tests fixtures benchmarks examples
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check gpuxc plugins tests fixtures benchmarks examples

clean:
	rm -rf dist build *.egg-info
