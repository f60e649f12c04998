"""Geolocation metrics (OSV5M / Im2GPS conventions).

`geolocation_report` summarises predictions against ground truth:
accuracy within 1 / 25 / 200 / 750 / 2500 km (percent, as published),
mean and median great-circle error (km, R = 6371 km) and the OSV5M GeoScore
`mean(5000 * exp(-d_km / 1492.7))`.

`GeoAccuracy` and `MeanGreatCircleError` are Keras metrics on coordinate
pairs `(y_true, y_pred)`. Passed to `GeoCLIP.compile(metrics=[...])` they
score the in-batch retrieval of every training / evaluation step (each
image's best-scoring location among the batch and the queue); with any
model that outputs coordinates they score its outputs.
"""

import keras
import numpy as np
from keras import ops

from geovario_keras import geo
from geovario_keras.api_export import register
from geovario_keras.candidates import retrieved_gps

__all__ = [
    "ADMIN_LEVELS",
    "GEOSCORE_SCALE_KM",
    "THRESHOLDS_KM",
    "GeoAccuracy",
    "MeanGreatCircleError",
    "geolocation_report",
    "retrieved_gps",
    "reverse_geocode",
    "within_km",
]

THRESHOLDS_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)
GEOSCORE_SCALE_KM = 1492.7


def _key(threshold):
    return f"acc_{threshold:g}km"


ADMIN_LEVELS = ("country", "region", "sub_region", "city")
# A level matches when all of its key columns match: a region name is only
# compared within the same country, a city within the same region.
_ADMIN_KEYS = {
    "country": ("country",),
    "region": ("country", "region"),
    "sub_region": ("country", "region", "sub_region"),
    "city": ("country", "region", "city"),
}
_GEOCODER = None


def reverse_geocode(gps):
    """Offline reverse geocoding to the nearest GeoNames place.

    Uses `reverse_geocoder` (GeoNames places with population >= 1000; a
    k-d tree, ~0.2 s per 100K points).

    Args:
        gps: `(N, 2)` (lat, lon) degrees.

    Returns:
        dict of `(N,)` string arrays: `"country"` (ISO 3166 alpha-2),
        `"region"` (admin-1), `"sub_region"` (admin-2; empty where GeoNames
        has none) and `"city"` (place name).
    """
    global _GEOCODER
    gps = geo.check_gps(gps, name="gps")
    try:
        import reverse_geocoder
    except ImportError as e:
        raise ImportError(
            "Admin-level metrics need `reverse_geocoder` (the `data` extra: "
            "`pip install geovario-keras[data]`)."
        ) from e
    if _GEOCODER is None:
        _GEOCODER = reverse_geocoder.RGeocoder(mode=1, verbose=False)
    if len(gps) == 0:
        return {k: np.array([], dtype=str) for k in ADMIN_LEVELS}
    rows = _GEOCODER.query([tuple(map(float, p)) for p in gps])
    columns = {"country": "cc", "region": "admin1", "sub_region": "admin2"}
    columns["city"] = "name"
    return {k: np.array([r[c] for r in rows]) for k, c in columns.items()}


def _admin_accuracy(pred_labels, true_labels):
    report = {}
    for level in ADMIN_LEVELS:
        true_level = np.asarray(true_labels[level]).astype(str)
        labelled = true_level != ""
        match = np.ones(len(true_level), bool)
        for key in _ADMIN_KEYS[level]:
            match &= np.asarray(pred_labels[key]).astype(str) == np.asarray(
                true_labels[key]
            ).astype(str)
        n = int(labelled.sum())
        report[f"acc_{level}"] = (
            float(100.0 * match[labelled].mean()) if n else float("nan")
        )
        report[f"n_{level}"] = n
    return report


