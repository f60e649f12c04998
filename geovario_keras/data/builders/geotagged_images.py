"""The `geotagged_images` builder: a local corpus of geotagged photos.

Reads a corpus already on your disk (`manual_dir`) in one of the published
layouts of `PRESETS`; `geotagged_images(...)` builds it if needed.
"""

import collections
import csv
import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

from geovario_keras.data.builders.tfds_utils import LABELS
from geovario_keras.data.builders.tfds_utils import features
from geovario_keras.data.builders.tfds_utils import prepare


@dataclasses.dataclass(frozen=True)
class Preset:
    """Column layout of a geotagged-image corpus.

    Attributes:
        csv: CSV file name per split (`{split}` is replaced).
        splits: split names.
        id: column of the image id / relative path.
        lat, lon: coordinate columns (degrees).
        image: image path template, relative to the manual dir (`{id}`,
            `{split}`); when that file is missing, the image is looked up
            by file name anywhere under `image_root`.
        image_root: folder searched by file name.
        labels: map of our label names to CSV columns.
    """

    csv: str
    splits: tuple
    id: str
    lat: str
    lon: str
    image: str
    image_root: str
    labels: dict = dataclasses.field(default_factory=dict)


def _geoestimation(csv_name, split):
    """A metadata CSV of TIBHannover's GeoEstimation (`IMG_ID, LAT, LON`)."""
    return Preset(
        csv=csv_name,
        splits=(split,),
        id="IMG_ID",
        lat="LAT",
        lon="LON",
        image="images/{id}",
        image_root="images",
    )


# OSV5M: the Hugging Face release (train.csv / test.csv, images/<split>/).
# Im2GPS3k, YFCC26k/4k, MP-16: the metadata CSVs of TIBHannover's
# GeoEstimation (`IMG_ID, AUTHOR, LAT, LON, ...`), as used by GeoCLIP.
PRESETS = {
    "osv5m": Preset(
        csv="{split}.csv",
        splits=("train", "test"),
        id="id",
        lat="latitude",
        lon="longitude",
        image="images/{split}/{id}.jpg",
        image_root="images",
        labels={
            "country": "country",
            "region": "region",
            "sub_region": "sub-region",
            "city": "city",
        },
    ),
    "im2gps3k": _geoestimation("im2gps3k_places365.csv", "test"),
    "yfcc26k": _geoestimation("yfcc25600_places365.csv", "test"),
    "yfcc4k": _geoestimation("yfcc4k_places365.csv", "test"),
    "mp16": _geoestimation("mp16_places365.csv", "train"),
}


def corpus_fingerprint(preset, manual_dir):
    """10 hex digits identifying a corpus folder and the state of its CSVs.

    Hashes the folder's absolute path and, for each CSV the preset reads,
    its name, size and modification time (nanoseconds).
    """
    root = os.path.realpath(os.fspath(manual_dir))
    digest = hashlib.sha1(root.encode("utf-8"))
    spec = PRESETS[preset]
    for split in spec.splits:
        path = os.path.join(root, spec.csv.format(split=split))
        if os.path.isfile(path):
            stat = os.stat(path)
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:10]


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
        preset = PRESETS[self.builder_config.preset]
        root = os.fspath(dl_manager.manual_dir)
        self._skipped = {}
        self._index = None
        splits = {}
        for split in preset.splits:
            path = os.path.join(root, preset.csv.format(split=split))
            if os.path.isfile(path):
                splits[split] = self._generate_examples(
                    root, preset, split, path
                )
        if not splits:
            expected = [preset.csv.format(split=s) for s in preset.splits]
            raise FileNotFoundError(
                f"No CSV of the '{self.builder_config.preset}' preset in "
                f"manual_dir {root!r}: expected one of {expected}."
            )
        return splits

    def _find_image(self, root, preset, split, image_id, named):
        """`(path, None)`, or `(None, reason)` when no image can be used.

        A row's image is at the path its preset names. If it is not there,
        a file of the same name anywhere under the image root is taken
        (corpora are often re-sharded), unless that name is ambiguous or
        the file is the named image of another row (`named()`, read from
        the CSV only when a fallback is needed): a row never borrows another
        row's image.
        """
        path = os.path.join(root, preset.image.format(id=image_id, split=split))
        if os.path.isfile(path):
            return path, None
        if self._index is None:
            self._index = collections.defaultdict(list)
            for folder, _, files in os.walk(
                os.path.join(root, preset.image_root)
            ):
                for f in files:
                    self._index[f].append(os.path.join(folder, f))
        name = os.path.basename(str(image_id))
        hits = self._index.get(name) or self._index.get(name + ".jpg") or []
        if hits:
            taken = named()
            hits = [h for h in hits if os.path.normpath(h) not in taken]
        if len(hits) > 1:
            return None, "ambiguous_image"
        return (hits[0], None) if hits else (None, "missing_image")

    def _read_image(self, path):
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB")
            size = self.builder_config.image_size
            if size:
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img)

    def _named_paths(self, root, preset, split, path):
        """The image path every row of the CSV names (normalised)."""
        with open(path, newline="", encoding="utf-8") as f:
            return {
                os.path.normpath(
                    os.path.join(root, preset.image.format(id=i, split=split))
                )
                for i in (row.get(preset.id) for row in csv.DictReader(f))
                if i
            }

    def _rows(self, path, preset):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            needed = [preset.id, preset.lat, preset.lon]
            missing = [c for c in needed if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(
                    f"{path!r} must start with a header naming the columns "
                    f"{needed} of the '{self.builder_config.preset}' preset; "
                    f"missing {missing} in the first line "
                    f"{reader.fieldnames}."
                )
            yield from enumerate(reader)

    def _generate_examples(self, root, preset, split, path):
        skipped = collections.Counter()
        kept = 0
        named_paths = []  # read on the first row whose image is elsewhere

        def named():
            if not named_paths:
                named_paths.append(self._named_paths(root, preset, split, path))
            return named_paths[0]

        for n, row in self._rows(path, preset):
            try:
                lat, lon = float(row[preset.lat]), float(row[preset.lon])
            except (KeyError, TypeError, ValueError):
                skipped["bad_coordinate"] += 1
                continue
            if not (abs(lat) <= 90 and abs(lon) <= 180):  # NaN too
                skipped["out_of_range_coordinate"] += 1
                continue
            image_id = row.get(preset.id)
            if not image_id:
                skipped["missing_image"] += 1
                continue
            image_path, reason = self._find_image(
                root, preset, split, image_id, named
            )
            if reason:
                skipped[reason] += 1
                continue
            try:
                image = self._read_image(image_path)
            except Exception:  # PIL raises many types on bad files
                skipped["unreadable_image"] += 1
                continue
            kept += 1
            yield (
                f"{n}",
                {
                    "image": image,
                    "gps": np.array([lat, lon], np.float32),
                    **{
                        k: str(row.get(preset.labels.get(k, ""), "") or "")
                        for k in LABELS
                    },
                },
            )
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
