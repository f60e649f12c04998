"""Model-side semivariogram state: streaming accumulators + fitted params."""

import keras
import numpy as np
from keras import ops

from geovario_keras import backend
from geovario_keras import geo
from geovario_keras.api_export import register
from geovario_keras.candidates import CANDIDATE_GPS
from geovario_keras.candidates import DISSIMILARITY
from geovario_keras.candidates import DISTANCE_KM
from geovario_keras.candidates import EXPECTED
from geovario_keras.candidates import QUEUE_FULL
from geovario_keras.candidates import VARIOGRAM
from geovario_keras.semivariogram import models
from geovario_keras.semivariogram.empirical import batch_statistics
from geovario_keras.semivariogram.empirical import check_bin_edges
from geovario_keras.semivariogram.empirical import merge
from geovario_keras.utils import add_state


@register
class SemivariogramState(keras.layers.Layer):
    """Non-trainable state of the semivariogram method, owned by `GeoCLIP`.

    Holds (i) per-bin streaming statistics (pair count, mean and spread of
    visual dissimilarity) accumulated inside the compiled training step,
    (ii) counts of negatives classed false / hard, and (iii) the packed
    parameters of the current fit (`models.PARAM_NAMES`; `active = 0` means
    no fit: the loss then equals the plain GeoCLIP loss).

    Everything is a `keras.Variable` updated with `.assign()`, so it is saved
    with the model and a callback's `set_fit` between epochs reaches
    compiled training on TensorFlow, JAX and PyTorch.

    Args:
        bin_edges_km: increasing distance bin edges (km); default
            `gv.semivariogram.default_bin_edges_km()`.
        **kwargs: base `keras.layers.Layer` arguments.
    """

    def __init__(self, bin_edges_km=None, **kwargs):
        super().__init__(**kwargs)
        self.bin_edges_km = [float(e) for e in check_bin_edges(bin_edges_km)]
        k = len(self.bin_edges_km) - 1

        def var(name, shape):
            return add_state(self, name, shape)

        self.params = var("params", (models.NUM_PARAMS,))
        self.count = var("count", (k,))
        self.mean = var("mean", (k,))
        self.m2 = var("m2", (k,))
        # [negatives, false negatives, hard negatives] since the last reset.
        self.negatives = var("negatives", (3,))
        self.built = True

    def pair_entries(self, image_embeddings, gps, scores, queue=None):
        """The pair entries of a `gv.losses.PairStatisticsLoss`'s `y_pred`.

        Args:
            image_embeddings: normalised image embeddings `(B, D)`.
            gps: clean batch coordinates `(B, 2)`.
            scores: the model's candidate scores, whose `"candidate_gps"`
                `(B + Q, 2)` are the clean batch, then queue, coordinates.
            queue: the model's `GPSQueue` (with features), or None.

        Returns:
            dict with `"distance_km"` (great-circle distances),
            `"dissimilarity"` (`1 - cos` of stop-gradient image embeddings;
            queue entries use the feature queue) and
            `"expected_dissimilarity"` (the fitted variogram at the
            distance), all `(B, B + Q)`, the packed `"variogram"` and
            `"queue_full"` (1.0 once the queue has been filled).
        """
        feats = ops.stop_gradient(ops.cast(image_embeddings, "float32"))
        cand_feats, queue_full = feats, ops.ones((), "float32")
        if queue is not None:
            queue_feats = ops.convert_to_tensor(queue.features)
            cand_feats = ops.concatenate([feats, queue_feats], axis=0)
            queue_full = ops.cast(queue.is_full(), "float32")
        params = ops.convert_to_tensor(self.params)
        distance, dissimilarity, expected = backend.fused(self._pair_values)(
            ops.cast(gps, "float32"),
            ops.convert_to_tensor(scores[CANDIDATE_GPS]),
            feats,
            cand_feats,
        )
        return {
            DISTANCE_KM: distance,
            DISSIMILARITY: dissimilarity,
            VARIOGRAM: params,
            QUEUE_FULL: queue_full,
            # Evaluated once for the loss and the statistics' classes.
            EXPECTED: expected,
        }

    def _pair_values(self, gps, candidates, feats, cand_feats):
        # Distances, dissimilarities and the variogram at the distances: no
        # gradients (the features are stop-gradient). One XLA-compiled call
        # on TensorFlow (`backend.fused`), whose graph would otherwise run
        # the distances' and the variogram's operators one by one.
        distance = geo.pairwise_haversine_km(gps, candidates)
        dissimilarity = 1.0 - ops.matmul(feats, ops.transpose(cand_feats))
        params = ops.convert_to_tensor(self.params)
        expected = models.evaluate_ops(distance, params)
        return distance, dissimilarity, expected

    def update(self, y_pred, negative, classes):
        """Accumulates one training step (in-graph).

        The pair statistics of the negatives (real candidates other than the
        row's positive) and the counts of those the loss classes as false
        or hard. Pairs at identical coordinates are left out of the
        statistics: above all the image's own earlier copy in the queue,
        which would add a dissimilarity of ~0 at 0 km to every epoch and fake
        a short-range structure even in features without any.

        Args:
            y_pred: the loss's `y_pred` dict, with the `pair_entries`.
            negative: bool `(B, C)`: the negatives (see
                `gv.candidates.positives_and_negatives`).
            classes: the loss's `NegativeClasses(false, hard)` masks.
        """
        statistics = backend.fused(self._step_statistics)(
            ops.convert_to_tensor(y_pred[CANDIDATE_GPS]),
            y_pred[DISTANCE_KM],
            y_pred[DISSIMILARITY],
            negative,
            classes.false,
            classes.hard,
        )
        for variable, value in zip(
            (self.count, self.mean, self.m2, self.negatives), statistics
        ):
            variable.assign(value)

    def _step_statistics(
        self, candidates, distance, dissimilarity, negative, false, hard
    ):
        # The merged statistics and negative counts; no gradients. One
        # XLA-compiled call on TensorFlow (`backend.fused`), whose graph
        # would otherwise run its ~100 operators one by one.
        # Identical coordinates, compared as given (a distance computed in
        # float32 inside a compiled step need not be exactly 0 for them).
        rows = candidates[: ops.shape(negative)[0]]
        same = ops.all(
            ops.expand_dims(rows, 1) == ops.expand_dims(candidates, 0), -1
        )
        apart = ops.logical_and(negative, ops.logical_not(same))
        n, mean, m2 = self._merged(distance, dissimilarity, apart)
        negatives = self.negatives + ops.stack(
            [
                ops.sum(ops.cast(negative, "float32")),
                ops.sum(ops.cast(false & negative, "float32")),
                ops.sum(ops.cast(hard & negative, "float32")),
            ]
        )
        return n, mean, m2, negatives

    def _merged(self, distance_km, dissimilarity, mask):
        # The statistics with one batch of pairs merged in (not assigned).
        batch = batch_statistics(
            distance_km, dissimilarity, self.bin_edges_km, mask
        )
        return merge(
            (self.count, self.mean, self.m2), batch, maximum=ops.maximum
        )

    def accumulate(self, distance_km, dissimilarity, mask=None):
        """Merges one batch of pairs into the statistics (in-graph)."""
        n, mean, m2 = self._merged(distance_km, dissimilarity, mask)
        self.count.assign(n)
        self.mean.assign(mean)
        self.m2.assign(m2)

    def statistics(self):
        """`(count, mean, m2)` as float64 numpy arrays."""
        return tuple(
            np.asarray(keras.ops.convert_to_numpy(v), "float64")
            for v in (self.count, self.mean, self.m2)
        )

    def negative_fractions(self):
        """`(false_fraction, hard_fraction)` of negatives since the reset."""
        n, f, h = np.asarray(keras.ops.convert_to_numpy(self.negatives))
        if n <= 0:
            return 0.0, 0.0
        return float(f / n), float(h / n)

    def reset_statistics(self, pairs=True, negatives=True):
        """Zeroes the pair statistics and / or the negative counters."""
        variables = []
        if pairs:
            variables += [self.count, self.mean, self.m2]
        if negatives:
            variables.append(self.negatives)
        for v in variables:
            v.assign(ops.zeros(v.shape, "float32"))

    def set_fit(self, fit):
        """Stores a `VariogramFit` (a fallback fit disables re-weighting)."""
        self.params.assign(fit.packed())

    @property
    def active(self):
        """Whether a trusted fit is in use (the losses re-weight)."""
        params = np.asarray(keras.ops.convert_to_numpy(self.params))
        return bool(models.PackedParams.unpack(params).active > 0.5)

    def get_config(self):
        config = super().get_config()
        config.update({"bin_edges_km": list(self.bin_edges_km)})
        return config
