import numpy as np
import pyproj
import pytest

from geovario_keras import geo
from tests.testing import random_gps
from tests.testing import to_numpy

SPHERE = pyproj.Geod(
    a=geo.EARTH_RADIUS_KM * 1000.0, b=geo.EARTH_RADIUS_KM * 1000.0
)


def _pyproj_km(a, b):
    _, _, d = SPHERE.inv(a[:, 1], a[:, 0], b[:, 1], b[:, 0])
    return d / 1000.0


def test_haversine_matches_pyproj_geodesic_on_sphere():
    a, b = random_gps(2000, seed=1), random_gps(2000, seed=2)
    # Include near-coincident, dateline-crossing and near-antipodal pairs.
    a[:3] = [[10.0, 179.9], [0.0, 0.0], [45.0, 10.0]]
    b[:3] = [[10.0, -179.9], [0.0, 179.0], [45.0001, 10.0]]
    ours = to_numpy(geo.haversine_km(a, b))
    ref = _pyproj_km(a.astype("float64"), b.astype("float64"))
    # float32 math: ~1 m absolute, well below every metric threshold.
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=3e-3)


def test_pairwise_distance_shape_and_symmetry():
    a = random_gps(5, seed=3)
    d = to_numpy(geo.pairwise_haversine_km(a, a))
    assert d.shape == (5, 5)
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diag(d), 0.0)


def test_pairwise_distance_matches_pyproj_geodesic_on_sphere():
    a, b = random_gps(300, seed=4), random_gps(400, seed=5)
    # Near-coincident (1 m to 1 km apart), dateline-crossing and
    # near-antipodal pairs.
    b[:5] = a[:5] + np.array(
        [[1e-5, 0.0], [0.0, 1e-4], [1e-3, 1e-3], [5e-3, 0.0], [0.0, 9e-3]],
        "float32",
    )
    a[5], b[5] = [10.0, 179.9], [10.0, -179.9]
    a[6], b[6] = [45.0, 10.0], [-44.99, -170.0]
    ours = to_numpy(geo.pairwise_haversine_km(a, b)).astype("float64")
    rows = np.repeat(a, len(b), 0).astype("float64")
    cols = np.tile(b, (len(a), 1)).astype("float64")
    ref = _pyproj_km(rows, cols).reshape(ours.shape)
    err = np.abs(ours - ref)
    assert err[ref < 19000].max() < 0.02  # 20 m
    assert err.max() < 5.0  # near antipodes: float32 chord ~ 2
    near = np.diag(ref[:5, :5])
    np.testing.assert_allclose(np.diag(ours[:5, :5]), near, atol=2e-3)


def test_destination_point_matches_pyproj_forward():
    start = random_gps(500, seed=4, max_lat=80)
    rng = np.random.default_rng(5)
    dist = rng.uniform(0, 3000, 500).astype("float32")
    az = rng.uniform(-180, 180, 500).astype("float32")
    ours = to_numpy(geo.destination_point(start, dist, np.radians(az)))
    lon2, lat2, _ = SPHERE.fwd(start[:, 1], start[:, 0], az, dist * 1000.0)
    err = _pyproj_km(ours.astype("float64"), np.stack([lat2, lon2], 1))
    assert err.max() < 0.01  # 10 m


@pytest.mark.parametrize("sigma_m", [150.0, 1000.0])
def test_geodesic_noise_statistics(sigma_m):
    import keras

    n = 20000
    gps = random_gps(n, seed=6, max_lat=85.0)
    noisy = to_numpy(
        geo.geodesic_noise(gps, sigma_m, keras.random.SeedGenerator(7))
    )
    fwd_az, _, d = SPHERE.inv(gps[:, 1], gps[:, 0], noisy[:, 1], noisy[:, 0])
    # Rayleigh: mean displacement of 2-D isotropic noise = sigma sqrt(pi/2)
    # (standard error ~0.5 % here), the same at every latitude.
    expected = sigma_m * np.sqrt(np.pi / 2.0)
    assert abs(d.mean() / expected - 1.0) < 0.03
    polar = np.abs(gps[:, 0]) > 60
    assert abs(d[polar].mean() / expected - 1.0) < 0.06
    # Isotropic: north and east components have zero mean, equal spread.
    north = d * np.cos(np.radians(fwd_az))
    east = d * np.sin(np.radians(fwd_az))
    assert abs(north.mean()) < 0.05 * sigma_m
    assert abs(east.mean()) < 0.05 * sigma_m
    assert abs(north.std() / east.std() - 1.0) < 0.05
    assert np.all(np.abs(noisy[:, 0]) <= 90.0)
    assert np.all(np.abs(noisy[:, 1]) <= 180.0)


def test_zero_noise_is_identity():
    gps = random_gps(10)
    np.testing.assert_array_equal(to_numpy(geo.geodesic_noise(gps, 0.0)), gps)


