"""Contrastive losses for image-to-GPS retrieval.

The contract between the losses and `GeoCLIP.compute_loss`:

- every loss is a `GeoContrastiveLoss`: it takes `y_true` (the column of
  each row's positive) and `y_pred`, the logits `(B, C)` or a dict with
  `"logits"` and `"candidate_mask"` (`C` = batch + queue candidates);
- a loss that is a `PairStatisticsLoss` also receives, for every pair of a
  batch image and a candidate, the great-circle distance and the visual
  dissimilarity, plus the fitted variogram (`PAIR_KEYS`). The model then
  asks it to `classify_negatives(y_pred)` for the training logs.
"""

import abc
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from geovario_keras.api_export import register
from geovario_keras.semivariogram import models

MASKED_LOGIT = -1e9

# The `y_pred` entries a `PairStatisticsLoss` receives from the model.
PAIR_KEYS = ("distance_km", "dissimilarity", "variogram", "queue_full")


def _unpack_candidates(y_pred):
    """Returns `(logits (B, C) float32, candidate_mask bool or None)`."""
    if isinstance(y_pred, dict):
        if "logits" not in y_pred:
            raise ValueError(
                "`y_pred` must be a logits tensor (B, C) or a dict with a "
                f"'logits' entry; got keys {sorted(y_pred)}."
            )
        logits = y_pred["logits"]
        mask = y_pred.get("candidate_mask")
    else:
        logits, mask = y_pred, None
    logits = ops.cast(logits, "float32")
    if len(logits.shape) != 2:
        raise ValueError(
            f"`logits` must have rank 2 (batch, candidates); got shape "
            f"{tuple(logits.shape)}."
        )
    if mask is not None:
        mask = ops.cast(mask, "bool")
    return logits, mask


