"""Spherical harmonics + SIREN, and the baseline location encoders.

References: `scipy.special.sph_harm_y` (complex harmonics with the
Condon-Shortley phase, converted to the real orthonormal ones without it),
Gauss-Legendre quadrature for orthonormality, numpy closed forms for the
coordinate features and SIREN's initialisation bounds.
"""

import math
import os

import keras
import numpy as np
import pytest

import geovario_keras as gv
from geovario_keras.layers.spherical_harmonics import harmonic_order
from geovario_keras.testing.scipy_harmonics import real_harmonics
from tests.serving import run_python
from tests.testing import backend
from tests.testing import random_gps
from tests.testing import run_layer_test
from tests.testing import to_numpy
from tests.testing import toy_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _test_points(n=1000):
    gps = random_gps(n, seed=11)
    special = [
        [90.0, 0.0],
        [-90.0, 77.0],
        [89.99, -180.0],
        [-89.99, 180.0],
        [0.0, 180.0],
        [0.0, -180.0],
        [45.0, 0.0],
        [-45.0, 0.0],
        [44.9999, 10.0],
        [-30.0, -179.99],
    ]
    gps[: len(special)] = special
    return gps


def _harmonics(gps, degree):
    return to_numpy(gv.layers.SphericalHarmonics(degree)(gps)).astype("float64")


