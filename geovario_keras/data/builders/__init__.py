"""tensorflow-datasets builders, one per file with its factory.

- `blue_marble.py`: `BlueMarble` / `blue_marble(...)`.
- `geotagged_features.py`: `GeotaggedFeatures` / `geotagged_features(...)`,
  stored image features of a corpus (`gv.data.features`).
- `geotagged_images.py`: `GeotaggedImages` / `geotagged_images(...)` and
  the corpus layouts `PRESETS`.
- `tfds_utils.py`: the example features, the build with progress
  (`prepare`) and `as_arrays`.

Importing this package imports `tensorflow_datasets`.
"""

from geovario_keras.data.builders.blue_marble import BlueMarble
from geovario_keras.data.builders.blue_marble import BlueMarbleConfig
from geovario_keras.data.builders.blue_marble import blue_marble
from geovario_keras.data.builders.geotagged_features import GeotaggedFeatures
from geovario_keras.data.builders.geotagged_features import (
    GeotaggedFeaturesConfig,
)
from geovario_keras.data.builders.geotagged_features import geotagged_features
from geovario_keras.data.builders.geotagged_features import (
    geotagged_features_beam,
)
from geovario_keras.data.builders.geotagged_images import GeotaggedImages
from geovario_keras.data.builders.geotagged_images import GeotaggedImagesConfig
from geovario_keras.data.builders.geotagged_images import geotagged_images
from geovario_keras.data.builders.tfds_utils import as_arrays
from geovario_keras.data.builders.tfds_utils import prepare
from geovario_keras.data.corpus_reader import PRESETS
from geovario_keras.data.corpus_reader import Preset
from geovario_keras.data.corpus_reader import corpus_fingerprint

__all__ = [
    "PRESETS",
    "BlueMarble",
    "BlueMarbleConfig",
    "GeotaggedFeatures",
    "GeotaggedFeaturesConfig",
    "GeotaggedImages",
    "GeotaggedImagesConfig",
    "Preset",
    "as_arrays",
    "blue_marble",
    "corpus_fingerprint",
    "geotagged_features",
    "geotagged_features_beam",
    "geotagged_images",
    "prepare",
]
