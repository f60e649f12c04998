"""Features extraction as independent shards, for Apache Beam workers.

`extract_features` runs on one machine; `FeaturesJob` splits the same work
into shards that Apache Beam runs on its runners (the DirectRunner with
several processes locally; Dataflow, Flink or Spark on a cluster), through
the `geotagged_features` builder (`gv.data.geotagged_features_beam`). The
shards, the manifest and the rows are those `extract_features` writes.
"""

import os

from geovario_keras.data.corpus_reader import CorpusReader
from geovario_keras.data.feature_shards import DTYPES
from geovario_keras.data.feature_shards import MANIFEST
from geovario_keras.data.feature_shards import _shard_ranges
from geovario_keras.data.feature_shards import backbone_fingerprint
from geovario_keras.data.feature_shards import read_shard
from geovario_keras.data.feature_shards import split_summary
from geovario_keras.data.features import _Extractor
from geovario_keras.data.features import _start
from geovario_keras.data.features import compute_shard
from geovario_keras.saving import write_json
from geovario_keras.utils import check_int


class FeaturesJob:
    """`extract_features` as independent shards, for Apache Beam workers.

    Picklable: each worker builds its own reader and backbone (`setup`),
    computes the shards it is given (skipping those already on disk, so a
    killed job resumes) and yields their rows. The shards and manifest are
    those `extract_features` writes, with the same rows; the driver plans
    the shards (`plan`) and writes the manifest (`start`, `finish`).

    Args:
        preset, root, image_size: the `CorpusReader`.
        backbone_fn: a picklable zero-argument callable returning the
            backbone, e.g. `functools.partial(
            gv.pretrained.clip_image_backbone, "~/clip-vit-l14")`.
        folder: the features folder.
        shard_size, batch_size, dtype: as `extract_features`.
        workers: int >= 1. Threads reading photos in each Beam worker.
    """

    def __init__(
        self,
        preset,
        root,
        backbone_fn,
        folder,
        image_size=None,
        shard_size=4096,
        batch_size=64,
        dtype="float16",
        workers=2,
    ):
        check_int("shard_size", shard_size)
        check_int("workers", workers)
        self.workers = workers
        check_int("batch_size", batch_size)
        if dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {DTYPES}; got {dtype!r}.")
        self.preset, self.root, self.image_size = preset, root, image_size
        self.backbone_fn = backbone_fn
        self.folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
        self.shard_size, self.batch_size, self.dtype = (
            shard_size,
            batch_size,
            dtype,
        )

    def reader(self):
        return CorpusReader(self.preset, self.root, self.image_size)

    def setup(self):
        """Builds this process's reader and backbone (once per worker)."""
        backbone = self.backbone_fn()
        size = getattr(backbone, "image_size", None) or self.image_size
        self._reader = self.reader()
        self._extractor = _Extractor(
            backbone, self.batch_size, size, self.workers
        )

    def start(self, overwrite=False):
        """Driver: the manifest of a new or continued job.

        Called with `gv.saving.folder_lock(self.folder, ...)` held.
        """
        backbone = self.backbone_fn()
        size = getattr(backbone, "image_size", None) or self.image_size
        manifest = {
            "preset": self.preset,
            "corpus": os.path.realpath(self.root),
            "image_size": size,
            "backbone": backbone_fingerprint(backbone),
            "dtype": self.dtype,
            "feature_dim": _Extractor(backbone, 1, size).dim,
            "shard_size": self.shard_size,
        }
        # It deletes the partial files of a killed run: the caller holds
        # the folder's lock (`geotagged_features_beam`, to the job's end).
        return _start(self.folder, manifest, overwrite)

    def plan(self, split):
        """Driver: `(split, index, offset, rows, path)` of every shard."""
        offsets, total = self.reader().row_offsets(split, self.shard_size)
        ranges = _shard_ranges(self.folder, split, self.shard_size, total)
        offsets = offsets or [0]
        return [
            (split, k, offsets[k], rows, path)
            for k, (path, rows) in enumerate(ranges)
        ], total

    def shard_rows(self, item):
        """Worker: the rows of one planned shard, computed if missing."""
        split, index, offset, rows, path = item
        if not hasattr(self, "_extractor"):
            self.setup()
        if not os.path.isfile(path):
            compute_shard(
                self._reader,
                self._extractor,
                split,
                index,
                self.shard_size,
                offset,
                path,
                self.dtype,
            )
        return read_shard(path, rows)

    def finish(self, manifest, totals):
        """Driver: the manifest, complete, with each split's counts."""
        for split, total in totals.items():
            manifest["splits"][split] = split_summary(
                self.folder, split, self.shard_size, total
            )
        manifest["complete"] = set(manifest["splits"]) >= set(
            self.reader().splits()
        )
        write_json(os.path.join(self.folder, MANIFEST), manifest)
        return manifest

    def __getstate__(self):  # workers build their own reader and backbone
        return {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("_reader", "_extractor")
        }
