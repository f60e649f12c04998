"""Image features computed once, stored in shards, resumable after a kill.

Training GeoCLIP's heads over a frozen image backbone (GeoCLIP trains only
the MLP over frozen CLIP) does not need the backbone in every epoch: a CLIP
ViT-L/14 costs about 81 GMAC per photo, far more than the rest of the
model. `extract_features` runs the backbone once over a local corpus and
stores, per photo, its features, coordinates, admin labels and id.

The folder's format (a manifest and whole shards) is described and read
in `gv.data.feature_shards`; its names are also available here.

A run killed at any moment (SIGKILL included) is continued by calling
`extract_features` again with the same arguments: finished shards are kept,
the others computed, and the result has exactly the rows of an
uninterrupted run. `read_shard` checks a shard's integrity and names the
file when it is corrupt or truncated. The `geotagged_features` tfds builder
turns a finished folder into a data set for streamed training.
"""

import os
import queue
import threading

import numpy as np
from keras import ops

from geovario_keras.data.corpus_reader import CorpusReader
from geovario_keras.data.feature_shards import DTYPES
from geovario_keras.data.feature_shards import MANIFEST
from geovario_keras.data.feature_shards import _Shard
from geovario_keras.data.feature_shards import _shard_ranges
from geovario_keras.data.feature_shards import backbone_fingerprint
from geovario_keras.data.feature_shards import read_manifest
from geovario_keras.data.feature_shards import read_shard
from geovario_keras.data.feature_shards import shard_name
from geovario_keras.data.feature_shards import shard_paths
from geovario_keras.data.feature_shards import split_summary
from geovario_keras.saving import folder_lock
from geovario_keras.saving import write_json
from geovario_keras.utils import RowProgress
from geovario_keras.utils import bound_heap_growth
from geovario_keras.utils import check_int

__all__ = [
    "DTYPES",
    "MANIFEST",
    "backbone_fingerprint",
    "compute_shard",
    "extract_features",
    "read_manifest",
    "read_shard",
    "shard_name",
    "shard_paths",
]


def _prefetched(iterator, size):
    """Runs `iterator` in a thread, `size` items ahead (the reading threads
    keep working while the backbone runs); its exceptions are raised here."""
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


def _apply(layer, x):
    return layer(x, training=False)


class _Extractor:
    """Runs the backbone over batches of images, padding the last one."""

    def __init__(self, backbone, batch_size, image_size, workers=1):
        from geovario_keras import backend

        self.fn = backend.inference_function(backbone, _apply)
        # CLIPImageFeatures: CLIP's own resize and centre crop, per photo.
        self.preprocess = getattr(backbone, "preprocess", None)
        self.workers = workers
        self.batch_size = batch_size
        self.images, self.owners = [], []
        dtype = "float32" if self.preprocess is not None else "uint8"
        blank = np.zeros((batch_size, image_size, image_size, 3), dtype)
        self.dim = int(self._run(blank).shape[-1])  # also compiles

    def transform(self, image):
        """An image as the backbone takes it (CLIP: resize and crop)."""
        if self.preprocess is None:
            return image
        return self.preprocess([image])[0]

    def _run(self, images):
        from geovario_keras import backend

        batch = backend.distributed_batch(images)
        return ops.convert_to_numpy(self.fn(batch))

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


