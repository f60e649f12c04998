import collections
import math

import keras
import numpy as np
import pyproj
import pytest

import geovario_keras as gv
from geovario_keras.layers.equal_earth import SF
from tests.testing import backend
from tests.testing import random_gps
from tests.testing import run_layer_test
from tests.testing import run_state_layer_test
from tests.testing import to_numpy


def test_equal_earth_matches_pyproj():
    gps = random_gps(2000, seed=0)
    gps[:4] = [[90.0, 180.0], [-90.0, -180.0], [0.0, 0.0], [0.0, 180.0]]
    ours = to_numpy(gv.layers.EqualEarthProjection()(gps))
    radius = 6371000.0
    proj = pyproj.Proj(f"+proj=eqearth +R={radius}")
    x, y = proj(gps[:, 1].astype("float64"), gps[:, 0].astype("float64"))
    ref = np.stack([x, y], 1) / radius * SF / 180.0
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    # Documented ranges: x in [-1, 1], y in about [-0.4867, 0.4867].
    assert np.abs(ours[:, 0]).max() <= 1.0 + 1e-6
    assert abs(np.abs(ours[:, 1]).max() - 0.4867) < 1e-3


def test_equal_earth_layer_contract():
    gps = random_gps(8)
    run_layer_test(
        gv.layers.EqualEarthProjection,
        {},
        gps,
        (8, 2),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        mixed_precision_atol={"mixed_bfloat16": 1e-2, "mixed_float16": 1e-3},
    )


def test_equal_earth_keeps_float32_inputs_under_mixed_precision():
    # A bfloat16 longitude would be off by up to 0.5 degree (~50 km).
    gps = np.array([[12.3456, 123.4567]], "float32")
    f32 = to_numpy(gv.layers.EqualEarthProjection()(gps))
    mp = gv.layers.EqualEarthProjection(dtype="mixed_float16")
    # float16 output rounding is ~5e-4 relative; the input is not rounded.
    np.testing.assert_allclose(
        to_numpy(keras.ops.cast(mp(gps), "float32")), f32, rtol=1e-3
    )


def test_random_fourier_features_closed_form():
    layer = gv.layers.RandomFourierFeatures(sigma=16.0, num_features=8, seed=3)
    p = np.random.default_rng(0).uniform(-1, 1, (5, 2)).astype("float32")
    out = to_numpy(layer(p))
    b = to_numpy(layer.b).astype("float64")
    v = 2.0 * math.pi * p.astype("float64") @ b.T
    np.testing.assert_allclose(
        out, np.concatenate([np.cos(v), np.sin(v)], 1), atol=2e-4
    )
    assert b.shape == (8, 2)
    assert not layer.b.trainable
    assert layer.trainable_weights == []


def test_random_fourier_features_distribution_and_seed():
    a = gv.layers.RandomFourierFeatures(sigma=256.0, num_features=4096, seed=1)
    a.build((None, 2))
    b_vals = to_numpy(a.b)
    assert abs(b_vals.std() / 256.0 - 1.0) < 0.03
    assert abs(b_vals.mean()) < 256.0 * 0.03
    same = gv.layers.RandomFourierFeatures(
        sigma=256.0, num_features=4096, seed=1
    )
    same.build((None, 2))
    np.testing.assert_array_equal(to_numpy(same.b), b_vals)


def test_random_fourier_features_layer_contract():
    p = np.random.default_rng(0).uniform(-1, 1, (6, 2)).astype("float32")
    run_layer_test(
        gv.layers.RandomFourierFeatures,
        {"sigma": 256.0, "num_features": 16, "seed": 0},
        p,
        (6, 32),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=1,
        # Phases stay float32: only the output rounding of cos/sin remains.
        mixed_precision_atol={"mixed_bfloat16": 8e-3, "mixed_float16": 1e-3},
    )


@pytest.mark.parametrize(
    "kwargs", [{"sigma": 0}, {"sigma": 1.0, "num_features": 0}]
)
def test_random_fourier_features_bad_args(kwargs):
    with pytest.raises(ValueError, match="sigma|num_features"):
        gv.layers.RandomFourierFeatures(**kwargs)


def test_location_encoder_geoclip_size():
    # GeoCLIP's released encoder: 3 scales of 2x256 Fourier features, then
    # 512->1024->1024->1024->512 per scale: 3,149,824 parameters per scale,
    # 9,449,472 in all, 1,536 of them the frozen B values.
    enc = gv.layers.LocationEncoder()
    enc.build((None, 2))
    assert enc.count_params() == 9_449_472
    frozen = sum(int(np.prod(w.shape)) for w in enc.non_trainable_weights)
    assert frozen == 1_536


