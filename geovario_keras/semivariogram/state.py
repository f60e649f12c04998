"""Model-side semivariogram state: streaming accumulators + fitted params."""

import keras
import numpy as np
from keras import ops

from geovario_keras.api_export import register
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

    @property
    def num_bins(self):
        return len(self.bin_edges_km) - 1

    def accumulate(self, distance_km, dissimilarity, mask=None):
        """Merges one batch of pairs into the statistics (in-graph)."""
        batch = batch_statistics(
            distance_km, dissimilarity, self.bin_edges_km, mask
        )
        n, mean, m2 = merge(
            (self.count, self.mean, self.m2), batch, maximum=ops.maximum
        )
        self.count.assign(n)
        self.mean.assign(mean)
        self.m2.assign(m2)

    def count_negatives(self, negatives, false_negatives, hard_negatives):
        update = ops.stack(
            [
                ops.cast(negatives, "float32"),
                ops.cast(false_negatives, "float32"),
                ops.cast(hard_negatives, "float32"),
            ]
        )
        self.negatives.assign(self.negatives + update)

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
        return bool(keras.ops.convert_to_numpy(self.params)[6] > 0.5)

    def call(self, inputs=None):
        return self.params

    def get_config(self):
        config = super().get_config()
        config.update({"bin_edges_km": list(self.bin_edges_km)})
        return config
