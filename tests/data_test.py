"""Real-data builders, patch geometry and admin-level metrics.

References: pyproj's spherical geodesics for the patch grid, brute-force
great-circle distances for the split, GeoNames facts for known places.
"""

import csv
import math
import os

import numpy as np
import pyproj
import pytest

import geovario_keras as gv
from geovario_keras.data import imagery
from tests.testing import random_gps

tfds = pytest.importorskip("tensorflow_datasets")


# ------------------------------------------------------------ geometry
def test_patch_grid_is_geodesic():
    """Pixel centres lie at the right distance and bearing (pyproj)."""
    geod = pyproj.Geod(a=6371000.0, b=6371000.0)
    centres = np.array([[0.0, 0.0], [60.0, 179.9], [-75.0, -120.0]])
    east, north = imagery.patch_offsets_km(9, 7.41)
    lat, lon = imagery._destinations(centres, east, north)
    dist = np.hypot(east, north).ravel() * 1000.0
    az = np.degrees(np.arctan2(east, north)).ravel()
    for i, (clat, clon) in enumerate(centres):
        rlon, rlat, _ = geod.fwd(
            np.full(dist.shape, clon), np.full(dist.shape, clat), az, dist
        )
        np.testing.assert_allclose(lat[i], rlat, atol=1e-9)
        dlon = (lon[i] - rlon + 180.0) % 360.0 - 180.0
        np.testing.assert_allclose(dlon, 0.0, atol=1e-9)


def test_cut_patches_samples_the_right_place():
    """An image whose colours encode (lat, lon) gives them back."""
    h, w = 180, 360
    lat = 90.0 - (np.arange(h) + 0.5) * 180.0 / h
    lon = -180.0 + (np.arange(w) + 0.5) * 360.0 / w
    image = np.zeros((h, w, 3), np.float64)
    image[..., 0] = (lat[:, None] + 90.0) * (255.0 / 180.0)
    image[..., 1] = (np.cos(np.radians(lon))[None, :] + 1.0) * 127.5
    gps = np.array([[10.0, 20.0], [-45.0, 100.0], [60.0, -179.8]])
    patches = imagery.cut_patches(image.astype(np.uint8), gps, 5, 50.0)
    centre = patches[:, 2, 2].astype(float)
    np.testing.assert_allclose(
        centre[:, 0] * 180.0 / 255.0 - 90.0, gps[:, 0], atol=1.0
    )
    np.testing.assert_allclose(
        centre[:, 1] / 127.5 - 1.0, np.cos(np.radians(gps[:, 1])), atol=0.02
    )
    # Constant ground spacing: 4 pixels of 50 km north to south is
    # 200 km = 1.8 degrees of latitude at every latitude.
    span = (patches[:, 0, 2, 0] - patches[:, 4, 2, 0]) * 180.0 / 255.0
    np.testing.assert_allclose(
        span, 200.0 / (math.pi * 6371.0 / 180.0), atol=0.8
    )
    with pytest.raises(ValueError, match="latitude"):
        imagery.cut_patches(image, [[91.0, 0.0]])


def test_nearest_distance_km_matches_brute_force_haversine():
    a = random_gps(300, seed=3).astype(np.float64)
    b = random_gps(200, seed=4).astype(np.float64)
    brute = np.asarray(gv.geo.pairwise_haversine_km(a, b)).min(axis=1)
    np.testing.assert_allclose(
        imagery.nearest_distance_km(a, b), brute, rtol=1e-4, atol=0.05
    )


def test_distance_split():
    gps = random_gps(3000, seed=0, max_lat=70.0).astype(np.float64)
    train, test, dropped = imagery.distance_split(gps, 300, 250.0, 1000.0, 1)
    assert len(train) + len(test) + dropped == len(gps)
    assert len(test) >= 300 and not set(train) & set(test)
    d = gv.geo.pairwise_haversine_km(
        gps[test].astype("float32"), gps[train].astype("float32")
    )
    assert float(np.min(np.asarray(d))) >= 250.0 - 0.5