def test_location_encoder_is_sum_of_branches():
    enc = gv.layers.LocationEncoder(
        sigmas=(1, 16),
        num_features=8,
        hidden_units=16,
        hidden_layers=2,
        embed_dim=4,
        seed=0,
    )
    gps = random_gps(5)
    out = to_numpy(enc(gps))
    # Recompute by hand in numpy from the layer's own weights.
    p = to_numpy(enc.projection(gps)).astype("float64")
    total = 0.0
    for rff, hidden, head in zip(enc.fourier, enc.hidden, enc.heads):
        v = 2 * math.pi * p @ to_numpy(rff.b).T
        x = np.concatenate([np.cos(v), np.sin(v)], 1)
        for d in hidden:
            w, bias = d.get_weights()
            x = np.maximum(x @ w + bias, 0.0)
        w, bias = head.get_weights()
        total = total + x @ w + bias
    np.testing.assert_allclose(out, total, rtol=1e-4, atol=1e-4)


def test_location_encoder_layer_contract():
    gps = random_gps(6)
    run_layer_test(
        gv.layers.LocationEncoder,
        {
            "sigmas": (1, 16, 256),
            "num_features": 16,
            "hidden_units": 32,
            "hidden_layers": 2,
            "embed_dim": 8,
            "seed": 0,
        },
        gps,
        (6, 8),
        # Per branch: 2 hidden Dense + 1 head (kernel, bias), and B.
        expected_num_trainable_weights=18,
        expected_num_non_trainable_weights=3,
    )


def test_location_encoder_mixed_precision_error_is_small():
    gps = random_gps(256, seed=3)
    kwargs = dict(
        num_features=64, hidden_units=64, hidden_layers=2, embed_dim=32, seed=0
    )
    ref_layer = gv.layers.LocationEncoder(**kwargs)
    ref = to_numpy(ref_layer(gps))
    for policy, tol in (("mixed_bfloat16", 0.05), ("mixed_float16", 0.01)):
        mp = gv.layers.LocationEncoder(**kwargs, dtype=policy)
        mp(gps)
        mp.set_weights(ref_layer.get_weights())
        out = to_numpy(keras.ops.cast(mp(gps), "float32"))
        rel = np.linalg.norm(out - ref, axis=1) / np.linalg.norm(ref, axis=1)
        assert rel.max() < tol, (policy, rel.max())


def test_location_encoder_rejects_bad_args():
    with pytest.raises(ValueError, match="sigmas"):
        gv.layers.LocationEncoder(sigmas=())
    with pytest.raises(ValueError, match="hidden_layers"):
        gv.layers.LocationEncoder(hidden_layers=0)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        gv.layers.LocationEncoder().build((None, 3))


def test_image_encoder_precomputed_features():
    x = np.random.default_rng(0).normal(size=(4, 24)).astype("float32")
    run_layer_test(
        gv.layers.ImageEncoder,
        {"backbone": None, "embed_dim": 8, "hidden_units": 16},
        x,
        (4, 8),
        expected_num_trainable_weights=4,
        expected_num_non_trainable_weights=0,
    )


def _tiny_backbone():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    return keras.Model(inputs, x, name="tiny_backbone")


def test_image_encoder_with_backbone_pools_feature_maps():
    images = (
        np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype("float32")
    )
    backbone = _tiny_backbone()
    enc = gv.layers.ImageEncoder(backbone, embed_dim=8, hidden_units=16)
    out = to_numpy(enc(images))
    assert out.shape == (2, 8)
    assert not backbone.trainable
    assert len(enc.trainable_weights) == 4  # only the MLP
    # Pooling by hand: global average of the feature maps, then the MLP.
    fmap = to_numpy(backbone(images)).mean(axis=(1, 2))
    w1, b1 = enc.hidden.get_weights()
    w2, b2 = enc.head.get_weights()
    np.testing.assert_allclose(
        out, np.maximum(fmap @ w1 + b1, 0) @ w2 + b2, rtol=1e-4, atol=1e-5
    )
    revived = gv.layers.ImageEncoder.from_config(enc.get_config())
    revived(images)
    revived.set_weights(enc.get_weights())
    np.testing.assert_allclose(to_numpy(revived(images)), out, atol=1e-6)


