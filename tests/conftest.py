"""Fixtures of the test suite (the Keras set-up is in ../conftest.py)."""

import os

import pytest

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
