"""SavedModel export, checked with TensorFlow's own loader and CLI.

Every check loads the SavedModel in a fresh process (no Keras imported there
before the SavedModel has run) or with `saved_model_cli`, and compares with
the Keras model of the backend under test. On PyTorch the export goes through
a TensorFlow-backend subprocess (`gv.export`), so that path is what runs.
"""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import geovario_keras as gv
from tests.serving import rest_predict
from tests.serving import run_python
from tests.testing import random_gps
from tests.testing import small_geoclip
from tests.testing import toy_features

TOP_K = 5
FEATURE_DIM = 16
README = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "saved_models",
    "README.md",
)

_SERVE = """
import json, sys
import numpy as np
import tensorflow as tf
data = np.load(sys.argv[1])
served = tf.saved_model.load(sys.argv[2])
sigs = served.signatures
out = {}
for key in ("serving_default", "predict_gps"):
    res = sigs[key](images=tf.constant(data["images"]))
    out[key + "/coordinates"] = res["coordinates"].numpy()
    out[key + "/probabilities"] = res["probabilities"].numpy()
out["encode_image"] = sigs["encode_image"](
    images=tf.constant(data["images"]))["embeddings"].numpy()
out["encode_location"] = sigs["encode_location"](
    gps=tf.constant(data["gps"]))["embeddings"].numpy()
if "nearest_references" in sigs:  # only with a reference set
    res = sigs["nearest_references"](images=tf.constant(data["images"]))
    out["nearest_references/coordinates"] = res["coordinates"].numpy()
    out["nearest_references/weights"] = res["weights"].numpy()
np.savez(sys.argv[3], **out)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A model trained for one epoch on this backend, exported once."""
    tmp = tmp_path_factory.mktemp("export")
    keras.utils.set_random_seed(0)
    gps = random_gps(512, seed=0)
    model = small_geoclip(queue_size=128)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=gv.losses.GeoContrastiveLoss(),
    )
    features = toy_features(gps, FEATURE_DIM)
    model.fit(features, gps, batch_size=128, epochs=1, verbose=0)
    model.set_gallery(random_gps(3000, seed=1), verbose=0)
    model.set_reference(features, gps, verbose=0)
    base = tmp / "saved_models" / "toy"
    path = gv.export.export_saved_model(model, base, top_k=TOP_K)
    queries = random_gps(37, seed=2)
    data = {
        "images": toy_features(queries, FEATURE_DIM, seed=3),
        "gps": np.concatenate(
            [random_gps(40, seed=4), [[90, 180], [-90, 0]]]
        ).astype("float32"),
    }
    coords, probs = model.predict_gps(data["images"], top_k=TOP_K)
    near, weights = gv.retrieval.neighbours(
        model,
        model.encode_image(data["images"]),
        gv.retrieval.RetrievalOptions(),
    )
    expected = {
        "nearest_references/coordinates": near,
        "nearest_references/weights": weights,
        "coordinates": coords,
        "probabilities": probs,
        "encode_image": model.encode_image(data["images"]),
        "encode_location": model.encode_location(data["gps"]),
    }
    np.savez(tmp / "inputs.npz", **data)
    return {
        "model": model,
        "base": base,
        "path": path,
        "tmp": tmp,
        "data": data,
        "expected": expected,
    }


def test_layout(exported):
    assert exported["path"] == os.path.join(str(exported["base"]), "1")
    assert sorted(os.listdir(exported["base"])) == ["1"]  # no staging left
    assert os.path.isfile(os.path.join(exported["path"], "saved_model.pb"))
    assert os.path.isdir(os.path.join(exported["path"], "variables"))


