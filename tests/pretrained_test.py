"""GeoCLIP's released weights against the reference PyTorch implementation.

References: `torch.load` (for our torch-free checkpoint reader) and the
wheel's own `location_encoder.py` / `rff` code run under PyTorch
(`geovario_keras/testing/reference_geoclip.py`) for the ported encoder.
"""

import importlib.util
import io
import os
import zipfile

import keras
import numpy as np
import pytest
import torch

import geovario_keras as gv
from geovario_keras import pretrained
from tests.testing import random_gps
from tests.testing import slow_on

# Points that stress the projection and the sigma = 256 phases: poles, the
# antimeridian, the equator, and GeoCLIP's own gallery.
_EDGE_POINTS = np.array(
    [
        [90.0, 0.0],
        [-90.0, 0.0],
        [0.0, 180.0],
        [0.0, -180.0],
        [0.0, 0.0],
        [89.999, 179.999],
        [-33.8688, 151.2093],
        [48.8566, 2.3522],
    ],
    "float32",
)


@pytest.fixture(scope="module")
def reference_encoder(geoclip_wheel):
    from geovario_keras.testing import reference_geoclip as geoclip_ref

    return geoclip_ref.reference_location_encoder(geoclip_wheel)


def _relative_error_and_cosine(ours, ref):
    rel = np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)
    cos = np.sum(ours * ref, 1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1)
    )
    return rel.max(), cos.min()


# ------------------------------------------------------- checkpoint reader
def test_reader_matches_torch_load(tmp_path):
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.normal(size=(6, 4)).astype("float32"))
    state = {
        "w": base,
        "w_t": base.t(),  # non-contiguous view of the same storage
        "w_slice": base[2:, 1:3],  # storage offset and strides
        "scalar": torch.tensor(3.5),
        "ints": torch.arange(7, dtype=torch.int64),
        "half": torch.ones(3, dtype=torch.float16) / 3,
        "param": torch.nn.Parameter(torch.zeros(2, 2), requires_grad=False),
    }
    path = tmp_path / "state.pth"
    torch.save(state, path)
    ours = pretrained.read_torch_checkpoint(str(path))
    ref = torch.load(path, weights_only=True)
    assert set(ours) == set(ref)
    for key, value in ref.items():
        np.testing.assert_array_equal(ours[key], value.detach().numpy())
        assert ours[key].dtype == value.detach().numpy().dtype, key


def test_reader_refuses_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"f": os.getcwd}, path)
    with pytest.raises(ValueError, match="Refusing"):
        pretrained.read_torch_checkpoint(str(path))
    (tmp_path / "plain.bin").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a torch zip"):
        pretrained.read_torch_checkpoint(str(tmp_path / "plain.bin"))


# ------------------------------------------------------------- the wheel
def test_wheel_files_equal_torch_load(geoclip_wheel, tmp_path):
    with zipfile.ZipFile(geoclip_wheel) as z:
        z.extractall(tmp_path)
    unpacked = tmp_path / "geoclip" / "model"
    for source in (geoclip_wheel, str(tmp_path), str(unpacked)):
        files = pretrained.GeoCLIPFiles(source)
        for key in ("location_encoder", "image_mlp"):
            ref = torch.load(
                unpacked / pretrained.geoclip._FILES[key], weights_only=True
            )
            ours = files.checkpoint(key)
            assert set(ours) == set(ref)
            for name, value in ref.items():
                np.testing.assert_array_equal(ours[name], value.numpy())
        # The logit scale in the released weights: 3.68103 (exp = 39.69).
        scale = float(files.checkpoint("logit_scale"))
        assert scale == pytest.approx(3.68103, abs=1e-5)


