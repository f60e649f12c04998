"""Finished feature shards of random rows, without a corpus or a backbone.

`write_synthetic_features(folder, rows, dim)` writes what
`gv.data.features.extract_features` would (shards, manifest) for `rows`
training rows of random float16 features at uniformly random places on
the sphere, so `gv.data.geotagged_features(folder)` builds on it: the
input of the at-scale benchmarks and of the tests of training on stored
features.
"""

import json
import os

import numpy as np

from geovario_keras.data import features as features_lib
from geovario_keras.data.corpus_reader import LABELS


def write_synthetic_features(folder, rows, dim, shard_size=65536, seed=0):
    """`rows` training rows (and max(1000, rows / 100) test rows) of
    `dim`-d features as finished feature shards of `shard_size` rows."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    splits = {"train": rows, "test": max(1000, rows // 100)}
    manifest = {
        "preset": "synthetic",
        "corpus": "none",
        "image_size": 0,
        "backbone": f"random-{seed}",
        "dtype": "float16",
        "feature_dim": dim,
        "shard_size": shard_size,
        "splits": {},
        "complete": True,
    }
    for split, total in splits.items():
        shards = features_lib._shard_ranges(folder, split, shard_size, total)
        for k, (path, n) in enumerate(shards):
            lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
            lon = rng.uniform(-180, 180, n)
            data = {
                "features": rng.standard_normal((n, dim)).astype("float16"),
                "gps": np.stack([lat, lon], 1).astype("float32"),
                "row": np.arange(k * shard_size, k * shard_size + n),
                "id": np.array([str(i) for i in range(n)]),
                **{key: np.full(n, "") for key in LABELS},
            }
            np.savez(path, skipped="{}", **data)
        manifest["splits"][split] = {
            "rows": total,
            "shards": len(shards),
            "kept": total,
            "skipped": {},
        }
    with open(os.path.join(folder, features_lib.MANIFEST), "w") as f:
        json.dump(manifest, f)
