import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


_GEOCLIP_WHEEL = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ".cache",
    "geoclip",
    "geoclip-1.3.0-py3-none-any.whl",
)


@pytest.fixture(scope="session")
def geoclip_wheel():
    """Path of the geoclip 1.3.0 wheel (`make install` downloads it).

    Missing: skipped, or failed when GEOVARIO_REQUIRE_GEOCLIP is set (as
    `make test` does), so CI cannot pass without the reference weights.
    """
    path = os.environ.get("GEOVARIO_GEOCLIP_WHEEL", _GEOCLIP_WHEEL)
    if not os.path.isfile(path):
        message = (
            f"geoclip 1.3.0 wheel not found at {path}; run `make install` "
            "(or pip download geoclip==1.3.0 --no-deps and set "
            "GEOVARIO_GEOCLIP_WHEEL)."
        )
        if os.environ.get("GEOVARIO_REQUIRE_GEOCLIP"):
            pytest.fail(message)
        pytest.skip(message)
    return path