def test_gallery(geoclip_wheel):
    gps = pretrained.load_geoclip_gallery(geoclip_wheel)
    assert gps.shape == (100_000, 2) and gps.dtype == np.float32
    gv.geo.check_gps(gps)
    # First data row of coordinates_100K.csv.
    np.testing.assert_allclose(gps[0], [-50.943392, -72.935664], atol=1e-5)
    unique = pretrained.load_geoclip_gallery(geoclip_wheel, deduplicate=True)
    assert len(unique) == 100_000 - 5_877  # the released CSV repeats 5,877 rows
    np.testing.assert_array_equal(unique[0], gps[0])


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrained.GeoCLIPFiles(tmp_path / "missing.whl")
    with pytest.raises(FileNotFoundError, match="location_encoder_weights"):
        pretrained.GeoCLIPFiles(tmp_path).open("location_encoder")
    if importlib.util.find_spec("geoclip") is None:
        with pytest.raises(FileNotFoundError, match="pip download"):
            pretrained.GeoCLIPFiles(None)


# ------------------------------------------------ against the reference
def test_location_encoder_matches_reference(geoclip_wheel, reference_encoder):
    enc = pretrained.geoclip_location_encoder(geoclip_wheel)
    gallery = pretrained.load_geoclip_gallery(geoclip_wheel)
    rng = np.random.default_rng(0)
    gps = np.concatenate(
        [
            random_gps(2000, seed=1),
            gallery[rng.choice(len(gallery), 2000, replace=False)],
            _EDGE_POINTS,
        ]
    )
    with torch.no_grad():
        ref = reference_encoder(torch.from_numpy(gps)).numpy()
    ours = keras.ops.convert_to_numpy(enc(gps))
    rel, cos = _relative_error_and_cosine(ours, ref)
    # float32 phases of up to ~2 pi * 1000 rad (sigma = 256) limit any two
    # float32 implementations to ~1e-3 relative agreement.
    assert rel <= 2e-3, rel
    assert cos >= 0.99999, cos
    # The frozen B is loaded, not re-drawn.
    state = torch.load(
        _extract(geoclip_wheel, pretrained.geoclip._FILES["location_encoder"]),
        weights_only=True,
    )
    for i in range(3):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(enc.fourier[i].b),
            state[f"LocEnc{i}.capsule.0.b"].numpy(),
        )


def _extract(wheel, suffix):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(suffix))
        return io.BytesIO(z.read(name))


def test_geoclip_model_matches_reference(geoclip_wheel, reference_encoder):
    """Image head, logit scale and top-k retrieval vs a torch computation."""
    model = pretrained.geoclip_model(geoclip_wheel, gallery=False)
    gallery = pretrained.load_geoclip_gallery(geoclip_wheel)[::50]  # 2,000
    model.set_gallery(gallery, verbose=0)
    feats = np.random.default_rng(2).normal(size=(16, 768)).astype("float32")
    coords, probs = model.predict_gps(feats, top_k=5)

    mlp = torch.load(
        _extract(geoclip_wheel, pretrained.geoclip._FILES["image_mlp"]),
        weights_only=True,
    )
    scale = torch.load(
        _extract(geoclip_wheel, pretrained.geoclip._FILES["logit_scale"]),
        weights_only=True,
    )
    with torch.no_grad():
        x = torch.from_numpy(feats)
        img = torch.relu(x @ mlp["0.weight"].T + mlp["0.bias"])
        img = img @ mlp["2.weight"].T + mlp["2.bias"]
        loc = reference_encoder(torch.from_numpy(gallery))
        img = torch.nn.functional.normalize(img, dim=-1)
        loc = torch.nn.functional.normalize(loc, dim=-1)
        # GeoCLIP.forward / predict: exp(logit_scale) * img @ loc.T, softmax.
        ref_probs = torch.softmax(scale.exp() * img @ loc.T, dim=-1)
        top_p, top_i = torch.topk(ref_probs, 5, dim=-1)
    ref_img = img.numpy()
    ours_img = model.encode_image(feats)
    np.testing.assert_allclose(ours_img, ref_img, atol=2e-6)
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(model.logit_scale)), float(scale)
    )
    # Logits are 39.7 * cosine; the encoders agree to ~1e-3 relative, so the
    # ranking agrees except for near-ties.
    np.testing.assert_array_equal(coords[:, 0], gallery[top_i[:, 0].numpy()])
    np.testing.assert_allclose(probs, top_p.numpy(), rtol=0.05, atol=1e-4)