def geolocation_report(
    pred,
    true,
    thresholds_km=THRESHOLDS_KM,
    admin_levels=False,
    true_labels=None,
):
    """Standard geolocation metrics of predicted vs true coordinates.

    Args:
        pred: `(N, 2)` predicted (lat, lon) degrees (e.g. `coords[:, 0]`
            from `GeoCLIP.predict_gps`).
        true: `(N, 2)` true (lat, lon) degrees.
        thresholds_km: distances for the accuracy entries.
        admin_levels: bool. Also report country / region / sub-region /
            city accuracy (OSV5M): predictions are reverse-geocoded offline
            (`reverse_geocode`); a sample with no label at a level is left
            out of that level (`n_<level>` says how many count).
        true_labels: optional dict of `(N,)` string arrays with keys
            `country`, `region`, `sub_region`, `city` (e.g. a data set's
            own labels, in GeoNames naming); default: reverse-geocode
            `true`.

    Returns:
        dict with `acc_<t>km` (percent of samples within `t` km) for each
        threshold, `mean_km`, `median_km`, `geoscore` and `n`; with
        `admin_levels`, also `acc_<level>` (percent) and `n_<level>`.

    Example:

    >>> geolocation_report([[48.85, 2.35]], [[48.86, 2.35]])["acc_25km"]
    100.0
    """
    pred = geo.check_gps(pred, name="pred")
    true = geo.check_gps(true, name="true")
    if pred.shape != true.shape:
        raise ValueError(
            f"`pred` and `true` must have the same shape; got {pred.shape} "
            f"and {true.shape}."
        )
    d = np.asarray(ops.convert_to_numpy(geo.haversine_km(pred, true)))
    d = d.astype("float64")
    report = {_key(t): float(100.0 * np.mean(d <= t)) for t in thresholds_km}
    report.update(
        {
            "mean_km": float(np.mean(d)),
            "median_km": float(np.median(d)),
            "geoscore": float(np.mean(5000.0 * np.exp(-d / GEOSCORE_SCALE_KM))),
            "n": int(d.shape[0]),
        }
    )
    if admin_levels:
        if true_labels is None:
            true_labels = reverse_geocode(true)
        missing = [k for k in ADMIN_LEVELS if k not in true_labels]
        if missing or any(
            len(true_labels[k]) != len(true) for k in ADMIN_LEVELS
        ):
            raise ValueError(
                "`true_labels` must map each of "
                f"{ADMIN_LEVELS} to {len(true)} labels; missing {missing}."
            )
        report.update(_admin_accuracy(reverse_geocode(pred), true_labels))
    return report


def within_km(y_true, y_pred, threshold_km):
    """1.0 where the great-circle error is at most `threshold_km`, else 0."""
    d = geo.haversine_km(y_true, y_pred)
    return ops.cast(d <= threshold_km, "float32")


@register
class GeoAccuracy(keras.metrics.MeanMetricWrapper):
    """Fraction of predictions within `threshold_km` of the truth.

    Args:
        threshold_km: float > 0.
        name: str; default `acc_<threshold>km`.
        dtype: metric dtype.

    Example:

    >>> m = GeoAccuracy(25.0)
    >>> m.update_state([[0.0, 0.0]], [[0.0, 0.1]])
    >>> float(m.result())
    1.0
    """

    def __init__(self, threshold_km=25.0, name=None, dtype=None):
        if not threshold_km > 0:
            raise ValueError(
                f"`threshold_km` must be > 0; got {threshold_km!r}."
            )
        super().__init__(
            within_km,
            name=name or _key(threshold_km),
            dtype=dtype,
            threshold_km=float(threshold_km),
        )
        self.threshold_km = float(threshold_km)
        self._direction = "up"

    def get_config(self):
        return {
            "threshold_km": self.threshold_km,
            "name": self.name,
            "dtype": self.dtype,
        }


@register
class MeanGreatCircleError(keras.metrics.MeanMetricWrapper):
    """Mean great-circle distance (km) between predictions and truth."""

    def __init__(self, name="mean_km", dtype=None):
        super().__init__(geo.haversine_km, name=name, dtype=dtype)
        self._direction = "down"

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}