def test_noise_blocks_in_one_pass_move_by_the_drawn_steps():
    # The training step perturbs the batch (150 m) and the queue (1 km) in
    # one pass. Each point moves by the step `gaussian_steps` draws for it
    # (a fresh generator of the same seed), checked against pyproj; a block
    # of sigma 0 passes unchanged.
    import keras

    from geovario_keras import backend

    a, b = random_gps(64, seed=1), random_gps(100, seed=2)
    blocks = to_numpy(
        geo.geodesic_noise_blocks(
            [a, b], [150.0, 1000.0], keras.random.SeedGenerator(3)
        )
    )
    length, bearing = backend.gaussian_steps(
        [64, 100], [0.15, 1.0], keras.random.SeedGenerator(3)
    )
    length = to_numpy(length).astype("float64")
    start = np.concatenate([a, b]).astype("float64")
    azimuth = np.degrees(to_numpy(bearing).astype("float64"))
    lon, lat, _ = SPHERE.fwd(start[:, 1], start[:, 0], azimuth, length * 1e3)
    want = np.stack([lat, lon], 1)
    assert _pyproj_km(blocks.astype("float64"), want).max() < 0.01  # 10 m
    assert np.abs(blocks - np.concatenate([a, b])).max() > 1e-3  # moved
    # The queue's steps are larger: 1 km against 150 m.
    assert 4.0 < np.median(length[64:]) / np.median(length[:64]) < 10.0
    half = to_numpy(
        geo.geodesic_noise_blocks(
            [a, b], [0.0, 1000.0], keras.random.SeedGenerator(3)
        )
    )
    np.testing.assert_array_equal(half[:64], a)
    assert np.abs(half[64:] - b).max() > 1e-3


def test_noise_blocks_with_keras_samplers_equal_separate_calls():
    # With Keras's samplers (every backend but PyTorch's counter-based
    # draws), one pass draws what two separate calls draw.
    import keras

    if keras.backend.backend() == "torch":
        pytest.skip("PyTorch draws the steps of one call at once")
    a, b = random_gps(64, seed=1), random_gps(100, seed=2)
    seed = keras.random.SeedGenerator(3)
    separate = np.concatenate(
        [
            to_numpy(geo.geodesic_noise(a, 150.0, seed)),
            to_numpy(geo.geodesic_noise(b, 1000.0, seed)),
        ]
    )
    blocks = to_numpy(
        geo.geodesic_noise_blocks(
            [a, b], [150.0, 1000.0], keras.random.SeedGenerator(3)
        )
    )
    np.testing.assert_allclose(blocks, separate, rtol=0, atol=1e-4)
    seed = keras.random.SeedGenerator(3)
    d = np.concatenate(
        [
            to_numpy(keras.random.normal((64, 2), stddev=0.15, seed=seed)),
            to_numpy(keras.random.normal((100, 2), stddev=1.0, seed=seed)),
        ]
    ).astype("float64")
    length, bearing = backend_steps([64, 100], [0.15, 1.0], 3)
    np.testing.assert_allclose(length, np.hypot(d[:, 0], d[:, 1]), rtol=1e-5)
    np.testing.assert_allclose(
        bearing, np.arctan2(d[:, 1], d[:, 0]), rtol=0, atol=1e-5
    )


def backend_steps(sizes, stddevs, seed):
    import keras

    from geovario_keras import backend

    length, bearing = backend.gaussian_steps(
        sizes, stddevs, keras.random.SeedGenerator(seed)
    )
    return to_numpy(length).astype("float64"), to_numpy(bearing)


def test_gaussian_steps_follow_rayleigh_and_uniform_laws():
    # 2-D isotropic Gaussian steps: lengths Rayleigh(sigma), bearings
    # uniform, independent of each other and between calls (scipy's
    # Kolmogorov-Smirnov tests, fixed seed: the p-values are deterministic).
    import keras
    from scipy import stats

    from geovario_keras import backend

    seed = keras.random.SeedGenerator(11)
    first = backend.gaussian_steps([30000, 20000], [0.5, 2.0], seed)
    second = backend.gaussian_steps([50000], [1.0], seed)
    length, bearing = (to_numpy(v).astype("float64") for v in first)
    length2, bearing2 = (to_numpy(v).astype("float64") for v in second)
    sigma = np.r_[np.full(30000, 0.5), np.full(20000, 2.0)]
    assert stats.kstest(length / sigma, stats.rayleigh.cdf).pvalue > 1e-3
    assert stats.kstest(length2, stats.rayleigh.cdf).pvalue > 1e-3
    turn = np.mod(bearing, 2 * np.pi) / (2 * np.pi)
    assert stats.kstest(turn, stats.uniform.cdf).pvalue > 1e-3
    # Independence: length and bearing, and one call and the next.
    assert abs(np.corrcoef(length / sigma, np.cos(bearing))[0, 1]) < 0.02
    assert abs(np.corrcoef(length2, length / sigma)[0, 1]) < 0.02
    assert abs(np.corrcoef(np.sin(bearing2), np.sin(bearing))[0, 1]) < 0.02
    # North and east components are uncorrelated normals of the block's
    # sigma.
    north, east = length * np.cos(bearing), length * np.sin(bearing)
    assert stats.kstest(north / sigma, stats.norm.cdf).pvalue > 1e-3
    assert stats.kstest(east / sigma, stats.norm.cdf).pvalue > 1e-3
    assert abs(np.corrcoef(north, east)[0, 1]) < 0.02
    # A generator of the same seed draws the same steps again.
    again = backend_steps([30000, 20000], [0.5, 2.0], 11)
    np.testing.assert_array_equal(again[0], length)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([[91.0, 0.0]]), r"`gps` has latitudes outside \[-90, 90\]"),
        (np.array([[0.0, 181.0]]), r"longitudes outside \[-180, 180\]"),
        (np.array([[np.nan, 0.0]]), "NaN"),
        (np.array([1.0, 2.0]), r"shape \(N, 2\)"),
        (np.zeros((3, 3)), r"shape \(N, 2\)"),
        (np.zeros((0, 2)), "empty"),
        (np.array([["a", "b"]]), "real numbers"),
    ],
)
def test_check_gps_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        geo.check_gps(bad, name="gps")


def test_check_gps_accepts_and_casts():
    out = geo.check_gps([[1, 2], [-90, 180]], name="gps")
    assert out.dtype == np.float32 and out.shape == (2, 2)
