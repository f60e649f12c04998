"""Every layer of the shipped encoders starts from its own random weights.

A Keras random initializer reuses the seed it drew when it was built, so
one instance shared by several layers gives same-shape weights identical
values (the three Fourier branches of the location encoder would start as
one MLP). The reference, PyTorch's `nn.Linear`, draws each layer anew.
"""

import itertools

import keras
import numpy as np
import pytest

import geovario_keras as gv
from tests.testing import random_gps
from tests.testing import to_numpy

ENCODERS = {
    "location": lambda **kw: gv.layers.LocationEncoder(
        **{
            "sigmas": (1, 16, 256),
            "num_features": 16,
            "hidden_units": 32,
            "hidden_layers": 2,
            "embed_dim": 16,
            **kw,
        }
    ),
    "image": lambda **kw: gv.layers.ImageEncoder(
        None, **{"embed_dim": 32, "hidden_units": 32, **kw}
    ),
    "mlp_sincos": lambda **kw: gv.layers.MLPLocationEncoder(
        "sincos",
        **{"hidden_units": 16, "hidden_layers": 3, "embed_dim": 16, **kw},
    ),
    "spherical_harmonics": lambda **kw: (
        gv.layers.SphericalHarmonicsLocationEncoder(
            degree=3, hidden_units=16, hidden_layers=3, embed_dim=16
        )
    ),
}
# Only these take initializer arguments.
CONFIGURABLE = ("location", "image", "mlp_sincos")


def _built(name, seed=1, **kw):
    keras.utils.set_random_seed(seed)
    layer = ENCODERS[name](**kw)
    if name == "image":
        layer(np.zeros((2, 32), "float32"))
    else:
        layer(random_gps(2))
    return layer


def _random_weights(layer):
    """(path, values) of the weights that are not constant at the start."""
    out = []
    for w in layer.weights:
        values = to_numpy(w).astype("float64")
        if values.size and np.ptp(values) > 0:  # skips zero biases
            out.append((w.path, values))
    return out


def _assert_independent(layer):
    weights = _random_weights(layer)
    assert len(weights) >= 2
    pairs = 0
    for (pa, a), (pb, b) in itertools.combinations(weights, 2):
        if a.shape != b.shape:
            continue
        pairs += 1
        assert not np.array_equal(a, b), f"{pa} == {pb}"
        if a.size >= 256:
            # Independent draws: |r| ~ 1 / sqrt(size) <= 1/16; shared: 1.
            r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
            assert abs(r) < 0.3, f"{pa} and {pb} correlate ({r:.3f})"
    # Same-shape pairs exist (else this test would check nothing).
    assert pairs >= 1


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_same_shape_weights_start_independent(name):
    _assert_independent(_built(name))


@pytest.mark.parametrize("name", CONFIGURABLE)
def test_an_int_seeded_initializer_still_gives_independent_layers(name):
    init = keras.initializers.GlorotUniform(seed=3)
    first = _built(name, kernel_initializer=init)
    _assert_independent(first)
    # ... and the seed alone fixes the weights, whatever the global seed.
    again = _built(name, seed=7, kernel_initializer=init)
    for a, b in zip(_random_weights(first), _random_weights(again)):
        if "kernel" in a[0] and "rff" not in a[0]:
            np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_the_global_seed_reproduces_and_changes_the_weights(name):
    a, b, c = (_built(name, seed=s) for s in (1, 1, 2))
    wa, wb, wc = (_random_weights(x) for x in (a, b, c))
    for (path, x), (_, y) in zip(wa, wb):
        np.testing.assert_array_equal(x, y, err_msg=path)
    assert all(not np.array_equal(x, z) for (_, x), (_, z) in zip(wa, wc))


def test_the_model_s_encoders_start_independent():
    keras.utils.set_random_seed(1)
    model = gv.GeoCLIP(
        image_encoder=ENCODERS["image"](),
        location_encoder=ENCODERS["location"](embed_dim=32),
        queue_size=8,
    )
    model.build((None, 32))
    _assert_independent(model)


def test_the_encoder_config_keeps_the_initializer_the_user_gave():
    init = keras.initializers.GlorotUniform(seed=3)
    layer = ENCODERS["location"](kernel_initializer=init)
    config = layer.get_config()["kernel_initializer"]
    assert config["config"]["seed"] == 3
