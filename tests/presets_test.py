"""Presets: `save_to_preset` / `from_preset`, and the released weights.

References: the model that was saved (its predictions must come back
exactly, gallery and reference set included), keras-hub's documented local
preset layout (the three files and their keys), and
`gv.pretrained.geoclip_model` for the converted released weights.
"""

import json
import os

import keras
import numpy as np
import pytest

import geovario_keras as gv
from tests.testing import random_gps
from tests.testing import small_geoclip
from tests.testing import toy_features


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    gps = random_gps(256, seed=0, max_lat=80.0)
    x = toy_features(gps)
    model = small_geoclip(queue_size=64)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    model.fit(x, gps, batch_size=64, epochs=1, verbose=0)
    model.set_gallery(random_gps(500, seed=1), verbose=0)
    model.set_reference(x, gps, verbose=0)
    return model, x, gps


def test_round_trip_reproduces_predictions_exactly(trained, tmp_path):
    model, x, gps = trained
    path = model.save_to_preset(tmp_path / "preset")
    assert sorted(os.listdir(path)) == sorted(gv.presets.PRESET_FILES)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    assert config["class_name"] == "GeoCLIP"
    assert "compile_config" not in config
    with open(os.path.join(path, "metadata.json")) as f:
        metadata = json.load(f)
    assert metadata["parameter_count"] == model.count_params()
    assert metadata["keras_version"] == keras.__version__

    loaded = gv.GeoCLIP.from_preset(path)
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )
    for mode in ("gallery", "reference", "hybrid"):
        want = model.predict_gps(x[:20], top_k=3, mode=mode)
        got = loaded.predict_gps(x[:20], top_k=3, mode=mode)
        np.testing.assert_array_equal(got[0], want[0])
        if mode == "hybrid":
            # Hybrid encodes the neighbours' locations (320 rows here). On
            # TensorFlow the saved model's cached encoding function was
            # traced for other batch sizes before and runs a shape-generic
            # graph, the loaded model's a fresh one: oneDNN's float sums may
            # then differ in the last bits (measured 1.2e-5).
            np.testing.assert_allclose(got[1], want[1], rtol=0, atol=5e-5)
        else:
            np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(
        loaded.encode_location(gps), model.encode_location(gps)
    )
    # The loaded model trains (compiled by the user: a preset holds no
    # optimizer state).
    loaded.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    history = loaded.fit(x, gps, batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_architecture_only(trained, tmp_path):
    model, x, _ = trained
    path = model.save_to_preset(tmp_path / "preset")
    fresh = gv.GeoCLIP.from_preset(path, load_weights=False)
    # Compared as JSON (build shapes come back as lists, not tuples).
    assert json.dumps(fresh.get_config()) == json.dumps(model.get_config())
    assert fresh.count_params() == model.count_params()


def test_never_overwrites_a_good_preset(trained, tmp_path, monkeypatch):
    model, x, _ = trained
    path = model.save_to_preset(tmp_path / "preset")
    before = {
        f: open(os.path.join(path, f), "rb").read() for f in os.listdir(path)
    }
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_to_preset(path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_weights", fail)
    with pytest.raises(OSError, match="disk full"):
        model.save_to_preset(path, overwrite=True)
    after = {
        f: open(os.path.join(path, f), "rb").read() for f in os.listdir(path)
    }
    assert after == before
    # Nothing left behind next to it either.
    assert os.listdir(tmp_path) == ["preset"]
    monkeypatch.undo()
    model.save_to_preset(path, overwrite=True)
    gv.GeoCLIP.from_preset(path)


def test_bad_presets_raise_clear_errors(trained, tmp_path):
    model, _, _ = trained
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        gv.GeoCLIP.from_preset(tmp_path / "missing")
    path = model.save_to_preset(tmp_path / "preset")
    os.remove(os.path.join(path, "model.weights.h5"))
    with pytest.raises(ValueError, match=r"missing \['model.weights.h5'\]"):
        gv.GeoCLIP.from_preset(path)
    with pytest.raises(ValueError, match="needs a built model"):
        small_geoclip().save_to_preset(tmp_path / "unbuilt")


def test_released_weights_as_a_preset(geoclip_wheel, tmp_path):
    # The converted preset reproduces gv.pretrained.geoclip_model exactly
    # (without the 100K gallery, whose encoding dominates on a CPU; the
    # gallery is a weight like any other, covered by the round trip above).
    path = gv.pretrained.write_geoclip_preset(
        tmp_path / "geoclip", geoclip_wheel, gallery=False
    )
    loaded = gv.GeoCLIP.from_preset(path)
    released = gv.pretrained.geoclip_model(geoclip_wheel, gallery=False)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(8, 768)).astype("float32")
    gps = random_gps(64, seed=3)
    np.testing.assert_array_equal(
        loaded.encode_image(features), released.encode_image(features)
    )
    np.testing.assert_array_equal(
        loaded.encode_location(gps), released.encode_location(gps)
    )
    assert float(keras.ops.convert_to_numpy(loaded.logit_scale)) == float(
        keras.ops.convert_to_numpy(released.logit_scale)
    )
