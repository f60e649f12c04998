# geovario-keras developer commands. On a fresh clone:
#   make test   - creates .venv, installs, runs the tests on all 3 backends
#   make demo   - runs the main job end to end
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?=
# Test processes per backend (pytest-xdist); 2 matches CI's 2 cores.
PYTEST_WORKERS ?= 2
# GeoCLIP's released weights: the geoclip 1.3.0 wheel, downloaded (hash
# pinned, not installed) for geovario_keras.pretrained.geoclip and its tests.
GEOCLIP_WHEEL := .cache/geoclip/geoclip-1.3.0-py3-none-any.whl
export GEOVARIO_GEOCLIP_WHEEL := $(CURDIR)/$(GEOCLIP_WHEEL)

.PHONY: install test test-slow demo demo-encoders gpu-wheels lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all]"
	touch $@

$(GEOCLIP_WHEEL): requirements/geoclip-wheel.txt $(VENV)/.installed
	$(PY) -m pip download -q --no-deps --require-hashes \
	  -r requirements/geoclip-wheel.txt -d $(dir $(GEOCLIP_WHEEL))
	touch $@

install: $(VENV)/.installed $(GEOCLIP_WHEEL)

# The whole suite and every docstring example, once per backend; slow
# tests are excluded (see test-slow).
test: install
	@set -e; for b in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$b"; \
	  KERAS_BACKEND=$$b GEOVARIO_REQUIRE_GEOCLIP=1 \
	    $(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) \
	      --doctest-modules $(PYTEST_ARGS) geovario_keras tests; \
	done

# Long-running tests (marked @pytest.mark.slow), once per backend.
test-slow: install
	@set -e; for b in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$b (slow)"; \
	  KERAS_BACKEND=$$b GEOVARIO_REQUIRE_GEOCLIP=1 \
	    $(PY) -m pytest -q -p no:cacheprovider -m slow $(PYTEST_ARGS) tests; \
	done

# Keras (this venv's version) and the two of its needs that the lent GPU
# machines lack, as wheels for their Python 3.12, into .whl/ (ignored):
# benchmarks/gpu_session.sh installs them there.
gpu-wheels: install
	$(PY) -m pip download -q --no-deps --only-binary=:all: \
	  --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl \
	  keras==$$($(PY) -c 'import keras; print(keras.__version__)') \
	  namex==$$($(PY) -c 'import importlib.metadata as m; print(m.version("namex"))') \
	  optree==$$($(PY) -c 'import optree; print(optree.__version__)')

demo: install
	KERAS_BACKEND=$${KERAS_BACKEND:-jax} $(PY) recipes/compare.py $(DEMO_ARGS)

# The location encoders side by side (plain and semivariogram loss, 3 seeds,
# and the block split): ~35 min on 2 CPU cores. With the fitted
# false-negative range, as when its README table was made.
demo-encoders: install
	KERAS_BACKEND=$${KERAS_BACKEND:-jax} $(PY) recipes/compare.py \
	  --methods geoclip semivariogram --false-range-km fitted \
	  --encoders fourier spherical_harmonics sincos raw \
	  --export '' --out artifacts/encoders $(DEMO_ARGS)

lint: install
	$(PY) -m pip install -q ruff
	$(PY) -m ruff check geovario_keras tests recipes benchmarks conftest.py

clean:
	rm -rf $(VENV) artifacts .pytest_cache .cache