def test_random_split_keeps_the_distance_and_the_distribution():
    gps = random_gps(4000, seed=2, max_lat=70.0).astype(np.float64)
    train, test, near = imagery.random_split(gps, 200, 1500, 150.0, seed=3)
    assert len(test) == 200 and len(train) == 1500
    assert not set(train) & set(test)
    d = np.asarray(
        gv.geo.pairwise_haversine_km(
            gps[test].astype("float32"), gps[train].astype("float32")
        )
    )
    assert d.min() >= 150.0 - 0.5
    # `near` counts the points within 150 km of a test point (brute force).
    rest = np.setdiff1d(np.arange(len(gps)), test)
    brute = np.asarray(
        gv.geo.pairwise_haversine_km(
            gps[rest].astype("float32"), gps[test].astype("float32")
        )
    ).min(1)
    assert near == int((brute < 150.0).sum())
    # Test points are a uniform draw: their mean |latitude| is that of all
    # points (a block split would not promise this).
    assert abs(np.abs(gps[test, 0]).mean() - np.abs(gps[:, 0]).mean()) < 4.0
    with pytest.raises(ValueError, match="n_test"):
        imagery.random_split(gps, 0, 10, 1.0)


@pytest.mark.parametrize("lat", [0.0, 60.0])
@pytest.mark.parametrize("shift_px", [0.25, 3.25, 7.25, 10.5])
def test_shared_ground_fraction_closed_form(lat, shift_px):
    # A patch of P pixel centres at spacing s, shifted east by k + 1/4
    # pixels, has P - k - 1 ... P - k columns inside the other's footprint
    # (side P s): exactly (P - ceil(shift - 1/2)) / P of its pixels when
    # the shift is not a half-integer; 0 once the shift exceeds P.
    from pyproj import Geod

    size, spacing = 10, 7.0
    train = np.array([[lat, 20.0]])
    # pyproj puts the test centre `shift * spacing` km due east (initial
    # bearing 90 degrees) of the train centre, on the same sphere.
    sphere = Geod(a=6371.0e3, b=6371.0e3)
    lon2, lat2, _ = sphere.fwd(20.0, lat, 90.0, shift_px * spacing * 1e3)
    test = np.array([[lat2, lon2]])
    got = imagery.shared_ground_fraction(test, train, size, spacing)
    columns = max(0, size - int(np.floor(shift_px + 0.5)))
    np.testing.assert_allclose(got, [columns / size], atol=1e-9)


# -------------------------------------------------------------- builders
def test_blue_marble_builder(tmp_path):
    builder = gv.data.blue_marble(
        data_dir=str(tmp_path),
        verbose=False,
        patch_size=8,
        num_places=300,
        num_test=50,
        min_distance_km=None,
    )
    meta = builder.info.metadata
    train = gv.data.as_arrays(builder, "train")
    test = gv.data.as_arrays(builder, "test")
    assert meta["split"] == "random"
    assert train["image"].shape[1:] == (8, 8, 3)
    assert train["image"].dtype == np.uint8
    assert len(test["gps"]) == meta["num_test"] == 50
    assert len(train["gps"]) == meta["num_train"] == 300
    # Native resolution; the stated minimum distance is half the patch
    # width, and holds.
    spacing = 2 * math.pi * 6371.0 / 5400
    assert meta["spacing_km"] == pytest.approx(spacing, rel=1e-4)
    assert meta["min_train_test_distance_km"] == math.ceil(4 * spacing)
    d = np.asarray(gv.geo.pairwise_haversine_km(test["gps"], train["gps"]))
    assert d.min() >= meta["min_train_test_distance_km"] - 0.5
    # With half a patch width apart, at most half the ground is shared.
    assert 0.0 <= meta["shared_ground_mean"] <= meta["shared_ground_max"]
    assert meta["shared_ground_max"] <= 0.5 + 1e-9
    # Labels are the places' GeoNames labels.
    assert all(len(c) == 2 for c in train["country"])
    labels = gv.metrics.reverse_geocode(test["gps"])
    np.testing.assert_array_equal(labels["country"], test["country"])
    # Real imagery: not constant, and ocean-blue is not everything.
    assert train["image"].std() > 10
    with pytest.raises(ValueError, match="Unknown Blue Marble settings"):
        gv.data.blue_marble(data_dir=str(tmp_path), patch_px=8)