def test_fresh_tensorflow_process_serves_same_answers(exported):
    tmp, expected = exported["tmp"], exported["expected"]
    args = [str(tmp / "inputs.npz"), exported["path"], str(tmp / "out.npz")]
    code = f"import sys; sys.argv[1:] = {args!r}\n" + _SERVE
    run_python(code, env={"KERAS_BACKEND": "tensorflow"})
    out = np.load(tmp / "out.npz")
    for key in ("serving_default", "predict_gps"):
        np.testing.assert_allclose(
            out[key + "/coordinates"], expected["coordinates"], atol=1e-5
        )
        np.testing.assert_allclose(
            out[key + "/probabilities"], expected["probabilities"], atol=1e-5
        )
    # The reference set is baked in: the same neighbours and weights.
    for key in ("coordinates", "weights"):
        key = "nearest_references/" + key
        np.testing.assert_allclose(out[key], expected[key], atol=1e-4)
    assert out["predict_gps/coordinates"].dtype == np.float32
    assert out["predict_gps/coordinates"].shape == (37, TOP_K, 2)
    np.testing.assert_allclose(
        out["encode_image"], expected["encode_image"], atol=1e-5
    )
    # GeoCLIP's sigma = 256 Fourier phases reach ~5,000 rad, where float32
    # kernels differ by ~5e-4 rad: any two runtimes (even TensorFlow eager
    # vs graph) agree to ~1e-3 relative on location embeddings. Exactness
    # of the export itself: test_export_is_exact_when_well_conditioned.
    served, ours = out["encode_location"], expected["encode_location"]
    assert np.sum(served * ours, axis=1).min() >= 0.99999
    np.testing.assert_allclose(served, ours, atol=2e-4)


def test_export_is_exact_when_well_conditioned(tmp_path):
    """With small Fourier scales every signature agrees within 1e-5."""
    model = gv.GeoCLIP(
        image_encoder=gv.layers.ImageEncoder(None, embed_dim=16),
        location_encoder=gv.layers.LocationEncoder(
            sigmas=(1, 4),
            num_features=16,
            hidden_units=32,
            hidden_layers=1,
            embed_dim=16,
            seed=0,
        ),
        queue_size=0,
    )
    feats = toy_features(random_gps(9, seed=5), FEATURE_DIM)
    model(feats)
    model.set_gallery(random_gps(500, seed=6), verbose=0)
    gps = random_gps(50, seed=7)
    path = gv.export.export_saved_model(model, tmp_path / "m", top_k=3)
    coords, probs = model.predict_gps(feats, top_k=3)
    np.savez(tmp_path / "in.npz", images=feats, gps=gps)
    args = [str(tmp_path / "in.npz"), path, str(tmp_path / "out.npz")]
    run_python(
        f"import sys; sys.argv[1:] = {args!r}\n" + _SERVE,
        env={"KERAS_BACKEND": "tensorflow"},
    )
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(
        out["predict_gps/coordinates"], coords, atol=1e-5
    )
    np.testing.assert_allclose(
        out["predict_gps/probabilities"], probs, atol=1e-5
    )
    np.testing.assert_allclose(
        out["encode_image"], model.encode_image(feats), atol=1e-5
    )
    np.testing.assert_allclose(
        out["encode_location"], model.encode_location(gps), atol=1e-5
    )


