"""A small geotagged photo corpus on disk, made from the embedded imagery.

`write_blue_marble_corpus` writes real images (Blue Marble patches at
GeoNames places) as JPEG files with CSVs in the OSV5M layout, so that the
whole "my own photos" path (`gv.data.geotagged_images("osv5m", folder)`,
`recipes/finetune.py`) can be tried, and tested, offline.
"""

import csv
import os

import numpy as np

from geovario_keras.data import imagery
from geovario_keras.saving import atomic_folder
from geovario_keras.utils import check_int
from geovario_keras.utils import check_positive

_COLUMNS = ("id", "latitude", "longitude", "country", "region", "city")


def write_blue_marble_corpus(
    folder,
    num_train=200,
    num_test=50,
    image_size=64,
    spacing_km=None,
    min_distance_km=25.0,
    seed=0,
    overwrite=False,
):
    """Writes Blue Marble patches at GeoNames places as a geotagged corpus.

    Places are drawn uniformly from GeoNames' places (where people live);
    training places lie at least `min_distance_km` from every test place.
    Layout (OSV5M's): `train.csv` and `test.csv` with columns
    `id, latitude, longitude, country, region, city`, and the images in
    `images/{split}/{id}.jpg` (JPEG, quality 95). Written with
    `geovario_keras.saving.atomic_folder`: an existing corpus is replaced
    only with `overwrite=True`, and a failed write leaves none. Memory is
    bounded whatever `num_train` (patches are cut 1,024 at a time).

    Args:
        folder: the corpus folder to create.
        num_train: int >= 1. Training images.
        num_test: int >= 1. Test images.
        image_size: int >= 8. Pixels per side.
        spacing_km: float or None. Ground distance between pixels (default
            the image's native resolution, ~7.4 km).
        min_distance_km: float > 0. Minimum train-test distance.
        seed: int. Seed of the place draw.
        overwrite: bool. Replace an existing `folder`.

    Returns:
        The folder's absolute path.

    Example:

    ```python
    folder = gv.data.write_blue_marble_corpus("my_corpus", 200, 50)
    builder = gv.data.geotagged_images("osv5m", folder)
    ```
    """
    from PIL import Image

    check_int("num_train", num_train)
    check_int("num_test", num_test)
    check_int("image_size", image_size, 8)
    check_positive("min_distance_km", min_distance_km)
    if spacing_km is not None:
        check_positive("spacing_km", spacing_km)
    with atomic_folder(folder, overwrite) as scratch:
        places = imagery.load_places()
        train, test, _ = imagery.random_split(
            places["gps"], num_test, num_train, min_distance_km, seed=seed
        )
        if len(train) < num_train:
            raise ValueError(
                f"Only {len(train)} places lie {min_distance_km} km from the "
                f"test places; ask for fewer than `num_train={num_train}`."
            )
        image = imagery.load_blue_marble()
        for split, index in (("train", train), ("test", test)):
            os.makedirs(os.path.join(scratch, "images", split))
            rows = []
            patches = _patches(
                image, places["gps"], index, image_size, spacing_km
            )
            for n, (i, patch) in enumerate(zip(index, patches)):
                name = f"{split}_{n:06d}"
                Image.fromarray(patch).save(
                    os.path.join(scratch, "images", split, name + ".jpg"),
                    quality=95,
                )
                lat, lon = places["gps"][i]
                rows.append(
                    (name, f"{lat:.6f}", f"{lon:.6f}")
                    + tuple(
                        str(places[k][i]) for k in ("country", "region", "city")
                    )
                )
            with open(
                os.path.join(scratch, f"{split}.csv"), "w", newline=""
            ) as f:
                writer = csv.writer(f)
                writer.writerow(_COLUMNS)
                writer.writerows(rows)
    return os.path.abspath(os.fspath(folder))


# Places cut at once: the sampling grids are float64 (~100 KB a place at
# 64 px), so a corpus of 100 K places is cut in bounded memory.
_PATCH_BLOCK = 1024


def _patches(image, gps, index, image_size, spacing_km):
    """The patches of `gps[index]`, in order, cut a block at a time."""
    for start in range(0, len(index), _PATCH_BLOCK):
        block = gps[index[start : start + _PATCH_BLOCK]]
        yield from imagery.cut_patches(image, block, image_size, spacing_km)


def coordinates(folder, split):
    """`(N, 2)` float32 coordinates of one split's CSV, in file order."""
    with open(os.path.join(folder, f"{split}.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array(
        [[float(r["latitude"]), float(r["longitude"])] for r in rows],
        np.float32,
    )
