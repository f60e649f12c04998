"""Image features computed once, stored in shards, resumable after a kill.

Training GeoCLIP's heads over a frozen image backbone (GeoCLIP trains only
the MLP over frozen CLIP) does not need the backbone in every epoch: a CLIP
ViT-L/14 costs about 81 GMAC per photo, far more than the rest of the
model. `extract_features` runs the backbone once over a local corpus and
stores, per photo, its features, coordinates, admin labels and id.

Layout of the output folder:

- `manifest.json`: the corpus, the backbone's fingerprint, the dtype, the
  shard size and, per split, its CSV rows and shards; `"complete": true`
  once every shard is written.
- `{split}-{index:05d}-of-{count:05d}.npz`: shard `index` holds the usable
  rows among the CSV rows `[index * shard_size, (index + 1) * shard_size)`
  (`features`, `gps`, `row`, `id` and the labels) and the skipped rows of
  that range counted by reason. Each is written to a temporary file and
  renamed, so a shard on disk is always whole.

A run killed at any moment (SIGKILL included) is continued by calling
`extract_features` again with the same arguments: finished shards are kept,
the others computed, and the result has exactly the rows of an
uninterrupted run. `read_shard` checks a shard's integrity and names the
file when it is corrupt or truncated. The `geotagged_features` tfds builder
turns a finished folder into a data set for streamed training.
"""

import collections
import hashlib
import json
import os
import queue
import threading
import time
import uuid
import zipfile

import numpy as np
from keras import ops

from geovario_keras.data.corpus_reader import LABELS
from geovario_keras.data.corpus_reader import CorpusReader
from geovario_keras.utils import check_int

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


def _write_json(path, value):
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


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


class _Progress:
    """One line per update: photos done, photos/s and ETA (this run)."""

    def __init__(self, split, total, done, verbose, every_s=10.0):
        self.split, self.total, self.done = split, total, done
        self.start_done, self.start = done, time.time()
        self.verbose, self.every_s, self.last = verbose, every_s, 0.0

    def update(self, rows):
        self.done += rows
        now = time.time()
        final = self.done >= self.total
        if not self.verbose or (now - self.last < self.every_s and not final):
            return
        self.last = now
        rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        print(
            f"features {self.split}: {self.done:,}/{self.total:,} rows "
            f"({100 * self.done / max(self.total, 1):.1f} %), "
            f"{rate:,.0f} rows/s, ETA {eta:,.0f} s",
            flush=True,
        )


def _prefetched(iterator, size):
    """Runs `iterator` in a thread, `size` items ahead (images decode while
    the backbone runs); its exceptions are raised here."""
    items = queue.Queue(maxsize=size)
    end = object()

    def work():
        try:
            for item in iterator:
                items.put(item)
        except BaseException as e:  # handed to the consumer
            items.put(e)
        items.put(end)

    threading.Thread(target=work, daemon=True).start()
    while (item := items.get()) is not end:
        if isinstance(item, BaseException):
            raise item
        yield item


def _preprocessed(rows, preprocess):
    """`rows` with each image through the backbone's `preprocess`."""
    for n, example, reason in rows:
        if example is not None:
            example["image"] = preprocess([example["image"]])[0]
        yield n, example, reason


def _apply(layer, x):
    return layer(x, training=False)


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


class _Extractor:
    """Runs the backbone over batches of images, padding the last one."""

    def __init__(self, backbone, batch_size, image_size):
        from geovario_keras import backend

        self.fn = backend.inference_function(backbone, _apply)
        # CLIPImageFeatures: CLIP's own resize and centre crop, per photo.
        self.preprocess = getattr(backbone, "preprocess", None)
        self.batch_size = batch_size
        self.images, self.owners = [], []
        dtype = "float32" if self.preprocess is not None else "uint8"
        blank = np.zeros((batch_size, image_size, image_size, 3), dtype)
        self.dim = int(self._run(blank).shape[-1])  # also compiles

    def _run(self, images):
        return ops.convert_to_numpy(self.fn(ops.convert_to_tensor(images)))

    def add(self, shard, image):
        self.images.append(image)
        self.owners.append(shard)
        if len(self.images) == self.batch_size:
            self.flush()

    def flush(self):
        n = len(self.images)
        if not n:
            return
        batch = np.stack(self.images)
        if n < self.batch_size:
            pad = np.zeros(
                (self.batch_size - n,) + batch.shape[1:], batch.dtype
            )
            batch = np.concatenate([batch, pad])
        features = self._run(batch)[:n]
        for shard, row in zip(self.owners, features):
            shard.features.append(row[None])
        self.images, self.owners = [], []