def test_blue_marble_block_split(tmp_path):
    builder = gv.data.blue_marble(
        "blocks",
        data_dir=str(tmp_path),
        verbose=False,
        patch_size=8,
        num_places=400,
        num_test=50,
    )
    meta = builder.info.metadata
    assert meta["split"] == "blocks" and meta["spacing_km"] == 15.0
    assert (
        meta["num_train"] + meta["num_test"] + meta["num_dropped_near_test"]
        == 400
    )
    train = gv.data.as_arrays(builder, "train")
    test = gv.data.as_arrays(builder, "test")
    d = np.asarray(gv.geo.pairwise_haversine_km(test["gps"], train["gps"]))
    assert d.min() >= 180.0 - 0.5


_PRESET_ROWS = [
    # (id suffix, lat, lon, what to do with the image)
    ("a", 48.8566, 2.3522, "ok"),
    ("b", 40.7128, -74.0060, "ok"),
    ("c", 35.6762, 139.6503, "nested"),
    ("d", 95.0, 10.0, "ok"),  # out of range
    ("e", "nan", 10.0, "ok"),  # NaN
    ("f", 10.0, 10.0, "missing"),
    ("g", 11.0, 11.0, "corrupt"),
]


def _write_corpus(root, preset_name):
    from PIL import Image

    preset = gv.data.PRESETS[preset_name]
    split = preset.splits[0]
    columns = [preset.id, preset.lat, preset.lon, *preset.labels.values()]
    rows = []
    for suffix, lat, lon, how in _PRESET_ROWS:
        image_id = (
            f"img_{suffix}" if preset_name == "osv5m" else f"{suffix}.jpg"
        )
        if preset_name == "mp16":
            image_id = f"aa/bb/{suffix}.jpg"
        rel = preset.image.format(id=image_id, split=split)
        if how == "nested":  # found by file name under image_root
            rel = f"{preset.image_root}/deeper/{rel.split('/')[-1]}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if how in ("ok", "nested"):
            Image.new("RGB", (12, 10), (200, 100, 50)).save(path)
        elif how == "corrupt":
            path.write_bytes(b"not an image")
        row = {preset.id: image_id, preset.lat: lat, preset.lon: lon}
        row.update({c: f"label_{c}" for c in preset.labels.values()})
        rows.append(row)
    with open(root / preset.csv.format(split=split), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return split


@pytest.mark.parametrize(
    "preset", ["osv5m", "im2gps3k", "yfcc26k", "yfcc4k", "mp16"]
)
def test_geotagged_images_presets(tmp_path, preset, capsys):
    manual = tmp_path / "corpus"
    split = _write_corpus(manual, preset)
    builder = gv.data.geotagged_images(
        preset, str(manual), data_dir=str(tmp_path / "tfds"), image_size=8
    )
    data = gv.data.as_arrays(builder, split)
    assert data["image"].shape == (3, 8, 8, 3)
    np.testing.assert_allclose(
        np.sort(data["gps"][:, 0]), [35.6762, 40.7128, 48.8566], atol=1e-4
    )
    skipped = builder.info.metadata["skipped"][split]
    assert skipped == {
        "out_of_range_coordinate": 2,
        "missing_image": 1,
        "unreadable_image": 1,
    }
    assert "skipped 4" in capsys.readouterr().out
    if preset == "osv5m":
        assert set(data["sub_region"]) == {"label_sub-region"}


def test_geotagged_images_errors(tmp_path):
    with pytest.raises(ValueError, match="`preset` must be one of"):
        gv.data.geotagged_images("flickr", str(tmp_path))


# -------------------------------------------------------- admin metrics
def test_reverse_geocode_known_places():
    labels = gv.metrics.reverse_geocode(
        [[48.8566, 2.3522], [35.6762, 139.6503], [-33.8688, 151.2093]]
    )
    assert list(labels["country"]) == ["FR", "JP", "AU"]
    assert labels["region"][0] == "Ile-de-France"
    assert labels["city"][0] == "Paris"
    assert labels["region"][2] == "New South Wales"


def test_admin_levels_in_report():
    true = [[48.8566, 2.3522], [40.7128, -74.0060], [52.52, 13.405]]
    pred = [
        [48.857, 2.352],  # Paris, same everything
        [42.6526, -73.7562],  # Albany: same country and state, other city
        [48.1351, 11.5820],  # Munich: same country, other state
    ]
    report = gv.metrics.geolocation_report(pred, true, admin_levels=True)
    assert report["acc_country"] == 100.0
    assert report["acc_region"] == pytest.approx(200.0 / 3)
    assert report["acc_city"] == pytest.approx(100.0 / 3)
    # New York City and Berlin have no admin-2 in GeoNames: they are left
    # out of that level.
    assert report["n_sub_region"] == 1
    assert report["acc_sub_region"] == 100.0
    with pytest.raises(ValueError, match="true_labels"):
        gv.metrics.geolocation_report(
            pred, true, admin_levels=True, true_labels={"country": ["FR"]}
        )


def _osv5m_corpus(root, rows, images):
    """A tiny OSV5M-layout corpus: `rows` (id, lat, lon), `images` paths."""
    from PIL import Image

    for rel, colour in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 6), colour).save(path)
    with open(root / "test.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "latitude", "longitude"])
        writer.writerows(rows)


def test_geotagged_images_does_not_serve_another_corpus(tmp_path):
    # Same preset, same data_dir: the second corpus, and then an edited CSV,
    # must be built anew, not served from the first build's cache.
    tfds_dir = str(tmp_path / "tfds")
    first, second = tmp_path / "first", tmp_path / "second"
    _osv5m_corpus(
        first, [("a", 10.0, 20.0)], {"images/test/a.jpg": (255, 0, 0)}
    )
    _osv5m_corpus(
        second,
        [("a", -30.0, 140.0), ("b", 5.0, 5.0)],
        {"images/test/a.jpg": (0, 0, 255), "images/test/b.jpg": (0, 0, 255)},
    )
    kw = dict(data_dir=tfds_dir, verbose=False)
    one = gv.data.as_arrays(
        gv.data.geotagged_images("osv5m", first, **kw), "test"
    )
    two = gv.data.as_arrays(
        gv.data.geotagged_images("osv5m", second, **kw), "test"
    )
    np.testing.assert_allclose(one["gps"], [[10.0, 20.0]])
    np.testing.assert_allclose(np.sort(two["gps"][:, 0]), [-30.0, 5.0])
    _osv5m_corpus(first, [("a", 11.0, 21.0)], {})  # edit the CSV only
    edited = gv.data.geotagged_images("osv5m", first, **kw)
    np.testing.assert_allclose(
        gv.data.as_arrays(edited, "test")["gps"], [[11.0, 21.0]]
    )


def test_geotagged_images_never_borrows_another_rows_image(tmp_path):
    # Row "sub/img0" has no image; "img0"'s file must not be taken for it.
    # A re-sharded image (only its name matches, no other row names it) is
    # still found, and a name found twice is refused as ambiguous.
    corpus = tmp_path / "corpus"
    _osv5m_corpus(
        corpus,
        [
            ("img0", 1.0, 1.0),
            ("sub/img0", 2.0, 2.0),
            ("img1", 3.0, 3.0),
            ("img2", 4.0, 4.0),
        ],
        {
            "images/test/img0.jpg": (255, 0, 0),
            "images/test/shard/img1.jpg": (0, 255, 0),
            "images/test/x/img2.jpg": (0, 0, 255),
            "images/test/y/img2.jpg": (0, 0, 255),
        },
    )
    builder = gv.data.geotagged_images(
        "osv5m", corpus, data_dir=str(tmp_path / "tfds"), verbose=False
    )
    data = gv.data.as_arrays(builder, "test")
    np.testing.assert_allclose(np.sort(data["gps"][:, 0]), [1.0, 3.0])
    assert builder.info.metadata["skipped"]["test"] == {
        "missing_image": 1,
        "ambiguous_image": 1,
    }


def test_geotagged_images_csv_without_header(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "test.csv").write_text("a,10.0,20.0\nb,11.0,21.0\n")
    with pytest.raises(Exception, match="must start with a header"):
        gv.data.geotagged_images(
            "osv5m", corpus, data_dir=str(tmp_path / "tfds"), verbose=False
        )


def test_geotagged_images_reads_the_csv_once_when_images_are_in_place(
    tmp_path, monkeypatch
):
    from geovario_keras.data import corpus_reader

    def second_read(*args):
        raise AssertionError("the CSV was read a second time")

    monkeypatch.setattr(corpus_reader.CorpusReader, "_named_paths", second_read)
    corpus = tmp_path / "corpus"
    _osv5m_corpus(
        corpus,
        [("a", 1.0, 1.0), ("b", 2.0, 2.0)],
        {"images/test/a.jpg": (9, 9, 9), "images/test/b.jpg": (9, 9, 9)},
    )
    builder = gv.data.geotagged_images(
        "osv5m", corpus, data_dir=str(tmp_path / "tfds"), verbose=False
    )
    assert len(gv.data.as_arrays(builder, "test")["gps"]) == 2


def test_corpus_patches_are_cut_in_blocks(tmp_path, monkeypatch):
    # Large corpora are cut a block of places at a time (bounded memory):
    # each photo, across the blocks' boundaries, is the patch cut alone
    # at its CSV coordinates.
    from PIL import Image

    from geovario_keras.data import corpus

    monkeypatch.setattr(corpus, "_PATCH_BLOCK", 16)
    folder = gv.data.write_blue_marble_corpus(
        tmp_path / "c", num_train=40, num_test=3, image_size=8
    )
    train = corpus.coordinates(folder, "train")
    image = imagery.load_blue_marble()
    for n in (0, 15, 16, 17, 32, 39):
        alone = imagery.cut_patches(image, train[n : n + 1], 8)[0]
        path = tmp_path / "alone.jpg"
        Image.fromarray(alone).save(path, quality=95)
        with Image.open(f"{folder}/images/train/train_{n:06d}.jpg") as a:
            with Image.open(path) as b:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_write_blue_marble_corpus(tmp_path, monkeypatch):
    """Real images at GeoNames places in the OSV5M layout, read back by the
    `geotagged_images` builder; never over an existing corpus without
    `overwrite=True`, and a failed write leaves nothing behind."""
    from PIL import Image

    folder = gv.data.write_blue_marble_corpus(
        tmp_path / "corpus", num_train=30, num_test=10, image_size=16
    )
    train = gv.data.corpus.coordinates(folder, "train")
    test = gv.data.corpus.coordinates(folder, "test")
    assert train.shape == (30, 2) and test.shape == (10, 2)
    geod = pyproj.Geod(a=6371000.0, b=6371000.0)
    for p in test:
        _, _, d = geod.inv(
            np.full(30, p[1]), np.full(30, p[0]), train[:, 1], train[:, 0]
        )
        assert d.min() >= 24_999.0
    places = imagery.load_places()["gps"]
    assert np.abs(places[:, None] - test[None]).sum(-1).min(0).max() < 1e-5
    with Image.open(f"{folder}/images/test/test_000000.jpg") as img:
        assert img.size == (16, 16) and img.mode == "RGB"
    builder = gv.data.geotagged_images(
        "osv5m", folder, data_dir=str(tmp_path / "tfds"), verbose=False
    )
    data = gv.data.as_arrays(builder, "test")
    assert sorted(map(tuple, data["gps"])) == sorted(map(tuple, test))
    assert all(data["country"]) and data["image"].shape == (10, 16, 16, 3)

    with pytest.raises(FileExistsError, match="overwrite=True"):
        gv.data.write_blue_marble_corpus(folder, 5, 5)
    before = sorted(os.listdir(os.path.join(folder, "images", "train")))

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        gv.data.write_blue_marble_corpus(folder, 5, 5, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        gv.data.write_blue_marble_corpus(tmp_path / "new", 5, 5)
    assert sorted(os.listdir(tmp_path)) == ["corpus", "tfds"]
    assert sorted(os.listdir(os.path.join(folder, "images", "train"))) == before
    with pytest.raises(ValueError, match="`image_size` must be an int >= 8"):
        gv.data.write_blue_marble_corpus(tmp_path / "x", 5, 5, image_size=4)