def _saved_model_cli(*args):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run(
        [cli, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_saved_model_cli_show_and_run(exported):
    path, tmp = exported["path"], exported["tmp"]
    shown = _saved_model_cli("show", "--dir", path, "--all")
    signatures = {}
    for block in re.split(r"signature_def\['", shown)[1:]:
        name = block.split("'")[0]
        signatures[name] = " ".join(block.split())
    assert {"serving_default", *gv.export.SIGNATURES} <= set(signatures)
    images = (
        f"inputs['images'] tensor_info: dtype: DT_FLOAT shape: "
        f"(-1, {FEATURE_DIM})"
    )
    for name in ("serving_default", "predict_gps"):
        sig = signatures[name]
        assert images in sig, sig
        assert (
            "outputs['coordinates'] tensor_info: dtype: DT_FLOAT shape: "
            f"(-1, {TOP_K}, 2)" in sig
        ), sig
        assert (
            "outputs['probabilities'] tensor_info: dtype: DT_FLOAT shape: "
            f"(-1, {TOP_K})" in sig
        ), sig
    assert images in signatures["encode_image"]
    assert (
        "inputs['gps'] tensor_info: dtype: DT_FLOAT shape: (-1, 2)"
        in signatures["encode_location"]
    )
    np.save(tmp / "images.npy", exported["data"]["images"])
    outdir = tmp / "cli_out"
    _saved_model_cli(
        "run",
        "--dir",
        path,
        "--tag_set",
        "serve",
        "--signature_def",
        "predict_gps",
        "--inputs",
        f"images={tmp / 'images.npy'}",
        "--outdir",
        str(outdir),
    )
    expected = exported["expected"]
    for key in ("coordinates", "probabilities"):
        np.testing.assert_allclose(
            np.load(outdir / f"{key}.npy"), expected[key], atol=1e-5
        )


def test_versions_and_overwrite(exported):
    model, base = exported["model"], exported["base"]
    with pytest.raises(FileExistsError, match="overwrite"):
        gv.export.export_saved_model(model, base, version=1)
    second = gv.export.export_saved_model(model, base, top_k=1)
    assert second == os.path.join(str(base), "2")
    again = gv.export.export_saved_model(
        model, base, version=2, top_k=2, overwrite=True
    )
    assert again == second
    assert sorted(os.listdir(base)) == ["1", "2"]
    # A version folder given as the base is refused (it nested "1/1").
    with pytest.raises(ValueError, match="is itself a SavedModel"):
        gv.export.export_saved_model(model, os.path.join(str(base), "1"))
    assert sorted(os.listdir(os.path.join(str(base), "1"))) == sorted(
        os.listdir(second)
    )
    import tensorflow as tf

    served = tf.saved_model.load(second)
    out = served.signatures["predict_gps"](
        images=tf.constant(exported["data"]["images"])
    )
    assert tuple(out["coordinates"].shape) == (37, 2, 2)


def test_export_errors(tmp_path):
    model = small_geoclip()
    model(np.zeros((2, FEATURE_DIM), "float32"))
    with pytest.raises(ValueError, match="gallery is empty"):
        gv.export.export_saved_model(model, tmp_path / "m")
    model.set_gallery(random_gps(10), verbose=0)
    with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1,"):
        gv.export.export_saved_model(model, tmp_path / "m", top_k=11)
    with pytest.raises(ValueError, match="`version` must be an int >= 1"):
        gv.export.export_saved_model(model, tmp_path / "m", version=0)
    with pytest.raises(ValueError, match="gv.GeoCLIP"):
        gv.export.export_saved_model(keras.Sequential(), tmp_path / "m")
    unbuilt = small_geoclip()
    unbuilt.set_gallery(random_gps(10), verbose=0)
    with pytest.raises(ValueError, match="call the model once"):
        gv.export.export_saved_model(unbuilt, tmp_path / "m")
    assert not os.path.exists(tmp_path / "m")


def test_readme_rest_example(tmp_path, monkeypatch):
    """saved_models/README.md: its code runs and its JSON fits the model."""
    text = open(README).read()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, README, "exec"), {})
    import tensorflow as tf

    served = tf.saved_model.load("saved_models/toy/1")
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    blocks = [json.loads(b) for b in blocks]
    assert len(blocks) == 4
    gallery = [[48.8566, 2.3522], [40.7128, -74.006], [-33.8688, 151.2093]]
    for request, documented in zip(blocks[0::2], blocks[1::2]):
        response = rest_predict(served, request)
        assert _structure(response) == _structure(documented), (
            response,
            documented,
        )
    # The documented predict_gps answer holds gallery points and
    # probabilities of a softmax over 3 points.
    for row in blocks[1]["predictions"]:
        for point in row["coordinates"]:
            assert any(np.allclose(point, g, atol=1e-4) for g in gallery)
        assert 0 < sum(row["probabilities"]) <= 1.0001


def _structure(x):
    """Keys and nested list lengths, with numbers replaced by a marker."""
    if isinstance(x, dict):
        return {k: _structure(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_structure(v) for v in x]
    return "number" if isinstance(x, (int, float)) else type(x).__name__