def test_load_errors(geoclip_wheel):
    small = gv.layers.LocationEncoder(hidden_units=64, hidden_layers=2)
    with pytest.raises(ValueError, match="GeoCLIP's configuration"):
        pretrained.load_geoclip_weights(small, geoclip_wheel)
    with pytest.raises(ValueError, match="target"):
        pretrained.load_geoclip_weights(keras.layers.Dense(2), geoclip_wheel)
    model = gv.GeoCLIP(
        image_encoder=gv.layers.ImageEncoder(None, embed_dim=512),
        location_encoder=gv.layers.LocationEncoder(),
        queue_size=0,
    )
    model(np.zeros((1, 32), "float32"))
    with pytest.raises(ValueError, match="image MLP"):
        pretrained.load_geoclip_weights(model, geoclip_wheel, gallery=False)


@pytest.mark.slow
def test_full_pretrained_geoclip(geoclip_wheel, reference_encoder):
    """All 100K gallery points, encoded and cached, vs the reference."""
    model = pretrained.geoclip_model(geoclip_wheel, queue_size=0)
    gallery = pretrained.load_geoclip_gallery(geoclip_wheel)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.gallery.coords), gallery
    )
    with torch.no_grad():
        ref = reference_encoder(torch.from_numpy(gallery)).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    ours = keras.ops.convert_to_numpy(model.gallery.embeddings)
    rel, cos = _relative_error_and_cosine(ours, ref)
    assert rel <= 2e-3 and cos >= 0.99999, (rel, cos)


# ---------------------------------------------------------- mixed precision
# Tolerances measured on the released encoder (JAX, 5,000 gallery points,
# 500 queries): bfloat16 min cosine 0.99988, top-1 agreement 99.6 %;
# float16 min cosine 0.999998, agreement 100 %.
@pytest.mark.parametrize(
    "policy, min_cosine, fourier_atol",
    [
        ("mixed_bfloat16", 0.9995, 2**-8),
        # TensorFlow computes float16 on a CPU without native float16
        # arithmetic: minutes there, so in `make test-slow` only.
        pytest.param(
            "mixed_float16", 0.99999, 2**-11, marks=slow_on("tensorflow")
        ),
    ],
)
def test_released_encoder_under_mixed_precision(
    geoclip_wheel, policy, min_cosine, fourier_atol
):
    gallery = pretrained.load_geoclip_gallery(geoclip_wheel)
    rng = np.random.default_rng(0)
    points = gallery[rng.choice(len(gallery), 600, replace=False)]
    queries = np.concatenate([random_gps(200, seed=2), _EDGE_POINTS])
    fp32 = pretrained.geoclip_model(geoclip_wheel, gallery=False, queue_size=0)
    keras.config.set_dtype_policy(policy)
    mixed = pretrained.geoclip_model(geoclip_wheel, gallery=False, queue_size=0)
    assert mixed.location_encoder.compute_dtype == policy.split("_")[1]

    # Coordinate and trigonometric math stays float32: the sigma = 256
    # phases reach ~5,000 rad, so computed in 16 bits the features would be
    # wrong by O(1); here they differ only by rounding the output.
    for i in range(3):
        ours = mixed.location_encoder.fourier[i](
            mixed.location_encoder.projection(queries)
        )
        ref = fp32.location_encoder.fourier[i](
            fp32.location_encoder.projection(queries)
        )
        err = np.abs(
            keras.ops.convert_to_numpy(keras.ops.cast(ours, "float32"))
            - keras.ops.convert_to_numpy(ref)
        ).max()
        assert err <= fourier_atol, (i, err)

    # Embeddings: near float32's, float32 on output, same top-1 retrieval.
    g32, q32 = fp32.encode_location(points), fp32.encode_location(queries)
    g16, q16 = mixed.encode_location(points), mixed.encode_location(queries)
    assert g16.dtype == np.float32
    cos = np.sum(g16 * g32, axis=1)
    assert cos.min() >= min_cosine, cos.min()
    same = np.argmax(q16 @ g16.T, 1) == np.argmax(q32 @ g32.T, 1)
    assert same.mean() >= 0.99, same.mean()
