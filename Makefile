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

test: lint
	$(PY) -m pytest -q

# ruff everywhere; mypy on the compiler, the plugins and the runner sources copied into bundles.
lint: venv
	$(VENV)/bin/ruff check gpuxc plugins templates tests fixtures benchmarks examples
	$(VENV)/bin/mypy gpuxc plugins/gpuxc_* templates/runner templates/*/runtime.py

clean:
	rm -rf dist build *.egg-info
