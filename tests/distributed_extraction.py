"""Extracts features of a small generated corpus on 1 device and on 4
data-parallel devices (JAX, `keras.distribution.DataParallel`), in a fresh
process, and prints the comparison as JSON.

Run by `tests/features_test.py`, because the 4 virtual CPU devices must
be configured before JAX initialises:

    KERAS_BACKEND=jax python tests/distributed_extraction.py
"""

import json
import os
import sys
import tempfile

DEVICES = 4
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count={DEVICES}"
)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import geovario_keras as gv  # noqa: E402
from geovario_keras import backend  # noqa: E402
from geovario_keras.data import features as features_lib  # noqa: E402
from geovario_keras.data.corpus_reader import CorpusReader  # noqa: E402
from geovario_keras.testing.tiny_backbone import tiny_backbone  # noqa: E402


def features(folder):
    parts = [
        features_lib.read_shard(path, rows)
        for path, rows in features_lib.shard_paths(folder, "train")
    ]
    return np.concatenate([p["features"] for p in parts]).astype("float32")


def main():
    work = tempfile.mkdtemp()
    corpus = gv.data.write_blue_marble_corpus(
        os.path.join(work, "c"), num_train=150, num_test=10, image_size=32
    )
    reader = CorpusReader("osv5m", corpus, 32)
    backbone = tiny_backbone()
    run = dict(shard_size=64, batch_size=16, verbose=0)
    features_lib.extract_features(reader, backbone, f"{work}/one", **run)
    result = {"devices_before": backend.inference_devices()}
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    result["devices"] = backend.inference_devices()
    batch = backend.distributed_batch(np.zeros((16, 32, 32, 3), "uint8"))
    result["batch_devices"] = len(batch.sharding.device_set)
    features_lib.extract_features(reader, backbone, f"{work}/four", **run)
    one, four = features(f"{work}/one"), features(f"{work}/four")
    result["rows"] = [len(one), len(four)]
    result["max_difference"] = float(np.abs(one - four).max())
    try:
        features_lib.extract_features(
            reader, backbone, f"{work}/bad", **{**run, "batch_size": 18}
        )
        result["error"] = None
    except ValueError as error:
        result["error"] = str(error)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