def extract_features(
    reader,
    backbone,
    folder,
    splits=None,
    shard_size=4096,
    batch_size=64,
    dtype="float16",
    overwrite=False,
    verbose=1,
):
    """Runs `backbone` once over a corpus and stores the features in shards.

    Resumable: call it again with the same arguments after an interruption
    (even SIGKILL) and only the missing shards are computed. Memory holds
    one shard's features and one batch of images, whatever the corpus
    size; images are decoded in a background thread while the backbone
    runs. Rows are kept or skipped (and counted by reason) exactly as the
    `geotagged_images` builder does.

    Args:
        reader: a `gv.data.corpus_reader.CorpusReader` with an
            `image_size` (the backbone's input size, e.g. 224 for CLIP).
        backbone: a built Keras layer or model from uint8 images
            `(B, S, S, 3)` to features `(B, D)`, e.g.
            `gv.pretrained.clip_image_backbone(folder)`.
        folder: the output folder (created).
        splits: the splits to extract (default: every split whose CSV
            exists).
        shard_size: int >= 1. CSV rows per shard (the unit of resumption).
        batch_size: int >= 1. Images per backbone call.
        dtype: `"float16"` (default; half the disk and I/O) or
            `"float32"`.
        overwrite: bool. Delete features of another corpus, backbone or
            setting in `folder` and start again; without it they are an
            error, never overwritten.
        verbose: 0 or 1. Progress lines with rows/s and ETA.

    Returns:
        The manifest (dict), also in `folder/manifest.json`.

    Example:

    ```python
    reader = gv.data.corpus_reader.CorpusReader("osv5m", "~/osv5m", 224)
    clip = gv.pretrained.clip_image_backbone("~/clip-vit-l14")
    gv.data.features.extract_features(reader, clip, "~/osv5m_features")
    ```
    """
    image_size = getattr(backbone, "image_size", None) or reader.image_size
    if not isinstance(reader, CorpusReader) or not image_size:
        raise ValueError(
            "`reader` must be a `CorpusReader`, with an `image_size` (the "
            "backbone's input size) unless the backbone preprocesses "
            f"photos itself (`gv.layers.CLIPImageFeatures`); got {reader!r}."
        )
    check_int("shard_size", shard_size)
    check_int("batch_size", batch_size)
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}; got {dtype!r}.")
    folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    splits = list(splits or reader.splits())
    extractor = _Extractor(backbone, batch_size, image_size)
    manifest = {
        "preset": reader.name,
        "corpus": os.path.realpath(reader.root),
        "image_size": image_size,
        "backbone": backbone_fingerprint(backbone),
        "dtype": dtype,
        "feature_dim": extractor.dim,
        "shard_size": shard_size,
    }
    manifest = _start(folder, manifest, overwrite)
    for split in splits:
        manifest["splits"][split] = _extract_split(
            reader, split, extractor, folder, manifest, verbose
        )
        _write_json(os.path.join(folder, MANIFEST), manifest)
    manifest["complete"] = set(manifest["splits"]) >= set(reader.splits())
    _write_json(os.path.join(folder, MANIFEST), manifest)
    return manifest


def _start(folder, manifest, overwrite):
    """The manifest to continue: the folder's when it matches `manifest`."""
    old = read_manifest(folder)
    if old is not None:
        same = {k: old.get(k) for k in manifest} == manifest
        if same:
            # Partial files of a killed run (one writer per folder).
            for name in os.listdir(folder):
                if ".tmp" in name:
                    os.remove(os.path.join(folder, name))
            return old
        if not overwrite:
            diff = {
                k: (old.get(k), v)
                for k, v in manifest.items()
                if old.get(k) != v
            }
            raise FileExistsError(
                f"{folder!r} holds features of another setting (was, now: "
                f"{diff}). Pass `overwrite=True` to delete them, or choose "
                "another folder."
            )
        for name in os.listdir(folder):
            if name == MANIFEST or name.endswith(".npz"):
                os.remove(os.path.join(folder, name))
    os.makedirs(folder, exist_ok=True)
    manifest = dict(manifest, splits={}, complete=False)
    _write_json(os.path.join(folder, MANIFEST), manifest)
    return manifest


def _extract_split(reader, split, extractor, folder, manifest, verbose):
    """Computes the missing shards of `split`; returns its manifest entry."""
    size = manifest["shard_size"]
    total = reader.count_rows(split)
    shards = _shard_ranges(folder, split, size, total)
    todo = {k for k, (path, _) in enumerate(shards) if not os.path.isfile(path)}
    done_rows = sum(rows for k, (_, rows) in enumerate(shards) if k not in todo)
    progress = _Progress(split, total, done_rows, verbose)
    open_shards = {}

    def finish(k):
        extractor.flush()
        shard = open_shards.pop(k, None) or _Shard(k)
        shard.save(shards[k][0], manifest["dtype"], extractor.dim)
        todo.discard(k)
        progress.update(shards[k][1])

    rows = reader.rows(split, include=lambda n: n // size in todo)
    if extractor.preprocess is not None:
        rows = _preprocessed(rows, extractor.preprocess)
    for n, example, reason in _prefetched(rows, 2 * extractor.batch_size):
        k = n // size
        for old in [j for j in open_shards if j < k]:
            finish(old)
        shard = open_shards.setdefault(k, _Shard(k))
        if reason:
            shard.skipped[reason] += 1
            continue
        example["row"] = n
        shard.examples.append(example)
        extractor.add(shard, example.pop("image"))
    for k in sorted(set(open_shards) | todo):  # the last; an empty split
        finish(k)
    kept, skipped = 0, collections.Counter()
    for path, rows in shards:
        data = read_shard(path, rows)
        kept += len(data["row"])
        skipped.update(data["skipped"])
    return {
        "rows": total,
        "shards": len(shards),
        "kept": kept,
        "skipped": dict(skipped),
    }


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
