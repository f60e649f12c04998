import numpy as np
import pyproj
import pytest

import geovario_keras as gv
from tests.testing import random_gps
from tests.testing import run_metric_test
from tests.testing import small_geoclip

SPHERE = pyproj.Geod(a=6371000.0, b=6371000.0)


def test_geolocation_report_against_pyproj_distances():
    true = random_gps(400, seed=0)
    rng = np.random.default_rng(1)
    # Predictions at known great-circle distances spanning every threshold.
    dist_km = np.exp(rng.uniform(np.log(0.1), np.log(15000), 400))
    lon, lat, _ = SPHERE.fwd(
        true[:, 1], true[:, 0], rng.uniform(-180, 180, 400), dist_km * 1000
    )
    pred = np.stack([lat, lon], 1).astype("float32")
    _, _, d = SPHERE.inv(pred[:, 1], pred[:, 0], true[:, 1], true[:, 0])
    d = d / 1000.0
    r = gv.metrics.geolocation_report(pred, true)
    for t in (1, 25, 200, 750, 2500):
        assert r[f"acc_{t}km"] == pytest.approx(
            100.0 * np.mean(d <= t), abs=100.0 / 400
        )
    assert r["mean_km"] == pytest.approx(d.mean(), rel=1e-4)
    assert r["median_km"] == pytest.approx(np.median(d), rel=1e-4)
    # OSV5M GeoScore: mean of 5000 exp(-d / 1492.7).
    assert r["geoscore"] == pytest.approx(
        np.mean(5000 * np.exp(-d / 1492.7)), rel=1e-4
    )
    assert r["n"] == 400


def test_perfect_predictions_score_max():
    gps = random_gps(10)
    r = gv.metrics.geolocation_report(gps, gps)
    assert r["acc_1km"] == 100.0 and r["geoscore"] == pytest.approx(5000.0)


def test_report_rejects_bad_input():
    gps = random_gps(3)
    with pytest.raises(ValueError, match="same shape"):
        gv.metrics.geolocation_report(gps, gps[:2])
    with pytest.raises(ValueError, match="`pred` has latitudes"):
        gv.metrics.geolocation_report(gps + [[100.0, 0.0]], gps)


def test_keras_metrics():
    true = np.array([[0.0, 0.0], [0.0, 0.0]], "float32")
    # 0.1 degree of longitude on the equator = 11.12 km; 1 degree = 111.2 km.
    pred = np.array([[0.0, 0.1], [0.0, 1.0]], "float32")
    acc = gv.metrics.GeoAccuracy(25.0)
    run_metric_test(acc, true, pred, 0.5, fit_model=small_geoclip)
    assert acc.threshold_km == 25.0 and acc.name == "acc_25km"
    expected = 6371.0 * np.radians(1.1) / 2
    run_metric_test(
        gv.metrics.MeanGreatCircleError(),
        true,
        pred,
        expected,
        fit_model=small_geoclip,
    )
