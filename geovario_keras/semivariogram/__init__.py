"""Semivariogram of visual dissimilarity vs great-circle distance.

- `EmpiricalSemivariogram`: streaming per-bin statistics.
- `fit_variogram` -> `VariogramFit`: robust weighted least squares.
- `models`: stable, exponential, gaussian, spherical (numpy and keras.ops).
- `SemivariogramState`: the model-side state (accumulators and the fitted
  parameters) used inside compiled training.
"""

from geovario_keras.semivariogram import models
from geovario_keras.semivariogram.empirical import EmpiricalSemivariogram
from geovario_keras.semivariogram.empirical import default_bin_edges_km
from geovario_keras.semivariogram.fit import VariogramFit
from geovario_keras.semivariogram.fit import fit_variogram
from geovario_keras.semivariogram.state import SemivariogramState

__all__ = [
    "EmpiricalSemivariogram",
    "SemivariogramState",
    "VariogramFit",
    "default_bin_edges_km",
    "fit_variogram",
    "models",
]
