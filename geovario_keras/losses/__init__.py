"""Contrastive losses for image-to-GPS retrieval, one per file.

- `geo_contrastive.py`: `GeoContrastiveLoss`, GeoCLIP's InfoNCE over
  `[batch GPS ; queue GPS]`, the base of every loss here;
- `pair_statistics.py`: `PairStatisticsLoss`, the base of the losses that
  also receive each pair's distance, visual dissimilarity and the fitted
  variogram, and classify negatives (`NegativeClasses`);
- `semivariogram.py`: `SemivariogramContrastiveLoss` (Chen et al. 2025);
- `hard_negative.py`: `HardNegativeContrastiveLoss` (Robinson et al. 2021).

`GeoCLIP.compute_loss` hands a loss `y_true` (the column of each row's
positive) and `y_pred`, a dict whose keys, and the masking helpers, are in
`geovario_keras.candidates`.
"""

from geovario_keras.candidates import MASKED_LOGIT
from geovario_keras.candidates import PAIR_KEYS
from geovario_keras.losses.geo_contrastive import GeoContrastiveLoss
from geovario_keras.losses.hard_negative import HardNegativeContrastiveLoss
from geovario_keras.losses.pair_statistics import NegativeClasses
from geovario_keras.losses.pair_statistics import PairStatisticsLoss
from geovario_keras.losses.semivariogram import PairQuantities
from geovario_keras.losses.semivariogram import SemivariogramContrastiveLoss

__all__ = [
    "MASKED_LOGIT",
    "PAIR_KEYS",
    "GeoContrastiveLoss",
    "HardNegativeContrastiveLoss",
    "NegativeClasses",
    "PairQuantities",
    "PairStatisticsLoss",
    "SemivariogramContrastiveLoss",
]
