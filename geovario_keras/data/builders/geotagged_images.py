"""The `geotagged_images` builder: a local corpus of geotagged photos.

Reads a corpus already on your disk (`manual_dir`) in one of the published
layouts of `PRESETS`; `geotagged_images(...)` builds it if needed.
"""

import collections
import dataclasses

import tensorflow_datasets as tfds

from geovario_keras.data.builders.tfds_utils import features
from geovario_keras.data.builders.tfds_utils import prepare
from geovario_keras.data.corpus_reader import PRESETS
from geovario_keras.data.corpus_reader import CorpusReader
from geovario_keras.data.corpus_reader import corpus_fingerprint


@dataclasses.dataclass
class GeotaggedImagesConfig(tfds.core.BuilderConfig):
    """`preset`: a key of `PRESETS`; `image_size`: resize to a square of
    this many pixels at build time (None keeps the images as they are)."""

    preset: str = "osv5m"
    image_size: int = None


class GeotaggedImages(tfds.core.GeneratorBasedBuilder):
    """A local corpus of geotagged images: a CSV plus an image folder.

    Put the corpus in `manual_dir` in its published layout (see `PRESETS`;
    e.g. OSV5M: `train.csv`, `test.csv`, `images/train/...`) and build with
    `download_config=tfds.download.DownloadConfig(manual_dir=...)`. Rows
    whose coordinate is missing or out of range, or whose image is missing
    or unreadable, are skipped and counted per reason in
    `info.metadata["skipped"]` (and printed), never silently.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the corpus (CSV files and the image folder) in `manual_dir` "
        "in the layout of its preset: see geovario_keras.data.PRESETS."
    )
    BUILDER_CONFIGS = [
        GeotaggedImagesConfig(name=name, preset=name) for name in PRESETS
    ]

    def _info(self):
        size = self.builder_config.image_size
        shape = (size, size, 3) if size else (None, None, 3)
        return self.dataset_info_from_configs(
            description=self.__doc__,
            features=features(shape),
            supervised_keys=("image", "gps"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        reader = CorpusReader(
            config.preset, dl_manager.manual_dir, config.image_size
        )
        self._skipped = {}
        return {
            split: self._generate_examples(reader, split)
            for split in reader.splits()
        }

    def _generate_examples(self, reader, split):
        skipped = collections.Counter()
        kept = 0
        for n, example in reader.examples(split, skipped=skipped):
            kept += 1
            example.pop("id")
            yield f"{n}", example
        self._skipped[split] = dict(skipped)
        self.info.metadata["skipped"] = dict(self._skipped)
        self.info.metadata.setdefault("kept", {})[split] = kept
        total = sum(skipped.values())
        print(
            f"geotagged_images[{self.builder_config.preset}] {split}: kept "
            f"{kept}, skipped {total}" + (f" {dict(skipped)}" if total else "")
        )


def geotagged_images(
    preset, manual_dir, data_dir=None, image_size=None, verbose=True
):
    """The `geotagged_images` builder over a local corpus, built if needed.

    Args:
        preset: a key of `PRESETS` (`"osv5m"`, `"im2gps3k"`, `"yfcc26k"`,
            `"yfcc4k"`, `"mp16"`).
        manual_dir: the folder holding the CSV(s) and images.
        data_dir: tfds data folder.
        image_size: int or None. Resize images to a square at build time.
        verbose: bool. Print the build time, size and skip counts.

    The built data set is cached in `data_dir` under a name that includes a
    fingerprint of `manual_dir` (its absolute path, and the size and
    modification time of each CSV of the preset): another corpus, or an
    edited CSV, is built anew instead of returning the cached examples.
    Images replaced in place under the same names are not detected; delete
    the cached folder (`builder.data_dir`) to rebuild then.
    """
    if preset not in PRESETS:
        raise ValueError(
            f"`preset` must be one of {sorted(PRESETS)}; got {preset!r}."
        )
    size = None if image_size is None else int(image_size)
    name = preset if size is None else f"{preset}_{size}px"
    config = GeotaggedImagesConfig(
        name=f"{name}_{corpus_fingerprint(preset, manual_dir)}",
        preset=preset,
        image_size=size,
    )
    builder = GeotaggedImages(config=config, data_dir=data_dir)
    return prepare(
        builder,
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        verbose=verbose,
    )
