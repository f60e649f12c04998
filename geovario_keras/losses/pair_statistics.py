"""The base of the losses that use per-pair distances and looks."""

import abc
from typing import NamedTuple

from geovario_keras.losses.geo_contrastive import GeoContrastiveLoss


class NegativeClasses(NamedTuple):
    """Boolean `(B, C)` masks of the negatives a loss re-weights."""

    false: object
    hard: object


class PairStatisticsLoss(GeoContrastiveLoss, metaclass=abc.ABCMeta):
    """Base class of the losses that use per-pair distances and looks.

    `GeoCLIP.compute_loss` passes such a loss a `y_pred` dict with, besides
    `"logits"` and `"candidate_mask"`, the entries of `PAIR_KEYS`:

    - `"distance_km"` `(B, C)`: great-circle distance between the clean
      coordinates of image `i` and candidate `j`;
    - `"dissimilarity"` `(B, C)`: `1 - cos` of their stop-gradient image
      embeddings (queue candidates use the feature queue);
    - `"variogram"` `(NUM_PARAMS,)`: the fitted variogram, packed as
      `gv.semivariogram.models.PARAM_NAMES` (`active = 0`: no fit);
    - `"queue_full"`: 1.0 once the queue has been filled, else 0.0;
    - optionally `"expected_dissimilarity"` `(B, C)`: the fitted variogram
      at each pair's distance, evaluated once by the model for the loss and
      the statistics (a loss used on its own evaluates `"variogram"`).

    During training the model also accumulates the semivariogram
    statistics of the negative pairs and counts the negatives that
    `classify_negatives` marks, for `gv.callbacks.SemivariogramCallback`.
    Subclasses implement `classify_negatives` and usually
    `adjust_negative_logits`.
    """

    @abc.abstractmethod
    def classify_negatives(self, y_pred):
        """`NegativeClasses(false, hard)`: bool masks `(B, C)`.

        Positives and masked candidates are excluded by the caller.
        """
