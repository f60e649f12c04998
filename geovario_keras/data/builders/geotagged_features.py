"""The `geotagged_features` builder: stored image features of a corpus.

Reads a folder written by `gv.data.features.extract_features` (the
features of every usable photo, its coordinates, labels and id) into a
tfds data set, for streamed training (`gv.data.streams`).
`geotagged_features(folder)` builds it if needed.
"""

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

from geovario_keras.data import features as features_lib
from geovario_keras.data.builders.tfds_utils import prepare
from geovario_keras.data.corpus_reader import LABELS
from geovario_keras.saving import folder_lock
from geovario_keras.utils import check_int


@dataclasses.dataclass
class GeotaggedFeaturesConfig(tfds.core.BuilderConfig):
    """`feature_dim` and `dtype`: those of the features folder."""

    feature_dim: int = 768
    dtype: str = "float16"


class GeotaggedFeatures(tfds.core.GeneratorBasedBuilder):
    """Image features of a geotagged corpus, one example per photo.

    Build from a finished features folder (`manual_dir`, written by
    `gv.data.features.extract_features`). Example keys: `features`
    (`(feature_dim,)`, the folder's dtype), `gps` (float32 latitude,
    longitude), `id`, `row` (the photo's CSV row) and the admin labels.
    tfds stores the examples in a random order fixed by their keys (the
    CSV rows), so that a stream with a small shuffle buffer still mixes
    the whole corpus; every shard is checked whole while building, so a
    damaged shard is an error that names its file, never fewer rows.
    """

    VERSION = tfds.core.Version("1.0.0")
    # With `job` (a `gv.data.features_beam.FeaturesJob`) the examples come
    # from an Apache Beam pipeline that computes the missing shards.
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the folder written by gv.data.features.extract_features as "
        "manual_dir."
    )

    def __init__(self, *, job=None, **kwargs):
        self._job = job
        super().__init__(**kwargs)

    def _info(self):
        config = self.builder_config
        feats = {
            # Raw bytes: float16 stays 2 bytes a value on disk (a float
            # list would store 4), and a batch decodes in one op.
            "features": tfds.features.Tensor(
                shape=(config.feature_dim,),
                dtype=np.dtype(config.dtype),
                encoding=tfds.features.Encoding.BYTES,
            ),
            "gps": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "row": tfds.features.Scalar(dtype=np.int64),
            "id": tfds.features.Text(),
        }
        feats.update({k: tfds.features.Text() for k in LABELS})
        return self.dataset_info_from_configs(
            description=self.__doc__,
            features=tfds.features.FeaturesDict(feats),
            supervised_keys=("features", "gps"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        if self._job is not None:
            return self._beam_split_generators()
        folder = os.fspath(dl_manager.manual_dir)
        manifest = features_lib.read_manifest(folder)
        if manifest is None or not manifest.get("complete"):
            raise ValueError(
                f"{folder!r} holds no finished features: run "
                "`gv.data.features.extract_features` (again, to finish it)."
            )
        self.info.metadata["manifest"] = manifest
        return {
            split: self._generate_examples(folder, split)
            for split in manifest["splits"]
        }

    def _beam_split_generators(self):
        beam = tfds.core.lazy_imports.apache_beam
        job, generators = self._job, {}
        self.totals = {}
        for split in job.reader().splits():
            items, self.totals[split] = job.plan(split)
            generators[split] = f"shards_{split}" >> beam.Create(
                items
            ) | f"rows_{split}" >> beam.ParDo(_shard_examples_fn(job))
        return generators

    def _generate_examples(self, folder, split):
        for path, rows in features_lib.shard_paths(folder, split):
            yield from _examples(features_lib.read_shard(path, rows))


def _examples(shard):
    for i, row in enumerate(shard["row"]):
        yield (
            int(row),
            {
                "features": shard["features"][i],
                "gps": shard["gps"][i],
                "row": int(row),
                **{k: shard[k][i] for k in ("id",) + LABELS},
            },
        )


def _shard_examples_fn(job):
    """A Beam `DoFn`: planned shard -> its examples (one backbone per
    worker, built in `setup`)."""
    beam = tfds.core.lazy_imports.apache_beam

    class ShardExamples(beam.DoFn):
        def __init__(self, job):
            self.job = job

        def setup(self):
            self.job.setup()

        def process(self, item):
            yield from _examples(self.job.shard_rows(item))

    return ShardExamples(job)


def _config(manifest):
    digest = hashlib.sha1(
        repr(sorted((k, str(v)) for k, v in manifest.items())).encode()
    ).hexdigest()[:10]
    return GeotaggedFeaturesConfig(
        name=f"{manifest['preset']}_{digest}",
        feature_dim=int(manifest["feature_dim"]),
        dtype=manifest["dtype"],
    )


def geotagged_features_beam(
    job, data_dir=None, beam_options=None, overwrite=False
):
    """The `geotagged_features` data set computed by an Apache Beam
    pipeline: the extraction of `job` (a `gv.data.features_beam.
    FeaturesJob`) runs on Beam's workers, one shard per element.

    Shards already in `job.folder` are read, not recomputed (a killed job
    resumes); the folder ends complete, as `extract_features` leaves it,
    with the same rows. Needs `apache-beam` (the `beam` extra).

    Args:
        job: a `FeaturesJob`.
        data_dir: tfds data folder.
        beam_options: `apache_beam.options.pipeline_options.
            PipelineOptions` (e.g. `direct_num_workers=2,
            direct_running_mode="multi_processing"` locally, or a
            Dataflow / Flink / Spark runner on a cluster).
        overwrite: as `extract_features`.

    Example:

    ```python
    from apache_beam.options.pipeline_options import PipelineOptions
    job = gv.data.features_beam.FeaturesJob(
        "osv5m", "~/osv5m",
        functools.partial(gv.pretrained.clip_image_backbone, "~/clip"),
        "~/osv5m_features")
    builder = gv.data.geotagged_features_beam(job, beam_options=PipelineOptions(
        direct_num_workers=8, direct_running_mode="multi_processing"))
    ```
    """
    # The driver holds the folder from the start to the manifest's last
    # write: `extract_features` on it meanwhile would delete the workers'
    # partial files.
    with folder_lock(job.folder, "geotagged_features_beam"):
        manifest = job.start(overwrite=overwrite)
        start = {
            k: v for k, v in manifest.items() if k not in ("splits", "complete")
        }
        builder = GeotaggedFeatures(
            config=_config(start), data_dir=data_dir, job=job
        )
        prepare(
            builder,
            download_config=tfds.download.DownloadConfig(
                manual_dir=job.folder, beam_options=beam_options
            ),
        )
        totals = getattr(builder, "totals", None)
        if totals is None:  # built before: count the CSVs' rows
            reader = job.reader()
            totals = {s: reader.count_rows(s) for s in reader.splits()}
        job.finish(manifest, totals)
    return builder


def geotagged_features(folder, data_dir=None, verbose=True, num_shards=None):
    """The `geotagged_features` builder over a features folder, built if
    needed.

    Args:
        folder: a finished folder of `gv.data.features.extract_features`.
        data_dir: tfds data folder.
        verbose: bool. Print the build time and size.
        num_shards: int or None. Files per split (None: tfds's choice,
            files of 64 MB to 1 GiB). Streams read up to 4 files at once,
            so a split of fewer files is read with fewer readers.

    The data set is cached in `data_dir` under a name that includes a
    fingerprint of the folder's manifest (corpus, backbone, dtype, rows),
    so features of another corpus or backbone are built anew.

    Example:

    ```python
    builder = gv.data.geotagged_features("~/osv5m_features")
    train = gv.data.streams.epoch_stream(builder, "train", 512)
    ```
    """
    folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    manifest = features_lib.read_manifest(folder)
    if manifest is None or not manifest.get("complete"):
        raise ValueError(
            f"`folder` {folder!r} holds no finished features: run "
            "`gv.data.features.extract_features` (again, to finish it)."
        )
    if num_shards is not None:
        check_int("num_shards", num_shards)
    builder = GeotaggedFeatures(config=_config(manifest), data_dir=data_dir)
    return prepare(
        builder,
        download_config=tfds.download.DownloadConfig(
            manual_dir=folder, num_shards=num_shards
        ),
        verbose=verbose,
    )