@pytest.mark.slow
def test_image_encoder_with_keras_applications_backbone():
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3),
        include_top=False,
        weights=None,
        include_preprocessing=False,
    )
    enc = gv.layers.ImageEncoder(
        backbone, embed_dim=8, hidden_units=16, trainable_backbone=True
    )
    out = enc(np.zeros((2, 32, 32, 3), "float32"))
    assert tuple(out.shape) == (2, 8)
    assert len(enc.trainable_weights) > 4


def test_image_encoder_rejects_bad_input():
    with pytest.raises(
        ValueError, match=r"precomputed feature vectors of shape \(N, D\)"
    ):
        gv.layers.ImageEncoder(None, embed_dim=4, hidden_units=4)(
            np.zeros((2, 3, 3), "float32")
        )
    with pytest.raises(ValueError, match="pooling"):
        gv.layers.ImageEncoder(None, pooling="median")
    with pytest.raises(ValueError, match="backbone"):
        gv.layers.ImageEncoder(backbone="resnet")


def test_gps_queue_fifo_and_mask_against_deque():
    size = 5
    q = gv.layers.GPSQueue(size, feature_dim=1)
    ref = collections.deque(maxlen=size)
    assert not to_numpy(q.valid_mask()).any()
    counter = 0
    for batch in (2, 2, 3, 7, 1):
        coords = np.stack([np.arange(counter, counter + batch)] * 2, 1)
        coords = coords.astype("float32")
        counter += batch
        q.enqueue(coords, coords[:, :1] * 10)
        ref.extend(coords.tolist())
        valid = to_numpy(q.valid_mask())
        stored = to_numpy(q.coords)[valid]
        assert valid.sum() == len(ref)
        # Same multiset of entries, and the oldest is overwritten first.
        assert sorted(stored[:, 0].tolist()) == sorted(r[0] for r in ref)
        np.testing.assert_array_equal(
            to_numpy(q.features)[valid][:, 0], stored[:, 0] * 10
        )
    q.reset()
    assert not to_numpy(q.valid_mask()).any()


def test_gps_queue_state_contract_and_errors():
    q = gv.layers.GPSQueue(7, feature_dim=3, name="q")
    q.enqueue(random_gps(9, seed=2), np.ones((9, 3), "float32"))
    assert bool(to_numpy(q.is_full()))
    revived = run_state_layer_test(q, 0, 4)  # coords, features, pointer, count
    np.testing.assert_array_equal(
        to_numpy(revived.valid_mask()), np.ones(7, bool)
    )
    with pytest.raises(ValueError, match="size"):
        gv.layers.GPSQueue(0)
    with pytest.raises(ValueError, match="features"):
        q.enqueue(np.zeros((1, 2), "float32"))


@pytest.mark.skipif(backend() != "torch", reason="torch-only fused path")
def test_location_encoder_fused_torch_path_equals_dense(monkeypatch):
    # On torch the hidden layers run as one addmm + in-place ReLU; Keras's
    # own Dense is the reference, also with LoRA enabled.
    from geovario_keras.backend import step_ops as gv_backend

    gps = random_gps(64, seed=4)
    enc = gv.layers.LocationEncoder(
        num_features=16, hidden_units=32, hidden_layers=2, embed_dim=8, seed=0
    )
    fused = to_numpy(enc(gps))
    for dense in enc.hidden[0]:
        dense.enable_lora(2)
        dense.lora_kernel_b.assign(np.full(dense.lora_kernel_b.shape, 0.1))
    fused_lora = to_numpy(enc(gps))
    monkeypatch.setattr(gv_backend, "_DENSE_RELU", gv_backend._call_dense)
    np.testing.assert_allclose(fused_lora, to_numpy(enc(gps)), atol=1e-6)
    assert np.abs(fused_lora - fused).max() > 1e-3


def test_contrastive_head_closed_form_and_contract():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(5, 8)).astype("float32")
    loc = rng.normal(size=(5, 8)).astype("float32")
    _, out = run_layer_test(
        gv.layers.ContrastiveHead,
        {"logit_scale_init": 1.5},
        (img, loc),
        (5, 5),
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=0,
        check_mixed_precision=False,
    )
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa
    np.testing.assert_allclose(
        out, np.exp(1.5) * unit(img) @ unit(loc).T, rtol=1e-5
    )
    # The temperature is capped (CLIP: 100), and scoring stays float32.
    capped = gv.layers.ContrastiveHead(logit_scale_init=10.0)
    assert float(to_numpy(capped.temperature())) == pytest.approx(100.0)
    keras.config.set_dtype_policy("mixed_bfloat16")
    head = gv.layers.ContrastiveHead()
    assert keras.backend.standardize_dtype(head(img, loc).dtype) == "float32"
    with pytest.raises(ValueError, match="logit_scale_init"):
        gv.layers.ContrastiveHead(logit_scale_init=float("nan"))