@register
class GeoContrastiveLoss(keras.losses.Loss):
    """GeoCLIP's image-to-GPS InfoNCE loss over `[batch GPS ; queue GPS]`.

    Row `i` of the logits holds the scores of image `i` against every
    candidate location; its positive is column `y_true[i]` (for GeoCLIP, the
    image's own GPS: column `i`). The loss per row is the cross-entropy
    `logsumexp_j(logits_ij) - logits_i,y_i`, where candidates whose
    `candidate_mask` is False (empty queue slots) are left out of the sum.
    This is image-to-GPS only, as in the reference implementation.

    `GeoCLIP.compute_loss` builds the inputs; the loss can also be used on
    its own.

    Args:
        reduction: Keras reduction (default `"sum_over_batch_size"`).
        name: str.
        dtype: loss dtype (default float32).

    Call arguments:
        y_true: int tensor `(B,)`: the column of each row's positive.
        y_pred: logits `(B, C)`, or a dict with `"logits"` `(B, C)` and
            optionally `"candidate_mask"` `(C,)` or `(B, C)` (True = real
            candidate). Extra entries are ignored by this loss.

    Example:

    >>> loss = GeoContrastiveLoss()
    >>> value = loss(np.array([0]), np.array([[2.0, 0.0, 0.0]]))
    >>> round(float(value), 4)  # log(e^2 + 2) - 2
    0.2395
    """

    def __init__(
        self,
        reduction="sum_over_batch_size",
        name="geo_contrastive_loss",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def adjust_negative_logits(self, logits, y_pred, negative_mask=None):
        """Logits to use for negatives; the positives keep theirs.

        The base loss changes nothing. Subclasses re-weight negatives here,
        e.g. `logits + log(w)` to weight a negative's term in the softmax
        denominator by `w`. `negative_mask` `(B, C)` is True for real
        candidates other than the row's positive.
        """
        return logits

    @staticmethod
    def positives_and_negatives(y_true, logits, mask):
        """One-hot positives `(B, C)` float and the negative mask (bool):
        real candidates (per `mask`) other than the row's positive."""
        positive = ops.one_hot(
            ops.cast(ops.reshape(y_true, (-1,)), "int32"),
            ops.shape(logits)[-1],
            dtype="float32",
        )
        negatives = positive <= 0
        if mask is not None:
            negatives = ops.logical_and(
                negatives, ops.broadcast_to(mask, ops.shape(negatives))
            )
        return positive, negatives

    def call(self, y_true, y_pred):
        logits, mask = _unpack_candidates(y_pred)
        positive, negatives = self.positives_and_negatives(y_true, logits, mask)
        adjusted = self.adjust_negative_logits(logits, y_pred, negatives)
        if adjusted is not logits:
            # `where`, not arithmetic with the one-hot: the positives keep
            # their logits exactly, and no 0 * inf can appear.
            logits = ops.where(positive > 0, logits, adjusted)
        if mask is not None:
            valid = ops.logical_or(mask, positive > 0)
            logits = ops.where(valid, logits, MASKED_LOGIT)
        positive_logit = ops.sum(logits * positive, axis=-1)
        return ops.logsumexp(logits, axis=-1) - positive_logit


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
    - `"queue_full"`: 1.0 once the queue has been filled, else 0.0.

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


class PairQuantities(NamedTuple):
    """Per-pair quantities of the semivariogram rules, all `(B, C)`
    except the scalars `range_km`, `sill` and `active`."""

    distance_km: object
    dissimilarity: object
    expected: object  # gamma(h_ij): the fitted variogram at the distance
    residual: object  # gamma(h_ij) - d_ij: > 0 looks more alike than expected
    range_km: object
    sill: object
    active: object


_MODES = ("weighted", "thesis")


@register
class SemivariogramContrastiveLoss(PairStatisticsLoss):
    """GeoCLIP's loss with semivariogram-aware negative weighting.

    Chen, Wang, Deuser, Zollner & Werner 2025 (arXiv 2509.21573), as
    specified in this docstring. For an image `i` and a negative candidate
    `j` the model supplies the clean great-circle distance `h_ij`, the visual
    dissimilarity `d_ij = 1 - cos(f_i, f_j)` of stop-gradient image
    embeddings, and the fitted variogram `gamma` (nugget + partial sill =
    sill, effective range `rho` where 95 % of the partial sill is reached).
    The residual `r_ij = gamma(h_ij) - d_ij` is > 0 when the pair looks more
    alike than expected at that distance.

    `mode="weighted"` (default):

    - **false negative**: `h_ij <= rho_fn` (default `rho`) and `r_ij > 0`:
      weight `false_negative_weight` in `[0, 1]` (0 removes it from the
      softmax denominator);
    - **hard negative**: `h_ij > rho_hard` (default `rho`) and
      `r_ij > hard_negative_margin`: weight
      `exp(hard_negative_beta * r_ij / sill)`, clipped at `max_weight`
      (a false negative stays false where the two ranges overlap);
    - weights act on the softmax denominator as `logits + log w` for
      negatives; positives are untouched.

    `mode="thesis"` reproduces the first author's earlier code:
    `p_ij = max(0, d_ij - gamma(h_ij))` for `h_ij <= rho` (else 0), negative
    logits multiplied by `exp(p_ij)`, applied only once the queue has been
    filled once.

    With no fitted variogram (`active = 0`, e.g. before
    `gv.callbacks.SemivariogramCallback` has fitted one, or after a fallback
    fit) the loss equals `GeoContrastiveLoss` exactly.

    Defaults: false-negative weight 0.2, hard weight `exp(2 r / sill)`
    clipped at 5, margin 0, both ranges the effective range: the values
    that worked best when this specification was prototyped on satellite
    image patches, where both halves of the weighting helped and added up.

    Args:
        mode: `"weighted"` or `"thesis"`.
        false_negative_weight: float in [0, 1].
        hard_negative_beta: float >= 0.
        hard_negative_margin: float. Minimum residual for a hard negative.
        max_weight: float >= 1. Clip of the hard-negative weight.
        false_negative_range_km: float or None (= fitted effective range).
        use_false_negatives: bool. Ablation switch.
        use_hard_negatives: bool. Ablation switch.
        hard_negative_range_km: float or None (= fitted effective range):
            the distance beyond which look-alikes are hard negatives.
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:

    One image, its positive and two negatives: a near look-alike (50 km,
    more alike than the variogram expects: a false negative, weight 0.2)
    and a far look-alike (8,000 km: a hard negative, weight
    `min(exp(2 * 0.9 / 1), 5) = 5`). In training, `GeoCLIP` supplies these
    entries and `gv.callbacks.SemivariogramCallback` the fit.

    >>> fit = gv.semivariogram.VariogramFit(
    ...     "exponential", psill=1.0, length_scale=300.0, converged=True)
    >>> y_pred = {"logits": np.array([[2.0, 0.0, 0.0]]),
    ...           "distance_km": np.array([[0.0, 50.0, 8000.0]]),
    ...           "dissimilarity": np.array([[0.0, 0.05, 0.1]]),
    ...           "variogram": fit.packed()}
    >>> loss = SemivariogramContrastiveLoss()
    >>> round(float(loss(np.array([0]), y_pred)), 4)  # log(e^2 + 0.2 + 5) - 2
    0.5328
    """

    def __init__(
        self,
        mode="weighted",
        false_negative_weight=0.2,
        hard_negative_beta=2.0,
        hard_negative_margin=0.0,
        max_weight=5.0,
        false_negative_range_km=None,
        use_false_negatives=True,
        use_hard_negatives=True,
        hard_negative_range_km=None,
        reduction="sum_over_batch_size",
        name="semivariogram_contrastive_loss",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}; got {mode!r}.")
        if not 0.0 <= false_negative_weight <= 1.0:
            raise ValueError(
                "`false_negative_weight` must be in [0, 1]; got "
                f"{false_negative_weight!r}."
            )
        if hard_negative_beta < 0:
            raise ValueError(
                "`hard_negative_beta` must be >= 0; got "
                f"{hard_negative_beta!r}."
            )
        if not max_weight >= 1.0:
            raise ValueError(f"`max_weight` must be >= 1; got {max_weight!r}.")
        for arg, value in (
            ("false_negative_range_km", false_negative_range_km),
            ("hard_negative_range_km", hard_negative_range_km),
        ):
            if value is not None and not value >= 0:
                raise ValueError(
                    f"`{arg}` must be None or >= 0; got {value!r}."
                )
        self.mode = mode
        self.false_negative_weight = float(false_negative_weight)
        self.hard_negative_beta = float(hard_negative_beta)
        self.hard_negative_margin = float(hard_negative_margin)
        self.max_weight = float(max_weight)
        self.false_negative_range_km = (
            None
            if false_negative_range_km is None
            else float(false_negative_range_km)
        )
        self.use_false_negatives = bool(use_false_negatives)
        self.use_hard_negatives = bool(use_hard_negatives)
        self.hard_negative_range_km = (
            None
            if hard_negative_range_km is None
            else float(hard_negative_range_km)
        )

    def _quantities(self, y_pred):
        missing = [k for k in ("logits",) + PAIR_KEYS[:3] if k not in y_pred]
        if missing:
            raise ValueError(
                "SemivariogramContrastiveLoss needs `y_pred` entries "
                f"'logits' and {PAIR_KEYS[:3]} (GeoCLIP provides them); "
                f"missing {missing}."
            )
        h = ops.cast(y_pred["distance_km"], "float32")
        d = ops.cast(y_pred["dissimilarity"], "float32")
        params = models.PackedParams.unpack(
            ops.cast(ops.reshape(y_pred["variogram"], (-1,)), "float32")
        )
        gamma = models.evaluate_ops(h, params)
        return PairQuantities(
            distance_km=h,
            dissimilarity=d,
            expected=gamma,
            residual=gamma - d,
            range_km=params.effective_range,
            sill=ops.maximum(params.sill, 1e-12),
            active=params.active > 0.5,
        )

    def classify_negatives(self, y_pred):
        """`NegativeClasses(false, hard)` of the weighted mode's rules.

        Masks `(B, C)`; positives and masked candidates must be excluded by
        the caller. In `thesis` mode `hard` marks the near pairs that the
        thesis rule up-weights and `false` is empty.
        """
        return self._classify(self._quantities(y_pred))

    def _classify(self, q):
        h = q.distance_km
        rho_fn = (
            q.range_km
            if self.false_negative_range_km is None
            else self.false_negative_range_km
        )
        rho_hard = (
            q.range_km
            if self.hard_negative_range_km is None
            else self.hard_negative_range_km
        )
        false = (h <= rho_fn) & (q.residual > 0.0) & q.active
        hard = (
            (h > rho_hard) & (q.residual > self.hard_negative_margin) & q.active
        )
        if self.mode == "thesis":
            false = ops.zeros_like(false)
            hard = (h <= q.range_km) & (q.residual < 0.0) & q.active
        if not self.use_false_negatives:
            false = ops.zeros_like(false)
        if not self.use_hard_negatives:
            hard = ops.zeros_like(hard)
        return NegativeClasses(false=false, hard=hard)

    def negative_weights(self, y_pred):
        """Multiplicative weights `w_ij` of negatives (weighted mode)."""
        q = self._quantities(y_pred)
        false, hard = self._classify(q)
        w_hard = ops.minimum(
            ops.exp(self.hard_negative_beta * q.residual / q.sill),
            self.max_weight,
        )
        w = ops.where(hard, w_hard, 1.0)
        return ops.where(false, self.false_negative_weight, w)

    def adjust_negative_logits(self, logits, y_pred, negative_mask=None):
        # The variogram is evaluated once per call on the (B, B + Q) pairs.
        q = self._quantities(y_pred)
        if self.mode == "thesis":
            return self._thesis_logits(logits, y_pred, q)
        false, hard = self._classify(q)
        log_hard = ops.minimum(
            self.hard_negative_beta * q.residual / q.sill,
            float(np.log(self.max_weight)),
        )
        out = ops.where(hard, logits + log_hard, logits)
        if self.false_negative_weight > 0:
            log_false = float(np.log(self.false_negative_weight))
            return ops.where(false, logits + log_false, out)
        return ops.where(false, MASKED_LOGIT, out)

    def _thesis_logits(self, logits, y_pred, q):
        near = (q.distance_km <= q.range_km) & q.active
        p = ops.where(near, ops.maximum(-q.residual, 0.0), 0.0)
        if not self.use_hard_negatives:
            p = ops.zeros_like(p)
        queue_full = ops.cast(
            ops.reshape(y_pred.get("queue_full", 1.0), ()), "float32"
        )
        return ops.where(queue_full > 0.5, logits * ops.exp(p), logits)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mode": self.mode,
                "false_negative_weight": self.false_negative_weight,
                "hard_negative_beta": self.hard_negative_beta,
                "hard_negative_margin": self.hard_negative_margin,
                "max_weight": self.max_weight,
                "false_negative_range_km": self.false_negative_range_km,
                "use_false_negatives": self.use_false_negatives,
                "use_hard_negatives": self.use_hard_negatives,
                "hard_negative_range_km": self.hard_negative_range_km,
            }
        )
        return config


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
        logits, mask = _unpack_candidates(y_pred)
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
