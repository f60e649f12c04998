"""Data-parallel training trains the single-device objective (global
negatives): 4 replicas with global batch B match 1 device with batch B.

The replicated runs happen in a fresh process (`distributed_training.py`)
because the 4 virtual CPU devices must exist before the backend starts.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import geovario_keras as gv
from tests.testing import backend

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("geoclip", "semivariogram", "noisy")


@pytest.fixture(scope="module")
def runs():
    if backend() not in ("jax", "tensorflow"):
        pytest.skip("data-parallel training runs on JAX and TensorFlow")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "distributed_training.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def _arrays(run, key):
    return [np.asarray(v, "float64") for v in np.atleast_1d(run[key])]


@pytest.mark.parametrize("method", METHODS)
def test_replicas_train_the_single_device_objective(runs, method):
    assert runs["devices"] == 4
    single = runs[method]["single"]
    replicated = runs[method]["replicated"]
    np.testing.assert_allclose(replicated["loss"], single["loss"], rtol=1e-5)
    for got, want in zip(replicated["weights"], single["weights"]):
        np.testing.assert_allclose(got, want, atol=1e-5)
    for key in ("queue", "images", "gallery"):
        np.testing.assert_allclose(replicated[key], single[key], atol=1e-4)
    # The semivariogram statistics after every step: each pair counted
    # once (not once per replica, not only within a replica's shard).
    got = np.asarray(replicated["statistics"])
    want = np.asarray(single["statistics"])
    np.testing.assert_array_equal(got[:, 0], want[:, 0])
    np.testing.assert_allclose(got[:, 1:], want[:, 1:], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(
        replicated["negatives"], single["negatives"], rtol=1e-3
    )
    np.testing.assert_allclose(
        replicated["params"], single["params"], rtol=1e-4
    )
    if method == "semivariogram":
        # Per epoch (the callback resets them when it fits), the pairs of
        # each of the 256 images with the other 255 batch images and the
        # queue's copies of them (1 copy in epoch 2, 2 in epoch 3; its
        # own copies, at identical coordinates, are left out).
        per_image = np.array([255, 2 * 255, 3 * 255])
        np.testing.assert_array_equal(want[:, 0].sum(-1), 256 * per_image)
        # and the fit is live in steps 2 and 3
        assert gv.semivariogram.models.PackedParams.unpack(
            np.asarray(single["params"])
        ).active


@pytest.mark.parametrize("method", METHODS)
def test_per_replica_negatives_would_be_caught(runs, method):
    # The control (TensorFlow): the same replicas without the cross-replica
    # gather contrast each image with its own shard of 64: the loss drops
    # by about log(256 / 64) and the statistics see a quarter of the pairs
    # in each shard.
    if "per_replica" not in runs[method]:
        pytest.skip("TensorFlow only, without noise")
    single = runs[method]["single"]
    local = runs[method]["per_replica"]
    drop = np.asarray(single["loss"]) - np.asarray(local["loss"])
    assert np.all(drop > 1.0), drop
    if method != "semivariogram":  # no pair statistics
        return
    counts = np.asarray(local["statistics"])[:, 0].sum(-1)
    assert np.all(counts < np.asarray(single["statistics"])[:, 0].sum(-1) / 4)


def test_gallery_sharded_across_devices(runs):
    if "sharded_gallery" not in runs:
        pytest.skip("JAX: keras.distribution layouts")
    sharded = runs["sharded_gallery"]
    assert sharded["shards"] == [[250, 32]] * 4  # 1,000 rows over 4 devices
    np.testing.assert_allclose(sharded["coords"], sharded["want_coords"])
    np.testing.assert_allclose(
        sharded["probs"], sharded["want_probs"], rtol=1e-5, atol=1e-7
    )
    assert "999 points cannot be sharded" in sharded["indivisible"]
    assert sharded["kept_size"] == 1000  # the refused gallery left it as is
    np.testing.assert_allclose(sharded["kept_coords"], sharded["coords"])


def _tiny_model():
    model = gv.GeoCLIP(
        gv.layers.ImageEncoder(None, embed_dim=8, hidden_units=16),
        gv.layers.LocationEncoder(
            num_features=8, hidden_units=16, hidden_layers=1, embed_dim=8
        ),
        queue_size=0,
    )
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    return model


def _fit(model):
    rng = np.random.default_rng(0)
    gps = rng.uniform([-60, -180], [60, 180], (16, 2)).astype("float32")
    x = rng.normal(size=(16, 4)).astype("float32")
    return model.fit(x, gps, batch_size=8, epochs=1, verbose=0)


def test_keras_distribution_refused_where_unsupported():
    if backend() == "jax":
        pytest.skip("keras.distribution is JAX's data-parallel route")
    model = _tiny_model()
    device = "cpu:0"
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=[device])
    )
    try:
        expected = "PyTorch" if backend() == "torch" else "MirroredStrategy"
        with pytest.raises(RuntimeError, match=expected):
            _fit(model)
    finally:
        keras.distribution.set_distribution(None)
    _fit(model)  # without the distribution it trains


def test_torch_process_group_refused(monkeypatch):
    if backend() != "torch":
        pytest.skip("PyTorch only")
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.raises(RuntimeError, match="2 processes.*per-replica"):
        _fit(_tiny_model())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"job_addresses": "127.0.0.1", "process_id": 0}, "host:port"),
        ({"job_addresses": "a:1,b:2", "process_id": 2}, r"\[0, 1\]"),
        ({"job_addresses": "a:1,b:2", "process_id": None}, "process_id"),
        (
            {
                "job_addresses": "a:1,b:2,c:3",
                "num_processes": 2,
                "process_id": 0,
            },
            "3 addresses|every process's address",
        ),
        ({"job_addresses": "a:1,b:2", "num_processes": 0}, "num_processes"),
        ({"failure_timeout_s": 0}, "failure_timeout_s"),
    ],
)
def test_data_parallel_refuses_bad_arguments(kwargs, message, monkeypatch):
    for name in ("JOB_ADDRESSES", "NUM_PROCESSES", "PROCESS_ID"):
        monkeypatch.delenv(f"KERAS_DISTRIBUTION_{name}", raising=False)
    with pytest.raises(ValueError, match=message):
        gv.backend.data_parallel(**kwargs)


def test_data_parallel_alone_and_torch(monkeypatch):
    for name in ("JOB_ADDRESSES", "NUM_PROCESSES", "PROCESS_ID"):
        monkeypatch.delenv(f"KERAS_DISTRIBUTION_{name}", raising=False)
    if backend() == "torch":
        with pytest.raises(RuntimeError, match="PyTorch"):
            gv.backend.data_parallel()
        return
    assert gv.backend.process_count() == 1
    assert gv.backend.process_index() == 0
