"""pytest set-up shared by `tests/` and the doctests of `geovario_keras`.

`make test` runs `pytest --doctest-modules geovario_keras tests`: every
`>>>` example in the package's docstrings runs, with `np`, `keras` and
`gv` (this package) already imported, on the backend of `KERAS_BACKEND`.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    import geovario_keras as gv

    doctest_namespace.update({"np": np, "keras": keras, "gv": gv})
