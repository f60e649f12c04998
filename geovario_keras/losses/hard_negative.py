"""Similarity-based hard-negative weighting (Robinson et al. 2021)."""

import numpy as np
from keras import ops

from geovario_keras.api_export import register
from geovario_keras.candidates import MASKED_LOGIT
from geovario_keras.candidates import unpack_candidates
from geovario_keras.losses.geo_contrastive import GeoContrastiveLoss


@register
class HardNegativeContrastiveLoss(GeoContrastiveLoss):
    """InfoNCE with similarity-based hard-negative weighting, no variogram.

    Robinson, Chuang, Sra & Jegelka, "Contrastive Learning with Hard
    Negative Samples", ICLR 2021: each negative's term in the softmax
    denominator is weighted by `w_ij = exp(beta * s_ij) / mean_k exp(beta *
    s_ik)` (mean over the row's real negatives, so the weights average 1),
    where `s_ij` is the logit. Negatives the model already scores high (the
    "hard" ones, whatever their distance) count more. As in the authors'
    code the weights are not stop-gradient. With `tau_plus > 0` the
    denominator is also debiased for same-class negatives (Chuang et al.
    2020): `max((sum_j w_ij e^{s_ij} - N tau_plus e^{s_ii}) / (1 -
    tau_plus), N e^{-scale})`, with `scale` the row's largest possible logit
    taken as `max_logit`.

    This is the generic alternative to `SemivariogramContrastiveLoss`: it
    up-weights look-alike negatives without asking whether they are near
    (false negatives) or far (hard negatives).

    Args:
        beta: float >= 0. Concentration (0 gives `GeoContrastiveLoss`).
        tau_plus: float in [0, 1). Class prior of the debiasing (0: off).
        max_logit: float. Lower bound scale of the debiased denominator.
        reduction, name, dtype: as `GeoContrastiveLoss`.
    """

    def __init__(
        self,
        beta=1.0,
        tau_plus=0.0,
        max_logit=100.0,
        reduction="sum_over_batch_size",
        name="hard_negative_contrastive_loss",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        if not beta >= 0:
            raise ValueError(f"`beta` must be >= 0; got {beta!r}.")
        if not 0 <= tau_plus < 1:
            raise ValueError(f"`tau_plus` must be in [0, 1); got {tau_plus!r}.")
        self.beta = float(beta)
        self.tau_plus = float(tau_plus)
        self.max_logit = float(max_logit)

    def _log_weights(self, logits, negative_mask):
        scaled = ops.where(negative_mask, self.beta * logits, MASKED_LOGIT)
        count = ops.maximum(
            ops.sum(ops.cast(negative_mask, "float32"), -1, keepdims=True), 1.0
        )
        log_mean = ops.logsumexp(scaled, -1, keepdims=True) - ops.log(count)
        return self.beta * logits - log_mean, count

    def adjust_negative_logits(self, logits, y_pred, negative_mask=None):
        if self.beta == 0:
            return logits
        log_w, _ = self._log_weights(logits, negative_mask)
        return logits + log_w

    def call(self, y_true, y_pred):
        if self.tau_plus == 0:
            return super().call(y_true, y_pred)
        logits, mask = unpack_candidates(y_pred)
        positive, negatives = self.positives_and_negatives(y_true, logits, mask)
        log_w, count = self._log_weights(logits, negatives)
        pos = ops.sum(logits * positive, axis=-1, keepdims=True)
        neg = ops.logsumexp(
            ops.where(negatives, logits + log_w, MASKED_LOGIT),
            -1,
            keepdims=True,
        )
        # Debiased denominator relative to the positive, all in log space
        # (at temperatures near 100, exp(neg - pos) overflows float32):
        # log Ng = max(log((e^a - t N) / (1 - t)), log(N e^(-max_logit-pos)))
        # with a = neg - pos, the first term only where e^a > t N.
        t = self.tau_plus
        a = neg - pos
        log_tn = ops.log(t * count)
        valid = a > log_tn
        rest = ops.where(valid, -ops.expm1(log_tn - a), 1.0)  # 1 - tN e^-a
        log_ratio = a + ops.log(rest) - float(np.log1p(-t))
        log_ratio = ops.where(valid, log_ratio, MASKED_LOGIT)
        log_floor = ops.log(count) - self.max_logit - pos
        log_ng = ops.maximum(log_ratio, log_floor)
        return ops.squeeze(ops.softplus(log_ng), -1)  # log(1 + Ng)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta": self.beta,
                "tau_plus": self.tau_plus,
                "max_logit": self.max_logit,
            }
        )
        return config