def _check_devices(batch_size):
    from geovario_keras import backend

    devices = backend.inference_devices()
    if batch_size % devices:
        raise ValueError(
            f"`batch_size` must be a multiple of the {devices} devices of "
            f"the current `keras.distribution`; got {batch_size}."
        )


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
    workers=None,
):
    """Runs `backbone` once over a corpus and stores the features in shards.

    Resumable: call it again with the same arguments after an interruption
    (even SIGKILL) and only the missing shards are computed. One run at a
    time writes a folder: a second one started while the first runs is
    refused (`RuntimeError`) rather than mixing its files in. Memory holds
    one shard's features and one batch of images, whatever the corpus
    size; images are decoded (and preprocessed) by `workers` threads, a
    bounded window ahead, while the backbone runs. Rows are kept or
    skipped (and counted by reason) exactly as the `geotagged_images`
    builder does.

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
        batch_size: int >= 1. Images per backbone call (over all
            devices: a multiple of their number).
        dtype: `"float16"` (default; half the disk and I/O) or
            `"float32"`.
        overwrite: bool. Delete features of another corpus, backbone or
            setting in `folder` and start again; without it they are an
            error, never overwritten.
        verbose: 0 or 1. Progress lines with rows/s and ETA.
        workers: int >= 1 or None. Threads that read and preprocess
            photos (default: the machine's cores, at most 16). The rows
            and their order do not depend on it.

    Devices: the backend's default device; on JAX, with a
    `keras.distribution` set (`keras.distribution.set_distribution(
    keras.distribution.DataParallel())`), every batch is split over the
    distribution's devices (every local GPU), the backbone replicated.
    The features do not depend on the number of devices.

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
    _check_devices(batch_size)
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}; got {dtype!r}.")
    folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    splits = list(splits or reader.splits())
    if workers is None:
        workers = min(16, os.cpu_count() or 1)
    check_int("workers", workers)
    bound_heap_growth()
    extractor = _Extractor(backbone, batch_size, image_size, workers)
    manifest = {
        "preset": reader.name,
        "corpus": os.path.realpath(reader.root),
        "image_size": image_size,
        "backbone": backbone_fingerprint(backbone),
        "dtype": dtype,
        "feature_dim": extractor.dim,
        "shard_size": shard_size,
    }
    with folder_lock(folder, "extract_features"):
        manifest = _start(folder, manifest, overwrite)
        for split in splits:
            manifest["splits"][split] = _extract_split(
                reader, split, extractor, folder, manifest, verbose
            )
            write_json(os.path.join(folder, MANIFEST), manifest)
        manifest["complete"] = set(manifest["splits"]) >= set(reader.splits())
        write_json(os.path.join(folder, MANIFEST), manifest)
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
    write_json(os.path.join(folder, MANIFEST), manifest)
    return manifest


def _extract_split(reader, split, extractor, folder, manifest, verbose):
    """Computes the missing shards of `split`; returns its manifest entry."""
    size = manifest["shard_size"]
    total = reader.count_rows(split)
    shards = _shard_ranges(folder, split, size, total)
    todo = {k for k, (path, _) in enumerate(shards) if not os.path.isfile(path)}
    done_rows = sum(rows for k, (_, rows) in enumerate(shards) if k not in todo)
    progress = RowProgress(f"features {split}", total, done_rows, verbose)
    open_shards = {}

    def finish(k):
        extractor.flush()
        shard = open_shards.pop(k, None) or _Shard(k)
        shard.save(shards[k][0], manifest["dtype"], extractor.dim)
        todo.discard(k)
        progress.update(shards[k][1])

    rows = reader.rows(
        split,
        include=lambda n: n // size in todo,
        workers=extractor.workers,
        transform=extractor.transform,
    )
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
    return split_summary(folder, split, size, total)


def compute_shard(
    reader, extractor, split, index, shard_size, offset, path, dtype
):
    """Computes shard `index` of `split` alone (reading the CSV from byte
    `offset`, see `CorpusReader.row_offsets`) and writes it to `path`.
    The unit of work of the Apache Beam route (`FeaturesJob`)."""
    shard = _Shard(index)
    start = index * shard_size
    rows = reader.rows(
        split,
        start=start,
        start_offset=offset,
        stop=start + shard_size,
        workers=extractor.workers,
        transform=extractor.transform,
    )
    for n, example, reason in rows:
        if reason:
            shard.skipped[reason] += 1
            continue
        example["row"] = n
        shard.examples.append(example)
        extractor.add(shard, example.pop("image"))
    extractor.flush()
    shard.save(path, dtype, extractor.dim)