def test_gps_gallery_top_k_against_numpy_and_state_contract():
    rng = np.random.default_rng(1)
    coords = random_gps(50, seed=1)
    emb = rng.normal(size=(50, 6)).astype("float32")
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    gallery = gv.layers.GPSGallery(0, 6)
    gallery.set(coords, emb)
    query = emb[[3, 17]] + 0.01
    got_coords, got_probs = gallery(query, scale=20.0, top_k=4)
    logits = 20.0 * query.astype("float64") @ emb.T.astype("float64")
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    order = np.argsort(-probs, axis=1)[:, :4]
    np.testing.assert_array_equal(to_numpy(got_coords), coords[order])
    np.testing.assert_allclose(
        to_numpy(got_probs), np.take_along_axis(probs, order, 1), rtol=1e-4
    )
    # `retrieve` (numpy, in blocks) gives the same as `call`.
    c2, p2 = gallery.retrieve(query, 20.0, top_k=4, batch_size=1)
    np.testing.assert_array_equal(c2, to_numpy(got_coords))
    # Rows gathered where the gallery lives, as numpy indexes them.
    index = np.array([[0, 49, 7], [7, 3, 0]])
    at = gallery.coords_at(index)
    assert at.shape == (2, 3, 2) and at.dtype == np.float32
    np.testing.assert_array_equal(at, coords[index])
    revived = run_state_layer_test(gallery, 0, 2)
    assert revived.size == 50
    with pytest.raises(
        ValueError, match=r"`top_k` must be an int in \[1, 50\]"
    ):
        gallery.retrieve(query, 1.0, top_k=51)
    with pytest.raises(ValueError, match="gallery is empty"):
        gv.layers.GPSGallery(0, 6).check_top_k(1)


def test_semivariogram_state_contract():
    state = gv.semivariogram.SemivariogramState([0.0, 100.0, 1000.0])
    h = np.array([[50.0, 500.0, 5000.0]], "float32")
    d = np.array([[0.1, 0.3, 0.9]], "float32")
    state.accumulate(h, d)
    fit = gv.semivariogram.VariogramFit(
        "exponential", psill=0.5, length_scale=200.0, converged=True
    )
    state.set_fit(fit)
    assert state.active
    # params, count, mean, m2, negatives.
    revived = run_state_layer_test(state, 0, 5)
    assert revived.active
    np.testing.assert_array_equal(revived.statistics()[0], [1.0, 1.0])


def test_geodesic_noise_contract_closed_form_and_saved_state(tmp_path):
    gps = random_gps(8, seed=5, max_lat=80.0)
    _, out = run_layer_test(
        gv.layers.GeodesicNoise,
        {"seed": 3},
        gps,
        (8, 2),
        expected_num_trainable_weights=0,
        check_mixed_precision=False,  # coordinates stay float32
    )
    np.testing.assert_array_equal(out, gps)  # identity outside training
    # In training: Rayleigh displacement, mean sigma * sqrt(pi / 2).
    noise = gv.layers.GeodesicNoise(seed=3)
    many = np.repeat(gps[:1], 20000, axis=0)
    moved = noise(many, sigma_m=500.0, training=True)
    km = to_numpy(gv.geo.haversine_km(many, moved))
    assert km.mean() == pytest.approx(0.5 * math.sqrt(math.pi / 2), rel=0.03)
    # The random state is saved: a restored layer draws the same noise.
    inputs = keras.Input((2,))
    model = keras.Model(inputs, noise(inputs, sigma_m=500.0))
    path = str(tmp_path / "noise.weights.h5")
    model.save_weights(path)
    expected = to_numpy(noise(gps, sigma_m=500.0, training=True))
    noise(gps, sigma_m=500.0, training=True)  # advance the state
    model.load_weights(path)
    got = to_numpy(noise(gps, sigma_m=500.0, training=True))
    np.testing.assert_array_equal(got, expected)
