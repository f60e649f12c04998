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

THRESHOLDS_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)
GEOSCORE_SCALE_KM = 1492.7


def _key(threshold):
    return f"acc_{threshold:g}km"


def geolocation_report(pred, true, thresholds_km=THRESHOLDS_KM):
    """Standard geolocation metrics of predicted vs true coordinates.

    Args:
        pred: `(N, 2)` predicted (lat, lon) degrees (e.g. `coords[:, 0]`
            from `GeoCLIP.predict_gps`).
        true: `(N, 2)` true (lat, lon) degrees.
        thresholds_km: distances for the accuracy entries.

    Returns:
        dict with `acc_<t>km` (percent of samples within `t` km) for each
        threshold, `mean_km`, `median_km`, `geoscore` and `n`.

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
