"""Trains the same small GeoCLIP on 1 device and on 4 data-parallel
replicas, in a fresh process, and prints the results as JSON.

Run by `tests/distribution_test.py`, because the 4 virtual CPU devices
must be configured before the backend initialises:

    KERAS_BACKEND=jax python tests/distributed_training.py
    KERAS_BACKEND=tensorflow python tests/distributed_training.py

JAX: `keras.distribution.DataParallel` over 4 host devices
(`--xla_force_host_platform_device_count=4`). TensorFlow:
`tf.distribute.MirroredStrategy` over 4 logical CPU devices. Each run
trains 3 steps (3 epochs of one global batch of 256, so the
semivariogram callback fits between steps and the re-weighting is live
in steps 2 and 3) with the plain and the semivariogram loss, without GPS
noise, and with the plain loss and the paper's GPS noise ("noisy"). On
TensorFlow a third run patches out the cross-replica gather, i.e. trains
with per-replica negatives: the control the test expects to differ.
"""

import json
import os
import sys
import warnings

REPLICAS = 4
BACKEND = os.environ.get("KERAS_BACKEND", "jax")
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={REPLICAS}"
    )
elif BACKEND == "tensorflow":
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

import geovario_keras as gv  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.testing import parallel_geoclip  # noqa: E402
from tests.testing import smooth_features  # noqa: E402

BATCH, STEPS = 256, 3
_STRATEGY = []


def strategy():
    """One `MirroredStrategy` per process (a second one's collectives can
    be cancelled on CPU)."""
    if not _STRATEGY:
        devices = [f"/cpu:{i}" for i in range(REPLICAS)]
        _STRATEGY.append(tf.distribute.MirroredStrategy(devices))
    return _STRATEGY[0]


def data():
    return smooth_features(BATCH)


def make_model(method):
    return parallel_geoclip(method)


class StatisticsRecorder(keras.callbacks.Callback):
    """The semivariogram statistics after every step (the semivariogram
    callback resets them when it fits, at the end of each epoch)."""

    def __init__(self):
        super().__init__()
        self.statistics = []

    def on_train_batch_end(self, batch, logs=None):
        stats = self.model.variogram.statistics()
        self.statistics.append([s.tolist() for s in stats])


def train(method, replicated):
    features, gps = data()
    scope = None
    if replicated and BACKEND == "jax":
        keras.distribution.set_distribution(keras.distribution.DataParallel())
    elif replicated:
        scope = strategy().scope()
    try:
        if scope is not None:
            with scope:
                model, callbacks = make_model(method)
        else:
            model, callbacks = make_model(method)
        recorder = StatisticsRecorder()
        with warnings.catch_warnings():  # fits on 256 points may fall back
            warnings.simplefilter("ignore", RuntimeWarning)
            history = model.fit(
                features,
                gps,
                batch_size=BATCH,
                epochs=STEPS,
                shuffle=False,
                verbose=0,
                callbacks=[recorder] + callbacks,
            )
        model.set_gallery(gps, verbose=0)
        images = model.encode_image(features)
        logits, _ = model.gallery.retrieve(images, 1)
    finally:
        keras.distribution.set_distribution(None)

    def numpy(v):
        return np.asarray(keras.ops.convert_to_numpy(v)).tolist()

    return {
        "loss": history.history["loss"],
        "weights": [numpy(w) for w in model.trainable_weights],
        "queue": numpy(model.queue.features),
        "statistics": recorder.statistics,
        "params": numpy(model.variogram.params),
        "negatives": numpy(model.variogram.negatives),
        "images": numpy(images),
        "gallery": numpy(model.gallery.embeddings),
        "top1_logit": numpy(logits),
    }


def sharded_gallery():
    """JAX: a gallery sharded across the 4 devices by a `ModelParallel`
    layout (data-parallel training, gallery rows split by device), against
    the same model's replicated gallery."""
    from keras.distribution import DeviceMesh
    from keras.distribution import LayoutMap
    from keras.distribution import ModelParallel

    features, gps = data()
    gallery = np.random.default_rng(1).uniform(
        [-90, -180], [90, 180], (1000, 2)
    )
    mesh = DeviceMesh((REPLICAS,), ["batch"], keras.distribution.list_devices())
    layout = LayoutMap(mesh)
    layout[".*gallery/(coords|embeddings)"] = ("batch", None)
    keras.distribution.set_distribution(
        ModelParallel(layout_map=layout, batch_dim_name="batch")
    )
    try:
        model, _ = make_model("geoclip")
        model.fit(features, gps, batch_size=BATCH, epochs=1, verbose=0)
        model.set_gallery(gallery, verbose=0)
        value = model.gallery.embeddings.value
        shards = [list(s.data.shape) for s in value.addressable_shards]
        coords, probs = model.predict_gps(features, top_k=5)
        try:
            model.set_gallery(gallery[:999], verbose=0)
            indivisible = "no error"
        except ValueError as error:
            indivisible = str(error)
        kept = model.gallery.size, model.predict_gps(features, top_k=5)[0]
    finally:
        keras.distribution.set_distribution(None)
    model.set_gallery(gallery, verbose=0)  # replicated (no distribution)
    want_coords, want_probs = model.predict_gps(features, top_k=5)
    return {
        "shards": shards,
        "coords": coords.tolist(),
        "probs": probs.tolist(),
        "want_coords": want_coords.tolist(),
        "want_probs": want_probs.tolist(),
        "indivisible": indivisible,
        "kept_size": kept[0],
        "kept_coords": kept[1].tolist(),
    }


def main():
    devices = len(keras.distribution.list_devices())
    results = {"devices": devices}
    for method in ("geoclip", "semivariogram", "noisy"):
        results[method] = {
            "single": train(method, False),
            "replicated": train(method, True),
        }
        if BACKEND == "tensorflow" and method != "noisy":  # the control
            gather = gv.backend.gather_replicas
            gv.backend.gather_replicas = lambda *values: values
            try:
                results[method]["per_replica"] = train(method, True)
            finally:
                gv.backend.gather_replicas = gather
    if BACKEND == "jax":
        results["sharded_gallery"] = sharded_gallery()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