@pytest.mark.parametrize("degree", [0, 1, 5, 20])
def test_harmonics_match_scipy(degree):
    gps = _test_points()
    ours = _harmonics(gps, degree)
    assert ours.shape == (len(gps), (degree + 1) ** 2)
    np.testing.assert_allclose(
        ours, real_harmonics(gps, degree), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize(
    "degree,atol,n",
    [
        (64, 2.5e-4, 300),
        (100, 6e-4, 300),
        pytest.param(200, 3e-3, 40, marks=pytest.mark.slow),
    ],
)
def test_high_degree_harmonics_stay_finite_and_accurate(degree, atol, n):
    # The factorial closed form overflows in float32 beyond degree ~30; the
    # recurrence stays within `atol` of scipy's float64 up to the largest
    # degree accepted (the error grows about like the square of the degree,
    # largest next to the poles).
    gps = _test_points(n)
    ours = _harmonics(gps, degree)
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(
        ours, real_harmonics(gps, degree), rtol=0, atol=atol
    )


def test_harmonics_are_orthonormal_at_degree_64():
    # Gauss-Legendre in cos(colatitude) (degree + 1 nodes) times 2 degree + 2
    # equispaced longitudes integrate every product of two harmonics of
    # degree <= 64 exactly: the Gram matrix must be the identity.
    degree = 64
    z, w = np.polynomial.legendre.leggauss(degree + 1)
    lon = np.arange(2 * degree + 2) * 360.0 / (2 * degree + 2) - 180.0
    lat = np.degrees(np.arcsin(z))
    grid_lat, grid_lon = np.meshgrid(lat, lon, indexing="ij")
    gps = np.stack([grid_lat.ravel(), grid_lon.ravel()], 1).astype("float32")
    weights = np.repeat(w, len(lon)) * (2.0 * math.pi / len(lon))
    y = _harmonics(gps, degree).astype("float32")
    assert np.all(np.isfinite(y))
    gram = (y * weights[:, None].astype("float32")).T @ y
    np.testing.assert_allclose(gram, np.eye(len(gram)), atol=2e-5)


def test_harmonics_are_continuous_across_the_seam_and_at_the_poles():
    lat = np.linspace(-89.5, 89.5, 37)
    east = np.stack([lat, np.full_like(lat, 180.0)], 1).astype("float32")
    west = np.stack([lat, np.full_like(lat, -180.0)], 1).astype("float32")
    sh = gv.layers.SphericalHarmonics(40)
    np.testing.assert_array_equal(to_numpy(sh(east)), to_numpy(sh(west)))
    for pole in (90.0, -90.0):
        lon = np.linspace(-180.0, 180.0, 25)
        at_pole = np.stack([np.full_like(lon, pole), lon], 1)
        y = to_numpy(sh(at_pole.astype("float32")))
        np.testing.assert_array_equal(y, np.repeat(y[:1], len(lon), 0))
        # Only the m = 0 terms remain there: sqrt((2l + 1) / 4 pi) (+-).
        lm = harmonic_order(40)
        expected = np.where(
            lm[:, 1] == 0,
            np.sqrt((2 * lm[:, 0] + 1) / (4 * math.pi))
            * np.sign(pole) ** lm[:, 0],
            0.0,
        )
        np.testing.assert_allclose(y[0], expected, atol=1e-5)


def _encoders():
    return {
        "spherical_harmonics": gv.layers.SphericalHarmonicsLocationEncoder(
            degree=12, hidden_units=32, hidden_layers=2, embed_dim=16
        ),
        "sincos": gv.layers.MLPLocationEncoder(
            "sincos", hidden_units=32, hidden_layers=2, embed_dim=16
        ),
        "cartesian": gv.layers.MLPLocationEncoder(
            "cartesian", hidden_units=32, hidden_layers=2, embed_dim=16
        ),
    }


@pytest.mark.parametrize("name", ["spherical_harmonics", "sincos", "cartesian"])
def test_encoder_is_continuous_across_the_antimeridian(name):
    encoder = _encoders()[name]
    lat = np.linspace(-80.0, 80.0, 17)
    east = np.stack([lat, np.full_like(lat, 180.0)], 1).astype("float32")
    west = np.stack([lat, np.full_like(lat, -180.0)], 1).astype("float32")
    np.testing.assert_allclose(
        to_numpy(encoder(east)), to_numpy(encoder(west)), atol=1e-5
    )


@pytest.mark.parametrize("name", ["spherical_harmonics", "cartesian"])
def test_encoder_gives_one_embedding_per_pole(name):
    encoder = _encoders()[name]
    lon = np.linspace(-180.0, 180.0, 13)
    for pole in (90.0, -90.0):
        gps = np.stack([np.full_like(lon, pole), lon], 1).astype("float32")
        y = to_numpy(encoder(gps))
        np.testing.assert_allclose(y, np.repeat(y[:1], len(lon), 0), atol=1e-5)


def test_raw_and_sincos_have_their_documented_discontinuities():
    # The baselines' known defects, so the docs stay true: raw coordinates
    # have a seam at the antimeridian; sin/cos and raw see a pole as many
    # points.
    features = gv.layers.mlp_location_encoder.coordinate_features
    seam = np.array([[10.0, 180.0], [10.0, -180.0]], "float32")
    raw = to_numpy(features(seam, "raw"))
    assert abs(raw[0, 1] - raw[1, 1]) == pytest.approx(2.0)
    pole = np.array([[90.0, 0.0], [90.0, 90.0]], "float32")
    sincos = to_numpy(features(pole, "sincos"))
    assert np.abs(sincos[0] - sincos[1]).max() > 0.5


def test_coordinate_features_closed_form():
    gps = random_gps(50, seed=3)
    lat, lon = np.radians(gps[:, 0]), np.radians(gps[:, 1])
    features = gv.layers.mlp_location_encoder.coordinate_features
    expected = {
        "raw": np.stack([gps[:, 0] / 90.0, gps[:, 1] / 180.0], 1),
        "sincos": np.stack(
            [np.sin(lat), np.cos(lat), np.sin(lon), np.cos(lon)], 1
        ),
        "cartesian": np.stack(
            [
                np.cos(lat) * np.cos(lon),
                np.cos(lat) * np.sin(lon),
                np.sin(lat),
            ],
            1,
        ),
    }
    for encoding, want in expected.items():
        np.testing.assert_allclose(
            to_numpy(features(gps, encoding)), want, atol=1e-6
        )


def test_siren_initialisation_bounds():
    # SIREN: U(+-1 / fan_in) for the first layer, U(+-sqrt(6 / fan_in) / w0)
    # after it; a uniform's std is bound / sqrt(3).
    fan_in = 400
    for is_first, w0, bound in [
        (True, 30.0, 1.0 / fan_in),
        (False, 1.0, math.sqrt(6.0 / fan_in)),
        (False, 2.0, math.sqrt(6.0 / fan_in) / 2.0),
    ]:
        layer = gv.layers.SirenDense(512, w0=w0, is_first=is_first)
        layer.build((None, fan_in))
        kernel = to_numpy(layer.kernel)
        assert np.abs(kernel).max() <= bound
        assert kernel.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    layer = gv.layers.SirenDense(5, w0=30.0)
    y = to_numpy(layer(x))
    k, b = to_numpy(layer.kernel), to_numpy(layer.bias)
    np.testing.assert_allclose(y, np.sin(30.0 * (x @ k + b)), atol=1e-5)


def test_layer_contracts():
    gps = random_gps(8, seed=1)
    run_layer_test(
        gv.layers.SphericalHarmonics,
        {"degree": 6},
        gps,
        (8, 49),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        mixed_precision_atol={"mixed_bfloat16": 2e-2, "mixed_float16": 2e-3},
    )
    run_layer_test(
        gv.layers.SirenDense,
        {"units": 6, "w0": 30.0, "is_first": True},
        np.random.default_rng(0).normal(size=(8, 4)).astype("float32"),
        (8, 6),
        expected_num_trainable_weights=2,
        check_mixed_precision=False,  # runs inside the encoder's check
    )
    run_layer_test(
        gv.layers.SphericalHarmonicsLocationEncoder,
        {"degree": 8, "hidden_units": 16, "hidden_layers": 2, "embed_dim": 8},
        gps,
        (8, 8),
        expected_num_trainable_weights=6,
        expected_num_non_trainable_weights=0,
    )
    for encoding in ("raw", "sincos", "cartesian"):
        run_layer_test(
            gv.layers.MLPLocationEncoder,
            {"encoding": encoding, "hidden_units": 16, "embed_dim": 8},
            gps,
            (8, 8),
            expected_num_trainable_weights=8,
            # The encodings share the MLP: one mixed-precision check.
            check_mixed_precision=encoding == "sincos",
        )


def test_harmonics_stay_float32_under_mixed_precision():
    # The first sine layer (w0 = 30) also stays float32: its phases reach
    # tens of radians.
    enc = gv.layers.SphericalHarmonicsLocationEncoder(
        degree=20, hidden_units=16, embed_dim=8, dtype="mixed_bfloat16"
    )
    enc(random_gps(4))
    assert enc.harmonics.compute_dtype == "float32"
    assert enc.hidden[0].compute_dtype == "float32"
    assert enc.hidden[1].compute_dtype == "bfloat16"
    assert enc.head.compute_dtype == "bfloat16"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: gv.layers.SphericalHarmonics(-1), "`degree` must be an int"),
        (lambda: gv.layers.SphericalHarmonics(2.5), "`degree` must be an int"),
        (lambda: gv.layers.SphericalHarmonics(201), "`degree` must be <= 200"),
        (
            lambda: gv.layers.SphericalHarmonicsLocationEncoder(degree=300),
            "`degree` must be <= 200",
        ),
        (
            lambda: gv.layers.SphericalHarmonicsLocationEncoder(w0=0.0),
            "`w0` must be a number > 0",
        ),
        (
            lambda: gv.layers.SphericalHarmonicsLocationEncoder(
                w0_initial=float("nan")
            ),
            "`w0_initial` must be a number > 0",
        ),
        (
            lambda: gv.layers.SphericalHarmonicsLocationEncoder(
                hidden_layers=0
            ),
            "`hidden_layers` must be an int >= 1",
        ),
        (
            lambda: gv.layers.MLPLocationEncoder("fourier"),
            "`encoding` must be one of",
        ),
        (lambda: gv.layers.SirenDense(0), "`units` must be an int >= 1"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_input_width_is_refused():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        gv.layers.SphericalHarmonicsLocationEncoder(degree=2)(
            np.zeros((3, 3), "float32")
        )


def _geoclip(location_encoder):
    return gv.GeoCLIP(
        image_encoder=gv.layers.ImageEncoder(
            None, embed_dim=16, hidden_units=32
        ),
        location_encoder=location_encoder,
        queue_size=64,
        seed=0,
    )


@pytest.mark.parametrize("loss", ["geoclip", "semivariogram"])
def test_geoclip_trains_with_the_encoder(loss):
    # The baselines' fit step is in the layer contract, and they train in
    # `make demo-encoders`.
    keras.utils.set_random_seed(0)
    gps = random_gps(256, seed=2, max_lat=80.0)
    x = toy_features(gps)
    model = _geoclip(_encoders()["spherical_harmonics"])
    callbacks = []
    if loss == "geoclip":
        loss_fn = gv.losses.GeoContrastiveLoss()
    else:
        loss_fn = gv.losses.SemivariogramContrastiveLoss()
        callbacks = [gv.callbacks.SemivariogramCallback(verbose=0)]
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss_fn)
    history = model.fit(
        x, gps, batch_size=64, epochs=3, verbose=0, callbacks=callbacks
    ).history
    assert np.all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
    model.set_gallery(gps, verbose=0)
    coords, probs = model.predict_gps(x[:4], top_k=2)
    assert coords.shape == (4, 2, 2) and np.all(np.isfinite(probs))


