"""The stored-features format: a manifest and whole shards.

Layout of a features folder (written by `gv.data.features`):

- `manifest.json`: the corpus, the backbone's fingerprint, the dtype, the
  shard size and, per split, its CSV rows and shards; `"complete": true`
  once every shard is written.
- `{split}-{index:05d}-of-{count:05d}.npz`: shard `index` holds the usable
  rows among the CSV rows `[index * shard_size, (index + 1) * shard_size)`
  (`features`, `gps`, `row`, `id` and the labels) and the skipped rows of
  that range counted by reason. Each is written to a temporary file and
  renamed, so a shard on disk is always whole.

`read_shard` checks a shard's integrity and names the file when it is
corrupt, truncated or inconsistent.
"""

import collections
import hashlib
import json
import os
import uuid
import zipfile

import numpy as np
from keras import ops

from geovario_keras.data.corpus_reader import LABELS

MANIFEST = "manifest.json"

DTYPES = ("float16", "float32")

_KEYS = ("features", "gps", "row", "id") + LABELS


def shard_name(split, index, count):
    """The file name of shard `index` of `count` of `split`."""
    return f"{split}-{index:05d}-of-{count:05d}.npz"


def backbone_fingerprint(backbone):
    """12 hex digits of the backbone's class, config and weights."""
    digest = hashlib.sha1(type(backbone).__name__.encode())
    try:
        config = json.dumps(backbone.get_config(), sort_keys=True, default=str)
    except NotImplementedError:
        config = ""
    digest.update(config.encode())
    for weight in backbone.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(ops.convert_to_numpy(weight)))
    return digest.hexdigest()[:12]


def read_manifest(folder):
    """The manifest of a features folder, or None when there is none."""
    path = os.path.join(os.fspath(folder), MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_shard(path, rows=None):
    """A shard as a dict of arrays (+ `skipped`: counts by reason).

    Raises a `ValueError` naming the file when it cannot be read whole, or
    when its kept and skipped rows do not add up to `rows` (the CSV rows of
    its range), so a damaged shard never yields fewer rows silently.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in _KEYS}
            skipped = json.loads(str(data["skipped"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"Features shard {path!r} is corrupt or truncated ({e}). Delete "
            "it and run `extract_features` again with the same arguments: "
            "only the missing shards are computed."
        ) from e
    n = len(out["row"])
    if any(len(v) != n for v in out.values()) or (
        rows is not None and n + sum(skipped.values()) != rows
    ):
        raise ValueError(
            f"Features shard {path!r} is inconsistent: {n} rows kept and "
            f"{sum(skipped.values())} skipped, expected {rows} in all. "
            "Delete it and run `extract_features` again."
        )
    out["skipped"] = skipped
    return out


def shard_paths(folder, split):
    """`(path, csv_rows)` of every shard of a finished split, in order."""
    manifest = read_manifest(folder)
    if manifest is None or not manifest.get("complete"):
        raise ValueError(
            f"{os.fspath(folder)!r} holds no finished features: run "
            "`gv.data.features.extract_features` (again, to finish it)."
        )
    if split not in manifest["splits"]:
        raise ValueError(
            f"`split` must be one of {sorted(manifest['splits'])} of "
            f"{os.fspath(folder)!r}; got {split!r}."
        )
    total = manifest["splits"][split]["rows"]
    return _shard_ranges(
        os.fspath(folder), split, manifest["shard_size"], total
    )


def _shard_ranges(folder, split, size, total):
    """`(path, csv_rows)` of each shard of a split of `total` CSV rows."""
    count = max(1, -(-total // size))
    return [
        (
            os.path.join(folder, shard_name(split, k, count)),
            max(0, min(size, total - k * size)),
        )
        for k in range(count)
    ]


class _Shard:
    """The rows of one shard while it is computed."""

    def __init__(self, index):
        self.index = index
        self.examples, self.features = [], []
        self.skipped = collections.Counter()

    def save(self, path, dtype, dim):
        features = np.zeros((0, dim), dtype)
        if self.features:
            features = np.concatenate(self.features).astype(dtype)
        rows = {
            "features": features,
            "gps": np.array([e["gps"] for e in self.examples], "float32"),
            "row": np.array([e["row"] for e in self.examples], "int64"),
        }
        rows["gps"] = rows["gps"].reshape(-1, 2)
        for key in ("id",) + LABELS:
            rows[key] = np.array([e[key] for e in self.examples], str)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp.npz"
        np.savez(tmp, skipped=json.dumps(dict(self.skipped)), **rows)
        os.replace(tmp, path)


def split_summary(folder, split, shard_size, total):
    """The manifest entry of a finished split: its CSV rows, shards, kept
    rows and skips by reason, every shard checked whole (`read_shard`)."""
    ranges = _shard_ranges(os.fspath(folder), split, shard_size, total)
    kept, skipped = 0, collections.Counter()
    for path, rows in ranges:
        data = read_shard(path, rows)
        kept += len(data["row"])
        skipped.update(data["skipped"])
    return {
        "rows": total,
        "shards": len(ranges),
        "kept": kept,
        "skipped": dict(skipped),
    }