_SAVE_SCRIPT = """
import sys, numpy as np, keras
sys.path.insert(0, {root!r})
import geovario_keras as gv
from tests.testing import random_gps, toy_features
keras.utils.set_random_seed(0)
gps = random_gps(128, seed=0, max_lat=70.0)
x = toy_features(gps)
model = gv.GeoCLIP(
    gv.layers.ImageEncoder(None, embed_dim=16, hidden_units=32),
    gv.layers.SphericalHarmonicsLocationEncoder(
        degree=10, hidden_units=32, embed_dim=16),
    queue_size=32, seed=0)
model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
model.fit(x, gps, batch_size=64, epochs=1, verbose=0)
model.set_gallery(gps, verbose=0)
coords, probs = model.predict_gps(x, top_k=3)
emb = model.encode_location(gps)
model.save({path!r})
np.savez({out!r}, coords=coords, probs=probs, x=x, gps=gps, emb=emb)
"""


def test_saved_on_another_backend_loads_trains_and_exports(tmp_path):
    # Ring: tensorflow -> jax -> torch -> tensorflow (each suite run reads a
    # file written by another backend), then the SavedModel export of the
    # loaded model (TensorFlow's and JAX's own export paths), served in a
    # fresh TensorFlow process.
    ring = ["tensorflow", "jax", "torch"]
    other = ring[(ring.index(backend()) - 1) % 3]
    path, out = str(tmp_path / "m.keras"), str(tmp_path / "ref.npz")
    run_python(
        _SAVE_SCRIPT.format(root=ROOT, path=path, out=out),
        env={"KERAS_BACKEND": other},
    )
    ref = np.load(out)
    loaded = keras.models.load_model(path)
    assert isinstance(
        loaded.location_encoder, gv.layers.SphericalHarmonicsLocationEncoder
    )
    np.testing.assert_allclose(
        loaded.encode_location(ref["gps"]), ref["emb"], atol=2e-5
    )
    coords, probs = loaded.predict_gps(ref["x"], top_k=3)
    np.testing.assert_array_equal(coords, ref["coords"])
    np.testing.assert_allclose(probs, ref["probs"], atol=1e-5)
    history = loaded.fit(ref["x"], ref["gps"], batch_size=64, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    if backend() == "torch":
        # PyTorch exports by saving `.keras` and running TensorFlow's export
        # in a subprocess (tests/export_test.py covers that hop): the graph
        # is the TensorFlow run's, checked there.
        return
    exported = gv.export.export_saved_model(
        loaded, str(tmp_path / "saved"), top_k=3, verbose=0
    )
    queries = np.concatenate([ref["gps"][:20], [[90, 180], [-90, -180]]])
    np.save(tmp_path / "q.npy", queries.astype("float32"))
    np.save(tmp_path / "x.npy", ref["x"][:20])
    run_python(
        "import sys, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({str(exported)!r})\n"
        f"q = np.load({str(tmp_path / 'q.npy')!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "e = m.signatures['encode_location'](gps=tf.constant(q))\n"
        "p = m.signatures['predict_gps'](images=tf.constant(x))\n"
        f"np.savez({str(tmp_path / 'served.npz')!r}, "
        "emb=e['embeddings'].numpy(), coords=p['coordinates'].numpy())\n"
    )
    got = np.load(tmp_path / "served.npz")
    np.testing.assert_allclose(
        got["emb"], loaded.encode_location(queries), atol=2e-5
    )
    want, _ = loaded.predict_gps(ref["x"][:20], top_k=3)
    np.testing.assert_allclose(got["coords"], want, atol=1e-4)
